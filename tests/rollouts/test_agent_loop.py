"""The agent loop: token-level masks, parallel tool rounds, limits, and robustness to any model output."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Callable

import pytest
import torch

from data.types import Question
from rollouts.config import RolloutConfig
from rollouts.agent_loop import run_episodes, run_episodes_async
from rollouts.batcher import CoalescingEngine
from rollouts.engine import GenerationOutput, build_engine
from rollouts.protocols import build_protocol
from rollouts.scripted_engine import ScriptedEngine, response_policy
from data.trajectory import ToolCall, Trajectory

SCRIPTED_LOGPROB = -0.25


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    from rollouts.model_loading import load_tokenizer

    return load_tokenizer(tiny_checkpoint)


def scripted(tokenizer, policy: Callable[[str], str], version: int = 0) -> ScriptedEngine:
    """The scripted engine writing `policy(response so far)`; log-prob -0.25 per token (an observation's is 0)."""
    return ScriptedEngine(tokenizer, response_policy(tokenizer, policy), logprob=SCRIPTED_LOGPROB, version=version)


class FakeExecutor:
    """Answers each search with one passage naming the query; records the calls of each round."""

    def __init__(self, fail_queries: tuple[str, ...] = ()):
        self.rounds: list[list[list[str]]] = []
        self.fail_queries = fail_queries

    def run_turns_sync(self, turn_calls: list[list[ToolCall]]) -> list[list[ToolCall]]:
        self.rounds.append([[call.arguments.get("query", "") for call in calls] for calls in turn_calls])
        for calls in turn_calls:
            for call in calls:
                query = call.arguments.get("query", "")
                if query in self.fail_queries:
                    call.error = f"search backend refused {query!r}"
                else:
                    call.observation = f"Doc 1(Title: {query}) result for {query}"
        return turn_calls

    async def run_turns(self, turn_calls: list[list[ToolCall]]) -> list[list[ToolCall]]:
        return self.run_turns_sync(turn_calls)


class BrokenExecutor:
    def run_turns_sync(self, turn_calls):
        raise RuntimeError("backend down")

    async def run_turns(self, turn_calls):
        raise RuntimeError("backend down")


def questions(count: int) -> list[Question]:
    return [Question(id=f"q{i}", question=f"Who founded Bemo Hall {i}?", answers=["x"], structure="parallel")
            for i in range(count)]


def config(**overrides) -> RolloutConfig:
    values = dict(max_turns=4, max_new_tokens_per_turn=64, max_context_tokens=1024, max_observation_tokens=160)
    values.update(overrides)
    return RolloutConfig(**values)


def two_rounds_then_answer(response: str) -> str:
    searches = response.count("<information>")
    if searches == 0:
        return "<think> two facts </think><search> alpha ## beta</search>"
    if searches == 2:
        return "<search> gamma</search>"
    return "<think> ok </think><answer> x</answer> trailing text is cut at the stop token"


def segments(trajectory: Trajectory) -> list[tuple[int, list[int]]]:
    """Runs of equal loss-mask value: (mask, token ids)."""
    runs: list[tuple[int, list[int]]] = []
    for token, mask in zip(trajectory.response_ids, trajectory.loss_mask):
        if runs and runs[-1][0] == mask:
            runs[-1][1].append(token)
        else:
            runs.append((mask, [token]))
    return runs


def check_token_invariants(trajectory: Trajectory, tokenizer) -> list[str]:
    """Masks, log-probs and turn texts are consistent; returns the decoded observation segments."""
    assert len(trajectory.response_ids) == len(trajectory.loss_mask) == len(trajectory.behaviour_logprobs)
    assert all(lp == 0.0 for lp, mask in zip(trajectory.behaviour_logprobs, trajectory.loss_mask) if mask == 0)
    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False)

    runs = segments(trajectory)
    model_texts = [decode(ids) for mask, ids in runs if mask == 1]
    assert model_texts == [turn.text for turn in trajectory.turns]
    assert trajectory.response_text == decode(trajectory.response_ids)
    return [decode(ids) for mask, ids in runs if mask == 0]


