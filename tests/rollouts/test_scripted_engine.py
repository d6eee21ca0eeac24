"""The scripted engine: each trajectory's next scripted turn, ended like a model's, through the real loop."""

from __future__ import annotations

import asyncio

import pytest
import torch

from data.trajectory import ToolCall
from data.types import Question
from rollouts.agent_loop import run_episodes, run_episodes_async
from rollouts.batcher import CoalescingEngine
from rollouts.config import RolloutConfig
from rollouts.protocols import build_protocol
from rollouts.scripted_engine import ScriptedEngine, TurnScripts, response_policy, turns_played

PROMPT_A, PROMPT_B = (5, 6, 7), (5, 6, 8)
STOP = 3


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    from rollouts.model_loading import load_tokenizer

    return load_tokenizer(tiny_checkpoint)


def test_a_context_gets_the_next_turn_of_its_own_script(tokenizer):
    engine = ScriptedEngine(tokenizer, TurnScripts({PROMPT_A: [[1, 2], [STOP]], PROMPT_B: [[4, 4, 4]]}))
    first = engine.generate([[5, 6, 7], [5, 6, 8, 9]], max_new_tokens=2, stop_token_ids={STOP})
    assert [output.token_ids for output in first] == [[1, 2], [4, 4]]  # the second is cut at the budget
    assert [output.finish_reason for output in first] == ["length", "length"]
    assert [output.logprobs for output in first] == [[0.0, 0.0], [0.0, 0.0]]
    # a context that holds turn 0 (then an observation) gets turn 1; rows of one batch at different rounds
    second = engine.generate([[5, 6, 7, 1, 2, 9, 9], [5, 6, 7]], max_new_tokens=4, stop_token_ids={STOP})
    assert [output.token_ids for output in second] == [[STOP], [1, 2]]
    assert second[0].finish_reason == "stop"
    after_the_end = engine.generate([[5, 6, 7, 1, 2, 9, STOP, 9]], max_new_tokens=4, stop_token_ids={STOP})
    assert after_the_end[0].token_ids == [STOP]  # the last turn repeats
    assert engine.batch_sizes == [2, 2, 1]
    with pytest.raises(KeyError, match="no scripted prompt"):
        engine.generate([[9, 9]], max_new_tokens=2, stop_token_ids={STOP})


def test_a_turn_ends_at_its_first_stop_token_and_a_cut_turn_is_written_again(tokenizer):
    engine = ScriptedEngine(tokenizer, TurnScripts({PROMPT_A: [[1, STOP, 2], [4]]}), logprob=-0.5)
    (output,) = engine.generate([list(PROMPT_A)], max_new_tokens=8, stop_token_ids={STOP})
    assert (output.token_ids, output.logprobs, output.finish_reason) == ([1, STOP], [-0.5, -0.5], "stop")
    assert turns_played([1, STOP, 2, 9], [[1, STOP, 2], [4]]) == 1
    assert turns_played([1, STOP, 9], [[1, STOP, 2], [4]]) == 0  # turn 0 was cut: it comes again
    assert turns_played([9, 1, STOP, 2, 9, 4], [[1, STOP, 2], [4]]) == 2


def test_response_policy_sees_the_response_text_so_far(tokenizer):
    protocol = build_protocol("tags")
    prompt_ids = protocol.render_prompt("Who founded Bemo Hall?", tokenizer)
    seen = []

    def policy(response: str) -> str:
        seen.append(response)
        return "<answer> x</answer> trailing text"

    engine = ScriptedEngine(tokenizer, response_policy(tokenizer, policy))
    observation = tokenizer.encode("<search> q</search>\n<information>d</information>\n", add_special_tokens=False)
    (output,) = engine.generate([prompt_ids + observation], 64, protocol.stop_token_ids(tokenizer))
    assert seen == ["<search> q</search>\n<information>d</information>\n"]
    assert tokenizer.decode(output.token_ids) == "<answer> x</answer>" and output.finish_reason == "stop"


