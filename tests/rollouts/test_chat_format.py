"""The chat format read off a tokenizer's template: prompts, end of turn, tool messages, native tool calls.

The tiny model's prompts must not change (its template is ChatML, the rendering the protocols wrote by
hand before they went through the template); the stock tokenizer is tried with its own template
(Qwen2's, every role alike) and with Qwen2.5's (tools, tool messages, tool calls).
"""

from __future__ import annotations

import copy
import logging

import pytest

from data.trajectory import ToolCall, Turn
from data.types import Question
from rollouts.chat_format import DEFAULT_CHAT_TEMPLATE, ChatFormat, ChatTemplateError
from rollouts.protocols import FUNCTION_CALL_TOOLS_INSTRUCTION, Action, build_protocol, search_calls

QUESTION = Question(id="q1", question="Who was born first, Varlo Tenmis or Keli Marno?", answers=["Varlo Tenmis"])


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_checkpoint):
    from rollouts.model_loading import load_tokenizer

    return load_tokenizer(tiny_checkpoint)


@pytest.fixture(scope="module")
def stock_tokenizer(qwen2_checkpoint):
    from rollouts.model_loading import load_tokenizer

    return load_tokenizer(qwen2_checkpoint)


def with_template(tokenizer, template: str | None):
    other = copy.copy(tokenizer)
    other.chat_template = template
    return other