def test_parallel_search_rounds_build_exact_masks(tokenizer):
    engine, executor = scripted(tokenizer, two_rounds_then_answer, version=7), FakeExecutor()
    groups = run_episodes(engine, build_protocol("tags"), executor, questions(2), group_size=3,
                          rollout_config=config(), policy_version=7, seed=0)
    # all calls of all trajectories of a round go to the executor together
    assert executor.rounds == [[["alpha", "beta"]] * 6, [["gamma"]] * 6]
    assert engine.batch_sizes == [6, 6, 6]
    for group in groups:
        assert group.policy_version == 7 and len(group.trajectories) == 3
        assert {t.group_id for t in group.trajectories} == {group.group_id}
        for trajectory in group.trajectories:
            assert trajectory.policy_version == 7 and trajectory.protocol == "tags"
            observations = check_token_invariants(trajectory, tokenizer)
            assert observations == [
                "\n<information>Query: alpha\nDoc 1(Title: alpha) result for alpha</information>\n"
                "<information>Query: beta\nDoc 1(Title: beta) result for beta</information>\n",
                "\n<information>Doc 1(Title: gamma) result for gamma</information>\n",
            ]
            assert [turn.text for turn in trajectory.turns] == [
                "<think> two facts </think><search> alpha ## beta</search>",
                "<search> gamma</search>",
                "<think> ok </think><answer> x</answer>",
            ]
            assert [[c.arguments["query"] for c in turn.calls] for turn in trajectory.turns] == [["alpha", "beta"],
                                                                                                 ["gamma"], []]
            assert trajectory.final_answer == "x" and trajectory.turns[-1].answer == "x"
            assert not trajectory.truncated
            assert (trajectory.model_calls, trajectory.tool_calls, trajectory.search_rounds) == (3, 3, 2)
            generated = [lp for lp, mask in zip(trajectory.behaviour_logprobs, trajectory.loss_mask) if mask]
            assert generated == [SCRIPTED_LOGPROB] * trajectory.num_generated_tokens
            assert trajectory.generate_s == pytest.approx(sum(turn.generate_s for turn in trajectory.turns))
            assert trajectory.tools_s == pytest.approx(sum(turn.tools_s for turn in trajectory.turns))
    assert groups[0].group_id != groups[1].group_id


def test_failing_tools_become_error_observations(tokenizer):
    engine = scripted(tokenizer, two_rounds_then_answer)
    groups = run_episodes(engine, build_protocol("tags"), FakeExecutor(fail_queries=("beta",)), questions(1),
                          group_size=2, rollout_config=config(), policy_version=0)
    first_observation = check_token_invariants(groups[0].trajectories[0], tokenizer)[0]
    assert "<information>Query: beta\nError: search backend refused 'beta'</information>" in first_observation
    assert groups[0].trajectories[0].turns[0].calls[1].error == "search backend refused 'beta'"

    groups = run_episodes(engine, build_protocol("tags"), BrokenExecutor(), questions(1), group_size=2,
                          rollout_config=config(), policy_version=0)
    trajectory = groups[0].trajectories[0]
    observations = check_token_invariants(trajectory, tokenizer)
    assert "Error: tool execution failed: RuntimeError: backend down" in observations[0]
    assert trajectory.final_answer == "x"  # the episode goes on after the failed round


def test_search_forever_ends_with_a_forced_answer_turn(tokenizer):
    executor = FakeExecutor()
    engine = scripted(tokenizer, lambda response: "<search> again</search>")
    groups = run_episodes(engine, build_protocol("tags"), executor, questions(1), group_size=2,
                          rollout_config=config(max_turns=2), policy_version=0)
    trajectory = groups[0].trajectories[0]
    observations = check_token_invariants(trajectory, tokenizer)
    assert len(executor.rounds) == 2 and trajectory.model_calls == 3  # max_turns tool rounds + forced turn
    assert "final answer now" not in observations[0] and observations[1].endswith("give your final answer now.\n")
    assert trajectory.turns[-1].invalid and trajectory.turns[-1].calls == []
    assert trajectory.final_answer is None and trajectory.truncated


