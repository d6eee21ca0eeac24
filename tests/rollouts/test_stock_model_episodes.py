"""Episodes on a stock-shaped model: the real Qwen2 tokenizer, where every protocol tag is several tokens.

For each protocol and each chat template — the fixture tokenizer's own (Qwen2's: every role written
alike) and Qwen2.5's (tools in the system message, tool messages as <tool_response> blocks in a user
turn, native <tool_call> blocks) — the random tiny Qwen2 of tests/conftest.py (`qwen2_checkpoint`) plays
episodes through run_episodes with the real search tool over the tiny world. In the scripted episodes it
is made to write chosen token sequences (`ForcedTurnsEngine`: the "hf" engine with a large logit bias
towards the next scripted token), some spelled in tokens the tokenizer would not choose for that text,
and some going on past the stop string; the engine's own stop conditions decide where each turn ends. In
the free episodes it samples on its own. Either way the trajectory must hold exactly the tokens the
engine returned (mask 1, decoding to the turn texts) and exactly the rendered observations (mask 0).
And a whole function-call episode, decoded, is the conversation the chat template renders.
"""

from __future__ import annotations

import copy

import pytest
import torch

from data.config import RetrieverConfig
from rollouts.agent_loop import run_episodes
from rollouts.config import RolloutConfig, ToolsConfig
from rollouts.engine_hf import HFEngine
from rollouts.environment import build_environment
from rollouts.protocols import FUNCTION_CALL_TOOLS_INSTRUCTION, Action, build_protocol, search_calls
from rollouts.scripted_engine import ScriptedEngine, TurnScripts

CHAT_TEMPLATES = ("own", "qwen2.5")

FORCING_BIAS = 1.0e4


class ForcedTurnsEngine(HFEngine):
    """The "hf" engine on the random model, made to write one scripted token sequence per generate call.

    The next scripted token gets a large logit bias at each step; once a script runs out the model
    samples on its own. Stops, log-probs and the outputs are the engine's own. One row per call.
    """

    def __init__(self, model, tokenizer, scripts: list[list[int]]):
        super().__init__(model, tokenizer)
        self.scripts, self.outputs = list(scripts), []
        self._script: list[int] = []
        self._step = 0

    def generate(self, batch_prompt_ids, *args, **kwargs):
        assert len(batch_prompt_ids) == 1
        self._script, self._step = (self.scripts.pop(0) if self.scripts else []), 0
        outputs = super().generate(batch_prompt_ids, *args, **kwargs)
        self.outputs.append(outputs[0])
        return outputs

    def _forward(self, *args):
        logits_BV = super()._forward(*args)
        if self._step < len(self._script):
            logits_BV[:, self._script[self._step]] += FORCING_BIAS
        self._step += 1
        return logits_BV


@pytest.fixture(scope="module")
def stock_model_and_tokenizer(qwen2_checkpoint):
    from rollouts.model_loading import load_model_and_tokenizer

    torch.set_num_threads(1)
    return load_model_and_tokenizer(qwen2_checkpoint)