def chatml_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The prompt the protocols rendered by hand before they went through the chat template."""
    text = "".join(f"<|im_start|>{message['role']}\n{message['content']}<|im_end|>\n" for message in messages)
    return tokenizer.encode(text + "<|im_start|>assistant\n", add_special_tokens=False)


@pytest.mark.parametrize("protocol_name", ["tags", "function_call"])
@pytest.mark.parametrize("style", ["minimal", "compact", "full", "auto"])
def test_the_tiny_models_prompt_tokens_are_unchanged(protocol_name, style, tiny_tokenizer):
    protocol = build_protocol(protocol_name, prompt_style=style)
    expected = chatml_ids(tiny_tokenizer, protocol.prompt_messages(QUESTION.question))
    assert protocol.render_prompt(QUESTION, tiny_tokenizer) == expected
    chat = ChatFormat.of(tiny_tokenizer)
    assert (chat.takes_tools, chat.renders_tool_messages, chat.end_of_turn) == (False, False, "<|im_end|>")
    assert chat.tool_call_text([{"name": "search", "arguments": {"query": "a"}}]) is None


def test_the_stock_tokenizers_own_template_defines_no_tools(stock_tokenizer):
    chat = ChatFormat.of(stock_tokenizer)
    assert (chat.takes_tools, chat.renders_tool_messages) == (False, False)
    assert (chat.end_of_turn, chat.end_of_turn_id) == ("<|im_end|>", 151645)  # not eos (<|endoftext|>)
    assert chat.tool_call_text([{"name": "search", "arguments": {"query": "a"}}]) is None
    for name in ("tags", "function_call"):
        assert build_protocol(name).stop_token_ids(stock_tokenizer) == {151643, 151645}


def test_qwen25_template_takes_tools_and_renders_tool_messages_and_calls(stock_tokenizer, qwen25_chat_template):
    chat = ChatFormat.of(with_template(stock_tokenizer, qwen25_chat_template))
    assert (chat.takes_tools, chat.renders_tool_messages, chat.end_of_turn) == (True, True, "<|im_end|>")
    assert chat.tool_call_text([{"name": "search", "arguments": {"query": "a"}},
                                {"name": "search", "arguments": {"query": "b"}}]) == (
        '<tool_call>\n{"name": "search", "arguments": {"query": "a"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "search", "arguments": {"query": "b"}}\n</tool_call>')
    tool_messages = [{"role": "tool", "content": "A"}, {"role": "tool", "content": "B"}]
    rendered = "<|im_start|>user\n<tool_response>\nA\n</tool_response>\n<tool_response>\nB\n</tool_response>" \
               "<|im_end|>\n<|im_start|>assistant\n"
    assert chat.continuation(tool_messages, turn_ended=True) == "\n" + rendered
    assert chat.continuation(tool_messages, turn_ended=False) == "<|im_end|>\n" + rendered


def test_function_call_observations_follow_the_template(stock_tokenizer, qwen25_chat_template):
    protocol = build_protocol("function_call")
    calls = [ToolCall("search", {"query": "a"}, observation="A"), ToolCall("search", {"query": "b"}, error="timeout")]
    turn = Turn(text="<tool_call>...</tool_call><|im_end|>", calls=calls)
    qwen25 = with_template(stock_tokenizer, qwen25_chat_template)
    assert protocol.observation(turn, qwen25, final=True) == (  # tool messages, then the cue as a user message
        "\n<|im_start|>user\n<tool_response>\nA\n</tool_response>\n<tool_response>\nError: timeout\n"
        "</tool_response><|im_end|>\n<|im_start|>user\nNo tool calls left: give your final answer now.<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert protocol.observation(turn, stock_tokenizer) == (  # Qwen2's template: a user message of responses
        "\n<|im_start|>user\n<tool_response>\nA\n</tool_response>\n<tool_response>\nError: timeout\n"
        "</tool_response><|im_end|>\n<|im_start|>assistant\n")
    invalid = Turn(text="no action, cut at the budget")
    assert protocol.observation(invalid, qwen25) == (
        "<|im_end|>\n<|im_start|>user\nThat was not a valid action: either call a tool or give the final answer."
        "<|im_end|>\n<|im_start|>assistant\n")
    tags = build_protocol("tags")  # one assistant message, Search-R1 style: observations stay inline
    assert tags.observation(turn, qwen25) == tags.render_observation(calls)


def test_full_prompt_passes_the_tools_to_a_template_that_lists_them(stock_tokenizer, qwen25_chat_template):
    qwen25 = with_template(stock_tokenizer, qwen25_chat_template)
    function_call = build_protocol("function_call", prompt_style="full")
    text = qwen25.decode(function_call.render_prompt(QUESTION, qwen25))
    assert text.startswith(f"<|im_start|>system\n{FUNCTION_CALL_TOOLS_INSTRUCTION}\n\n# Tools\n")
    assert '<tools>\n{"type": "function", "function": {"name": "search"' in text
    assert text.endswith(f"<|im_start|>user\n{QUESTION.question}<|im_end|>\n<|im_start|>assistant\n")
    own = stock_tokenizer.decode(function_call.render_prompt(QUESTION, stock_tokenizer))
    assert '"name": "search"' in own and "<tools>" in own and FUNCTION_CALL_TOOLS_INSTRUCTION not in own
    for tokenizer in (qwen25, stock_tokenizer):  # the tags protocol calls no JSON tools
        assert "<tools>" not in tokenizer.decode(build_protocol("tags", prompt_style="full").render_prompt(
            QUESTION, tokenizer))


def test_expert_turns_speak_the_native_tool_call_format(stock_tokenizer, qwen25_chat_template):
    protocol = build_protocol("function_call")
    search = Action(kind="search", calls=search_calls(["a", "b"]))
    qwen25 = with_template(stock_tokenizer, qwen25_chat_template)
    native = protocol.action_token_ids(search, qwen25)
    assert native[-1] == 151645 and qwen25.decode(native[:-1]) == ChatFormat.of(qwen25).tool_call_text(
        [{"name": "search", "arguments": {"query": "a"}}, {"name": "search", "arguments": {"query": "b"}}])
    own = protocol.action_token_ids(search, stock_tokenizer)
    assert stock_tokenizer.decode(own) == protocol.render_action(search) + "<|im_end|>"
    answer = Action(kind="answer", answer="x")  # ends on a stop string: the engine ends the turn there
    assert protocol.action_token_ids(answer, qwen25) == qwen25.encode("<answer> x </answer>")
    assert build_protocol("tags").action_token_ids(search, qwen25) == qwen25.encode("<search> a ## b </search>")


def test_a_tokenizer_without_a_template_gets_chatml_with_a_warning(tiny_tokenizer, caplog):
    bare = with_template(tiny_tokenizer, None)
    with caplog.at_level(logging.WARNING, logger="rollouts.chat_format"):
        chat = ChatFormat.of(bare)
    assert chat.uses_default_template and chat.template == DEFAULT_CHAT_TEMPLATE
    assert "no chat template" in caplog.text
    protocol = build_protocol("tags")
    assert protocol.render_prompt(QUESTION, bare) == protocol.render_prompt(QUESTION, tiny_tokenizer)


def test_a_tokenizer_without_a_template_or_chatml_tokens_is_refused_saying_what_to_do():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"who": 0, "[UNK]": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    plain = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    with pytest.raises(ChatTemplateError, match="no chat template.*chat_template.jinja"):
        build_protocol("tags").render_prompt(QUESTION, plain)


def test_a_template_without_a_system_role_gets_the_system_text_in_the_first_user_message(tiny_tokenizer):
    no_system = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not "
                 "supported') }}{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tokenizer = with_template(tiny_tokenizer, no_system)
    protocol = build_protocol("function_call", prompt_style="full")
    system, user = protocol.prompt_messages(QUESTION.question)
    assert protocol.render_prompt(QUESTION, tokenizer) == chatml_ids(
        tokenizer, [{"role": "user", "content": f"{system['content']}\n\n{user['content']}"}])


def test_a_template_that_rewrites_an_earlier_message_is_refused(tiny_tokenizer):
    last_differs = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                    "{% if loop.last and m['role'] == 'assistant' %}!{% endif %}<|im_end|>\n{% endfor %}"
                    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    chat = ChatFormat.of(with_template(tiny_tokenizer, last_differs))
    with pytest.raises(ChatTemplateError, match="ends an assistant message differently"):
        chat.continuation([{"role": "user", "content": "results"}])


def test_the_format_is_read_again_when_the_template_changes(stock_tokenizer, qwen25_chat_template):
    tokenizer = with_template(stock_tokenizer, stock_tokenizer.chat_template)
    assert ChatFormat.of(tokenizer) is ChatFormat.of(tokenizer) and not ChatFormat.of(tokenizer).takes_tools
    tokenizer.chat_template = qwen25_chat_template
    assert ChatFormat.of(tokenizer).takes_tools