def test_forced_turn_can_answer(tokenizer):
    def policy(response: str) -> str:
        return "<answer> late</answer>" if "final answer now" in response else "<search> q</search>"

    groups = run_episodes(scripted(tokenizer, policy), build_protocol("tags"), FakeExecutor(), questions(1),
                          group_size=2, rollout_config=config(max_turns=1), policy_version=0)
    trajectory = groups[0].trajectories[0]
    assert trajectory.final_answer == "late" and not trajectory.truncated and trajectory.model_calls == 2


def test_invalid_turn_gets_the_corrective_observation(tokenizer):
    def policy(response: str) -> str:
        return "<answer> y</answer>" if "not a valid action" in response else "I am not sure"

    groups = run_episodes(scripted(tokenizer, policy), build_protocol("tags"), FakeExecutor(), questions(1),
                          group_size=2, rollout_config=config(max_new_tokens_per_turn=8), policy_version=0)
    trajectory = groups[0].trajectories[0]
    assert check_token_invariants(trajectory, tokenizer) == [build_protocol("tags").corrective_observation()]
    assert trajectory.turns[0].invalid and not trajectory.turns[1].invalid
    assert trajectory.final_answer == "y"


def test_context_and_observation_limits(tokenizer):
    protocol = build_protocol("tags")
    prompt_length = len(protocol.render_prompt(questions(1)[0], tokenizer))
    long_observation_executor = FakeExecutor()
    long_observation_executor.run_turns_sync = lambda turn_calls: [
        [ToolCall(c.name, c.arguments, observation="word " * 200) for c in calls] for calls in turn_calls]
    groups = run_episodes(scripted(tokenizer, two_rounds_then_answer), protocol, long_observation_executor,
                          questions(1), group_size=2, rollout_config=config(max_observation_tokens=5),
                          policy_version=0)
    calls = groups[0].trajectories[0].turns[0].calls
    assert all(len(tokenizer.encode(call.observation, add_special_tokens=False)) == 5 for call in calls)
    assert groups[0].trajectories[0].final_answer == "x"

    max_context = prompt_length + 30
    groups = run_episodes(scripted(tokenizer, two_rounds_then_answer), protocol, FakeExecutor(), questions(1),
                          group_size=2, rollout_config=config(max_context_tokens=max_context), policy_version=0)
    for trajectory in groups[0].trajectories:
        check_token_invariants(trajectory, tokenizer)
        assert len(trajectory.prompt_ids) + len(trajectory.response_ids) <= max_context
        assert trajectory.truncated and trajectory.final_answer is None