@pytest.fixture(scope="module")
def stock_tokenizers(stock_model_and_tokenizer, qwen25_chat_template):
    """The stock tokenizer with its own chat template, and the same vocabulary with Qwen2.5's template."""
    _, tokenizer = stock_model_and_tokenizer
    qwen25 = copy.copy(tokenizer)
    qwen25.chat_template = qwen25_chat_template
    return {"own": tokenizer, "qwen2.5": qwen25}


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def decode(tokenizer, token_ids: list[int]) -> str:
    return tokenizer.decode(token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def environment(protocol_name: str, tiny_world, prompt_style: str = "full"):
    rollout = RolloutConfig(protocol=protocol_name, prompt_style=prompt_style, max_turns=2,
                            max_new_tokens_per_turn=96, max_context_tokens=2048)
    return rollout, build_environment(rollout, ToolsConfig(), RetrieverConfig(), documents=tiny_world.documents)


def record_rendered_observations(protocol) -> list[str]:
    """Every observation text `protocol` renders from now on, in order (its method wrapped on the instance)."""
    rendered: list[str] = []
    method = protocol.observation

    def recording(*args, **kwargs):
        rendered.append(method(*args, **kwargs))
        return rendered[-1]

    protocol.observation = recording
    return rendered


def mask_runs(trajectory) -> list[tuple[int, list[int]]]:
    """(mask value, token ids) of each maximal run of equal mask values in the response."""
    runs: list[tuple[int, list[int]]] = []
    for token_id, mask in zip(trajectory.response_ids, trajectory.loss_mask):
        if runs and runs[-1][0] == mask:
            runs[-1][1].append(token_id)
        else:
            runs.append((mask, [token_id]))
    return runs


def parallel_question(tiny_world):
    return next(q for q in tiny_world.splits["train"] if q.structure == "parallel" and len(q.sub_questions) >= 2)


def scripted_turns(protocol_name: str, tokenizer, question) -> list[tuple[list[int], list[int]]]:
    """(tokens the engine must keep, tokens the script would write after them) of each turn."""
    first, second = question.sub_questions[:2]
    answer = question.answers[0]
    if protocol_name == "tags":
        # "<search>" spelled "<se" + "arch>": tokens the tokenizer would never choose for this text; the
        # second query ends with "?" fused with the tag ("?</"), and the tag's last token carries "\n"
        search = ids(tokenizer, "<think>two independent facts</think>\n<se") + ids(
            tokenizer, f"arch>{first} ## {second}</search>\n")
        answer_turn = ids(tokenizer, f"<answer>{answer}</answer>")
        return [(search, ids(tokenizer, "<answer>not this</answer>")), (answer_turn, ids(tokenizer, " more words"))]
    calls = "\n".join('<tool_call>{"name": "search", "arguments": {"query": "%s"}}</tool_call>' % query
                      for query in (first, second))
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    answer_turn = ids(tokenizer, f"<answer>{answer}") + ids(tokenizer, "</answer>\n\n")  # ">\n\n" ends the tag
    return [(ids(tokenizer, calls) + [end_of_turn], ids(tokenizer, "junk")), (answer_turn, ids(tokenizer, "more"))]


@pytest.mark.parametrize("chat_template", CHAT_TEMPLATES)
@pytest.mark.parametrize("protocol_name", ["tags", "function_call"])
def test_scripted_episode_keeps_generated_tokens_and_rendered_observations_exactly(
        protocol_name, chat_template, stock_model_and_tokenizer, stock_tokenizers, tiny_world):
    model, tokenizer = stock_model_and_tokenizer[0], stock_tokenizers[chat_template]
    rollout, env = environment(protocol_name, tiny_world)
    question = parallel_question(tiny_world)
    turns = scripted_turns(protocol_name, tokenizer, question)
    engine = ForcedTurnsEngine(model, tokenizer, [kept + after for kept, after in turns])
    rendered = record_rendered_observations(env.protocol)
    (group,) = run_episodes(engine, env.protocol, env.executor, [question], group_size=1, rollout_config=rollout,
                            policy_version=0, seed=0)
    (trajectory,) = group.trajectories

    assert [output.token_ids for output in engine.outputs] == [kept for kept, _ in turns]  # ended at the stop
    assert [output.finish_reason for output in engine.outputs] == ["stop", "stop"]
    runs = mask_runs(trajectory)
    assert [mask for mask, _ in runs] == [1, 0, 1]
    assert [run for mask, run in runs if mask == 1] == [kept for kept, _ in turns]  # the tokens as generated
    assert [decode(tokenizer, run) for mask, run in runs if mask == 1] == [turn.text for turn in trajectory.turns]
    assert [decode(tokenizer, run) for mask, run in runs if mask == 0] == rendered  # the observation, exactly
    assert ids(tokenizer, trajectory.turns[0].text) != turns[0][0] or protocol_name != "tags"  # not re-tokenised
    assert trajectory.turns[0].calls and [call.arguments["query"] for call in trajectory.turns[0].calls] == \
        question.sub_questions[:2]
    assert all(call.observation and not call.error for call in trajectory.turns[0].calls)  # the real search tool
    assert trajectory.final_answer == question.answers[0] and not trajectory.truncated


@pytest.mark.parametrize("chat_template", CHAT_TEMPLATES)
@pytest.mark.parametrize("protocol_name", ["tags", "function_call"])
def test_free_episodes_of_the_random_model_keep_tokens_and_observations_exactly(
        protocol_name, chat_template, stock_model_and_tokenizer, stock_tokenizers, tiny_world):
    model, tokenizer = stock_model_and_tokenizer[0], stock_tokenizers[chat_template]
    rollout, env = environment(protocol_name, tiny_world)
    rollout.max_new_tokens_per_turn = 12
    rendered = record_rendered_observations(env.protocol)
    engine = HFEngine(model, tokenizer)
    groups = run_episodes(engine, env.protocol, env.executor, tiny_world.splits["train"][:2], group_size=2,
                          rollout_config=rollout, policy_version=0, seed=1)
    observations = []
    for trajectory in (t for group in groups for t in group.trajectories):
        runs = mask_runs(trajectory)
        generated = [run for mask, run in runs if mask == 1]
        assert [decode(tokenizer, run) for run in generated] == [turn.text for turn in trajectory.turns]
        assert len(generated) == trajectory.model_calls == rollout.max_turns + 1  # random text is never an action
        observations += [decode(tokenizer, run) for mask, run in runs if mask == 0]
    assert sorted(observations) == sorted(rendered) and len(rendered) == 2 * 2 * rollout.max_turns


@pytest.mark.parametrize("protocol_name, fused, spaced", [
    ("tags", "<search>born Varlo Tenmis ## born Keli Marno?</search>\n",
     "<search> born Varlo Tenmis ## born Keli Marno? </search>"),
    ("tags", "<answer>Bemo Hall.</answer>", "<answer> Bemo Hall. </answer>"),
    ("function_call", '<tool_call>{"name": "search", "arguments": {"query": "Bemo Hall"}}</tool_call><|im_end|>',
     '<tool_call>\n{"name": "search", "arguments": {"query": "Bemo Hall"}}\n</tool_call>\n<|im_end|>'),
    ("function_call", "<answer>1873.</answer>\n\n", "<answer> 1873. </answer>"),
])
def test_a_turn_ending_in_a_fused_stop_string_parses_as_the_same_action(protocol_name, fused, spaced,
                                                                        stock_model_and_tokenizer):
    _, tokenizer = stock_model_and_tokenizer
    protocol = build_protocol(protocol_name)
    fused_ids = ids(tokenizer, fused)
    assert len(ids(tokenizer, "</search>")) == 3 and any(
        decode(tokenizer, [token]).endswith("</") and decode(tokenizer, [token]) != "</" for token in fused_ids)
    fused_text = decode(tokenizer, fused_ids)  # the turn text is the decoded tokens
    assert protocol.parse(fused_text) == protocol.parse(spaced)
    assert protocol.parse(fused_text).kind != "invalid"


@pytest.mark.parametrize("chat_template", CHAT_TEMPLATES)
def test_a_function_call_episode_is_the_conversation_the_chat_template_renders(
        chat_template, stock_tokenizers, tiny_world):
    """Prompt, the model's turns as generated, and the tool results: together, the template's own rendering.

    With Qwen2.5's template the tools go in through `tools=`, the model writes its calls in the template's
    own spelling (`<tool_call>\\n{...}\\n</tool_call>`) and the results are `tool` messages; with the
    fixture's own template (no tools, no tool role) the protocol lists the tools in its system message and
    the results come as one user message of <tool_response> blocks.
    """
    tokenizer = stock_tokenizers[chat_template]
    rollout, env = environment("function_call", tiny_world)
    protocol, question = env.protocol, parallel_question(tiny_world)
    search = Action(kind="search", calls=search_calls(question.sub_questions[:2]))
    answer = Action(kind="answer", answer=question.answers[0])
    turns = [protocol.action_token_ids(action, tokenizer) for action in (search, answer)]
    prompt_ids = protocol.render_prompt(question, tokenizer)
    engine = ScriptedEngine(tokenizer, TurnScripts({tuple(prompt_ids): turns}))
    (group,) = run_episodes(engine, protocol, env.executor, [question], group_size=1, rollout_config=rollout,
                            policy_version=0, greedy=True)
    (trajectory,) = group.trajectories
    assert trajectory.final_answer == question.answers[0]
    results = [call.observation for call in trajectory.turns[0].calls]
    calls = [{"type": "function", "function": {"name": "search", "arguments": {"query": query}}}
             for query in question.sub_questions[:2]]

    if chat_template == "qwen2.5":
        assert decode(tokenizer, turns[0]).startswith('<tool_call>\n{"name": "search", "arguments": {"query": ')
        conversation = [{"role": "system", "content": FUNCTION_CALL_TOOLS_INSTRUCTION},
                        {"role": "user", "content": question.question},
                        {"role": "assistant", "content": "", "tool_calls": calls},
                        *({"role": "tool", "content": result} for result in results)]
        tools = env.executor.tool_schemas()
    else:
        assert decode(tokenizer, turns[0]).startswith('<tool_call>{"name": "search", "arguments": {"query": ')
        conversation = [*protocol.prompt_messages(question.question),
                        {"role": "assistant", "content": decode(tokenizer, turns[0][:-1])},
                        {"role": "user", "content": "\n".join(f"<tool_response>\n{result}\n</tool_response>"
                                                              for result in results)}]
        tools = None
    conversation.append({"role": "assistant", "content": trajectory.turns[1].text})
    expected = tokenizer.apply_chat_template(conversation, tools=tools, tokenize=False)
    # the answer turn ends on </answer> (a stop string): the template then closes the message
    assert decode(tokenizer, trajectory.prompt_ids + trajectory.response_ids) + "<|im_end|>\n" == expected
    # the tools are listed by Qwen2.5's template itself, by the protocol's system message otherwise
    assert ("You are provided with function signatures" in expected) == (chat_template == "qwen2.5")
    assert '"name": "search"' in decode(tokenizer, prompt_ids)