def test_teacher_forced_logprobs_are_the_models(tokenizer, tiny_checkpoint):
    from rollouts.model_loading import load_model_and_tokenizer

    torch.set_num_threads(1)
    model, _ = load_model_and_tokenizer(tiny_checkpoint)
    engine = ScriptedEngine(tokenizer, TurnScripts({PROMPT_A: [[11, 12, 13]]}), model=model)
    (output,) = engine.generate([list(PROMPT_A)], max_new_tokens=8, stop_token_ids={STOP})
    with torch.no_grad():
        logits_TV = model(input_ids=torch.tensor([[*PROMPT_A, 11, 12, 13]])).logits[0].float()
    logprobs_TV = torch.log_softmax(logits_TV, dim=-1)
    expected = [float(logprobs_TV[len(PROMPT_A) - 1 + index, token]) for index, token in enumerate([11, 12, 13])]
    assert output.logprobs == pytest.approx(expected, abs=1e-4)


class EchoExecutor:
    """Answers each search with one passage naming its query."""

    async def run_turns(self, turn_calls: list[list[ToolCall]]) -> list[list[ToolCall]]:
        for calls in turn_calls:
            for call in calls:
                call.observation = f"Doc 1(Title: {call.arguments['query']}) about {call.arguments['query']}"
        return turn_calls


def scripted_questions(tokenizer, protocol) -> tuple[list[Question], TurnScripts]:
    """Two questions with scripts of different lengths (one fans out, one searches twice)."""
    questions = [Question(id=f"q{index}", question=f"Who founded Bemo Hall {index}?", answers=[f"a{index}"],
                          structure="parallel") for index in range(2)]
    texts = [["<search> a ## b </search>", "<answer> a0 </answer>"],
             ["<search> c </search>", "<search> d </search>", "<answer> a1 </answer>"]]
    return questions, TurnScripts({
        tuple(protocol.render_prompt(question, tokenizer)):
            [tokenizer.encode(text, add_special_tokens=False) for text in turn_texts]
        for question, turn_texts in zip(questions, texts)})


def test_concurrent_episodes_and_group_rows_each_play_their_own_script(tokenizer):
    protocol = build_protocol("tags")
    questions, scripts = scripted_questions(tokenizer, protocol)
    config = RolloutConfig(max_turns=4, max_new_tokens_per_turn=32)
    shared = CoalescingEngine(ScriptedEngine(tokenizer, scripts))

    async def two_calls():
        return await asyncio.gather(*(run_episodes_async(shared, protocol, EchoExecutor(), [question], group_size=2,
                                                         rollout_config=config, policy_version=0)
                                      for question in questions))

    concurrent = [group for groups in asyncio.run(two_calls()) for group in groups]
    batched = run_episodes(ScriptedEngine(tokenizer, scripts), protocol, EchoExecutor(), questions, group_size=2,
                           rollout_config=config, policy_version=0)
    for groups in (concurrent, batched):
        for group, expected_turns in zip(groups, (["<search> a ## b </search>", "<answer> a0 </answer>"],
                                                  ["<search> c </search>", "<search> d </search>",
                                                   "<answer> a1 </answer>"])):
            for trajectory in group.trajectories:
                assert [turn.text for turn in trajectory.turns] == expected_turns
                assert trajectory.final_answer == group.question.answers[0] and not trajectory.truncated


def test_a_scripted_turn_ends_where_a_multi_token_stop_string_completes(qwen2_checkpoint):
    from rollouts.model_loading import load_tokenizer
    from rollouts.scripted_engine import stop_turn

    tokenizer = load_tokenizer(qwen2_checkpoint)
    head = tokenizer.encode(" Who x</search>", add_special_tokens=False)  # the tag fused with the text before it
    tail = tokenizer.encode(" more text", add_special_tokens=False)
    assert len(tokenizer.encode("</search>", add_special_tokens=False)) == 3  # several tokens: no stop id exists
    token_ids, reason = stop_turn(head + tail, max_new_tokens=64, stop_token_ids=set(), tokenizer=tokenizer,
                                  stop_strings=["</answer>", "</search>"])
    assert (token_ids, reason) == (head, "stop")
    assert stop_turn(head + tail, max_new_tokens=2, stop_token_ids=set(), tokenizer=tokenizer,
                     stop_strings=["</search>"]) == (head[:2], "length")
    assert stop_turn(tail, 64, set(), tokenizer, ["</search>"]) == (tail, "length")