def test_function_call_protocol_runs_parallel_calls(tokenizer):
    def policy(response: str) -> str:
        if "<tool_response>" in response:
            return "<answer> x</answer>"
        return ('<tool_call>{"name": "search", "arguments": {"query": "a"}}</tool_call>\n'
                '<tool_call>{"name": "search", "arguments": {"query": "b"}}</tool_call><|im_end|>')

    executor = FakeExecutor()
    groups = run_episodes(scripted(tokenizer, policy), build_protocol("function_call"), executor, questions(1),
                          group_size=2, rollout_config=config(max_new_tokens_per_turn=128), policy_version=0)
    trajectory = groups[0].trajectories[0]
    assert executor.rounds == [[["a", "b"], ["a", "b"]]]
    assert check_token_invariants(trajectory, tokenizer) == [
        "\n<|im_start|>user\n<tool_response>\nDoc 1(Title: a) result for a\n</tool_response>\n"
        "<tool_response>\nDoc 1(Title: b) result for b\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    ]
    assert trajectory.final_answer == "x" and trajectory.protocol == "function_call"
    assert trajectory.tool_names == ["search"]  # the protocol's default schema: the search tool


def test_trajectories_record_the_tools_the_protocol_offers(tokenizer):
    schemas = [{"type": "function", "function": {"name": name, "description": "", "parameters": {}}}
               for name in ("search", "calculator")]
    protocol = build_protocol("function_call", tool_schemas=schemas)
    groups = run_episodes(scripted(tokenizer, lambda response: "<answer> x</answer>"), protocol, FakeExecutor(),
                          questions(1), group_size=2, rollout_config=config(), policy_version=0)
    assert [trajectory.tool_names for trajectory in groups[0].trajectories] == [["search", "calculator"]] * 2


class RandomTokenEngine:
    """Emits random token ids, biased towards protocol tags and special tokens, to fuzz the loop."""

    def __init__(self, tokenizer, seed: int):
        self.tokenizer, self.version, self.random = tokenizer, 0, random.Random(seed)
        self.tag_ids = [tokenizer.convert_tokens_to_ids(tag) for tag in
                        ["<search>", "</search>", "<answer>", "</answer>", "<tool_call>", "</tool_call>",
                         "<|im_end|>", "<|im_start|>", "<|endoftext|>"]]

    def generate(self, batch_prompt_ids, max_new_tokens, stop_token_ids, temperature=1.0, top_p=1.0, seed=None,
                 stop_strings=()):
        outputs = []
        for _ in batch_prompt_ids:
            token_ids = []
            for _ in range(self.random.randint(1, max_new_tokens)):
                token = self.random.choice(self.tag_ids) if self.random.random() < 0.2 else \
                    self.random.randrange(len(self.tokenizer))
                token_ids.append(token)
                if token in stop_token_ids:
                    break
            outputs.append(GenerationOutput(token_ids, [-1.0] * len(token_ids), "length"))
        return outputs


@pytest.mark.parametrize("protocol_name", ["tags", "function_call"])
@pytest.mark.parametrize("seed", range(3))
def test_random_token_streams_never_crash(tokenizer, protocol_name, seed):
    groups = run_episodes(RandomTokenEngine(tokenizer, seed), build_protocol(protocol_name), FakeExecutor(),
                          questions(3), group_size=4, rollout_config=config(max_turns=3, max_context_tokens=300),
                          policy_version=1, seed=seed)
    for trajectory in (t for group in groups for t in group.trajectories):
        check_token_invariants(trajectory, tokenizer)
        assert len(trajectory.prompt_ids) + len(trajectory.response_ids) <= 300
        assert 1 <= trajectory.model_calls <= 4
        assert trajectory.truncated == (trajectory.final_answer is None)


def test_untrained_tiny_model_smoke(tiny_checkpoint, tokenizer):
    torch.set_num_threads(1)
    engine = build_engine("hf", tiny_checkpoint, RolloutConfig())
    rollout_config = config(max_turns=2, max_new_tokens_per_turn=24, max_context_tokens=400)
    groups = run_episodes(engine, build_protocol("tags"), FakeExecutor(), questions(2), group_size=4,
                          rollout_config=rollout_config, policy_version=engine.version, seed=0)
    assert len(groups) == 2 and all(len(group.trajectories) == 4 for group in groups)
    for trajectory in (t for group in groups for t in group.trajectories):
        check_token_invariants(trajectory, tokenizer)
        generated = [lp for lp, mask in zip(trajectory.behaviour_logprobs, trajectory.loss_mask) if mask]
        assert len(generated) == trajectory.num_generated_tokens > 0 and all(lp <= 0.0 for lp in generated)
        assert len(trajectory.prompt_ids) + len(trajectory.response_ids) <= 400
    # greedy rollouts of one question are identical within the group
    greedy = run_episodes(engine, build_protocol("tags"), FakeExecutor(), questions(1), group_size=3,
                          rollout_config=rollout_config, policy_version=0, greedy=True)
    assert len({tuple(t.response_ids) for t in greedy[0].trajectories}) == 1


def test_real_tool_executor_with_bm25_over_the_generated_world(tiny_world, tokenizer):
    from data.retriever import BM25Retriever
    from data.config import RetrieverConfig
    from rollouts.config import ToolsConfig
    from rollouts.tools import build_tools

    executor = build_tools(ToolsConfig(), RetrieverConfig(topk=2), BM25Retriever(tiny_world.documents))
    question = next(q for q in tiny_world.splits["train"] if q.structure == "parallel" and len(q.sub_questions) >= 2)
    sub_questions = question.sub_questions[:2]

    def policy(response: str) -> str:
        if "<tool_response>" in response:
            return "<answer> x</answer>"
        calls = [{"name": "search", "arguments": {"query": sub}} for sub in sub_questions]
        calls.append({"name": "calculator", "arguments": {"expression": "1+1"}})  # not a registered tool
        return "".join(f"<tool_call>{json.dumps(call)}</tool_call>" for call in calls) + "<|im_end|>"

    protocol = build_protocol("function_call", tool_schemas=executor.tool_schemas())
    groups = run_episodes(scripted(tokenizer, policy), protocol, executor, [question], group_size=2,
                          rollout_config=config(max_new_tokens_per_turn=256, max_observation_tokens=400),
                          policy_version=0)
    trajectory = groups[0].trajectories[0]
    search_a, search_b, unknown = trajectory.turns[0].calls
    assert search_a.error is None and search_a.observation.startswith("Doc 1(Title: ")
    assert len(search_a.retrieved_doc_ids) == 2 and len(search_b.retrieved_doc_ids) == 2
    assert "unknown tool 'calculator'" in unknown.error
    observation = check_token_invariants(trajectory, tokenizer)[0]
    assert search_a.observation in observation and search_b.observation in observation
    assert trajectory.final_answer == "x"


# ------------------------------------------------------------------ concurrent calls on one shared engine


def comparable(trajectory: Trajectory) -> tuple:
    return (trajectory.response_ids, trajectory.loss_mask, trajectory.behaviour_logprobs, trajectory.final_answer,
            [[call.arguments for call in turn.calls] for turn in trajectory.turns], trajectory.truncated)


def test_the_concurrent_loop_plays_the_same_episodes_as_the_batched_one(tokenizer):
    protocol = build_protocol("tags")
    reference = run_episodes(scripted(tokenizer, two_rounds_then_answer), protocol, FakeExecutor(),
                             questions(2), group_size=2, rollout_config=config(), policy_version=0)
    engine = scripted(tokenizer, two_rounds_then_answer)
    shared = CoalescingEngine(engine)

    async def two_calls():
        return await asyncio.gather(*(
            run_episodes_async(shared, protocol, FakeExecutor(), [question], group_size=2, rollout_config=config(),
                               policy_version=0)
            for question in questions(2)
        ))

    concurrent = [group for groups in asyncio.run(two_calls()) for group in groups]
    assert [comparable(t) for g in concurrent for t in g.trajectories] == \
        [comparable(t) for g in reference for t in g.trajectories]
    assert engine.batch_sizes == [4, 4, 4]  # each round of the two calls ran as one engine batch
    for trajectory in (t for group in concurrent for t in group.trajectories):
        check_token_invariants(trajectory, tokenizer)
        assert [turn.policy_version for turn in trajectory.turns] == [0, 0, 0]
        assert [turn.batch_rows for turn in trajectory.turns] == [4, 4, 4]


def test_weights_loaded_mid_episode_apply_to_later_turns_and_the_trajectory_keeps_the_oldest_version(tokenizer):
    engine = scripted(tokenizer, two_rounds_then_answer)
    shared = CoalescingEngine(engine)

    class UpdatingExecutor(FakeExecutor):
        async def run_turns(self, turn_calls):  # new weights arrive while the first tool round runs
            if not self.rounds:
                await shared.load_weights({}, version=1)
            return self.run_turns_sync(turn_calls)

    (group,) = asyncio.run(run_episodes_async(shared, build_protocol("tags"), UpdatingExecutor(), questions(1),
                                              group_size=2, rollout_config=config(), policy_version=0))
    for trajectory in group.trajectories:
        assert [turn.policy_version for turn in trajectory.turns] == [0, 1, 1]
        assert trajectory.policy_version == 0
    assert group.policy_version == 0


def test_a_failing_executor_is_an_error_observation_in_the_concurrent_loop_too(tokenizer):
    shared = CoalescingEngine(scripted(tokenizer, two_rounds_then_answer))
    (group,) = asyncio.run(run_episodes_async(shared, build_protocol("tags"), BrokenExecutor(), questions(1),
                                              group_size=2, rollout_config=config(), policy_version=0))
    trajectory = group.trajectories[0]
    observations = check_token_invariants(trajectory, tokenizer)
    assert "Error: tool execution failed: RuntimeError: backend down" in observations[0]
    assert trajectory.final_answer == "x"
