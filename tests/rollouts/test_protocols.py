"""Agent protocols: parse tables (including malformed turns), rendering, stop tokens, registry."""

from __future__ import annotations

import pytest

from data.types import Question
from rollouts.protocols import (
    PROTOCOLS,
    Action,
    AgentProtocol,
    build_protocol,
    register_protocol,
    text_through_first_stop,
)
from data.trajectory import ToolCall, Turn


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_checkpoint):
    from rollouts.model_loading import load_tokenizer

    return load_tokenizer(tiny_checkpoint)

TAGS_PARSE_TABLE = [
    # (turn text, kind, queries, answer)
    ("<think>one fact</think>\n<search> who founded Bemo Hall </search>", "search", ["who founded Bemo Hall"], None),
    ("<search>birth year of A ## birth year of B</search>", "search", ["birth year of A", "birth year of B"], None),
    ("<search> a ## b ## c </search>", "search", ["a", "b", "c"], None),
    ("<search>a ##  ## b ##</search>", "search", ["a", "b"], None),  # empty sub-queries are dropped
    ("<think>done</think><answer> Quenbridge </answer>", "answer", [], "Quenbridge"),
    ("<answer>1873</answer><search>ignored</search>", "answer", [], "1873"),  # the first action decides
    ("<search>x</search> then <answer>y</answer>", "search", ["x"], None),
    ("<search>multi\nline</search>", "search", ["multi\nline"], None),
    # malformed turns: all invalid, never an exception
    ("", "invalid", [], None),
    ("just some text<|im_end|>", "invalid", [], None),
    ("<search>never closed", "invalid", [], None),
    ("<answer>never closed", "invalid", [], None),
    ("<search></search>", "invalid", [], None),
    ("<search> ## ## </search>", "invalid", [], None),
    ("<answer>   </answer>", "invalid", [], None),
    ("</search><search", "invalid", [], None),
    ("<answer><answer>nested</answer></answer>", "answer", [], "<answer>nested"),
    ("\x00\ufffd<search>\ufffd</search>", "search", ["\ufffd"], None),
]


@pytest.mark.parametrize("text, kind, queries, answer", TAGS_PARSE_TABLE)
def test_tags_parse_table(text, kind, queries, answer):
    action = build_protocol("tags").parse(text)
    assert (action.kind, action.queries, action.answer) == (kind, queries, answer)
    assert all(call.name == "search" for call in action.calls)


FUNCTION_CALL_PARSE_TABLE = [
    ('<tool_call>{"name": "search", "arguments": {"query": "a"}}</tool_call><|im_end|>', "search", ["a"], None),
    ('<think>two</think><tool_call>{"name": "search", "arguments": {"query": "a"}}</tool_call>\n'
     '<tool_call>{"name": "search", "arguments": {"query": "b"}}</tool_call>', "search", ["a", "b"], None),
    ('<tool_call>{"name": "search", "arguments": "{\\"query\\": \\"s\\"}"}</tool_call>', "search", ["s"], None),
    ("<answer> Paris </answer>", "answer", [], "Paris"),
    ('<answer>x</answer><tool_call>{"name": "search", "arguments": {}}</tool_call>', "answer", [], "x"),
    # malformed
    ("<tool_call>{not json}</tool_call>", "invalid", [], None),
    ('<tool_call>{"arguments": {"query": "a"}}</tool_call>', "invalid", [], None),
    ('<tool_call>["search"]</tool_call>', "invalid", [], None),
    ('<tool_call>{"name": "search", "arguments": [1]}</tool_call>', "invalid", [], None),
    ('<tool_call>{"name": "search", "arguments": "nope"}</tool_call>', "invalid", [], None),
    ('<tool_call>{"name": "search", "arguments": {"query": "a"}}</tool_call><tool_call>{bad</tool_call>',
     "invalid", [], None),
    ('<tool_call>{"name": "search"', "invalid", [], None),
    ("plain text<|im_end|>", "invalid", [], None),
    ("<answer></answer>", "invalid", [], None),
]


@pytest.mark.parametrize("text, kind, queries, answer", FUNCTION_CALL_PARSE_TABLE)
def test_function_call_parse_table(text, kind, queries, answer):
    action = build_protocol("function_call").parse(text)
    assert (action.kind, action.queries, action.answer) == (kind, queries, answer)


def test_function_call_keeps_other_tool_names_and_arguments():
    action = build_protocol("function_call").parse(
        '<tool_call>{"name": "calculator", "arguments": {"expression": "1+2"}}</tool_call>')
    assert action.kind == "search"
    assert [(call.name, call.arguments) for call in action.calls] == [("calculator", {"expression": "1+2"})]
    assert action.queries == []


@pytest.mark.parametrize("name", ["tags", "function_call"])
def test_parse_never_raises_on_non_text(name):
    protocol = build_protocol(name)
    assert protocol.parse(None).kind == "invalid"  # type: ignore[arg-type]
    assert protocol.parse(12345).kind == "invalid"  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["tags", "function_call"])
def test_render_action_round_trips_through_parse(name):
    protocol = build_protocol(name)
    search = Action(kind="search", calls=[ToolCall("search", {"query": "born where"}),
                                          ToolCall("search", {"query": "founded when"})])
    parsed = protocol.parse(protocol.render_action(search, thought="two independent facts"))
    assert (parsed.kind, parsed.queries) == ("search", ["born where", "founded when"])
    parsed = protocol.parse(protocol.render_action(Action(kind="answer", answer="Quenbridge")))
    assert (parsed.kind, parsed.answer) == ("answer", "Quenbridge")


def test_tags_render_observation_single_and_labelled_blocks():
    protocol = build_protocol("tags")
    one = [ToolCall("search", {"query": "q1"}, observation="Doc 1(Title: A) text")]
    assert protocol.render_observation(one) == "\n<information>Doc 1(Title: A) text</information>\n"
    two = [ToolCall("search", {"query": "q1"}, observation="Doc 1(Title: A) a"),
           ToolCall("search", {"query": "q2"}, error="timeout after 5.0 s")]
    assert protocol.render_observation(two) == (
        "\n<information>Query: q1\nDoc 1(Title: A) a</information>\n"
        "<information>Query: q2\nError: timeout after 5.0 s</information>\n"
    )


def test_tags_final_observation_and_corrective_carry_the_forced_answer_cue():
    protocol = build_protocol("tags")
    calls = [ToolCall("search", {"query": "q"}, observation="r")]
    final = protocol.render_observation(calls, final=True)
    assert final.startswith(protocol.render_observation(calls)) and "final answer now" in final
    assert "final answer now" not in protocol.corrective_observation()
    assert "final answer now" in protocol.corrective_observation(final=True)
    # injected texts contain no action tags, so a format check over the response is not fooled
    for text in (final, protocol.corrective_observation(final=True)):
        assert "<answer>" not in text and "<search>" not in text


def test_function_call_observation_is_a_user_message_with_one_response_per_call(tiny_tokenizer):
    """The tiny model's ChatML template defines no tool messages: the results come as one user message."""
    protocol = build_protocol("function_call")
    calls = [ToolCall("search", {"query": "a"}, observation="A"), ToolCall("search", {"query": "b"}, observation="B")]
    turn = Turn(text='<tool_call>{"name": "search", "arguments": {"query": "a"}}</tool_call><|im_end|>', calls=calls)
    assert protocol.observation(turn, tiny_tokenizer) == (
        "\n<|im_start|>user\n<tool_response>\nA\n</tool_response>\n<tool_response>\nB\n</tool_response>"
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    cut = Turn(text='<tool_call>{"name": "search", "arguments": {"query": "a"}}</tool_call>', calls=calls[:1])
    assert protocol.observation(cut, tiny_tokenizer, final=True) == (  # a turn cut at its budget is closed first
        "<|im_end|>\n<|im_start|>user\n<tool_response>\nA\n</tool_response>\nNo tool calls left: give your final "
        "answer now.<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("name, markers", [("tags", ["</search>", "</answer>", "<|im_end|>"]),
                                           ("function_call", ["</answer>", "<|im_end|>"])])
def test_stop_tokens_are_single_tag_tokens_and_eos(name, markers, tiny_tokenizer):
    stop_ids = build_protocol(name).stop_token_ids(tiny_tokenizer)
    assert stop_ids == {tiny_tokenizer.convert_tokens_to_ids(marker) for marker in markers}


@pytest.mark.parametrize("name", ["tags", "function_call"])
@pytest.mark.parametrize("style", ["compact", "full"])
def test_render_prompt_uses_chat_template_and_ends_with_assistant_header(name, style, tiny_tokenizer):
    question = Question(id="q1", question="Who was born first, A or B?", answers=["A"])
    prompt_ids = build_protocol(name, prompt_style=style).render_prompt(question, tiny_tokenizer)
    text = tiny_tokenizer.decode(prompt_ids, skip_special_tokens=False)
    assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n")
    assert "Who was born first, A or B?" in text


def test_compact_prompt_is_short(tiny_tokenizer):
    question = Question(id="q1", question="Who was born first, A or B?", answers=["A"])
    compact = build_protocol("tags").render_prompt(question, tiny_tokenizer)
    full = build_protocol("tags", prompt_style="full").render_prompt(question, tiny_tokenizer)
    assert len(compact) < len(full)


def test_stop_strings_of_several_tokens_stay_strings_and_only_single_tokens_become_ids():
    class CharacterTokenizer:  # every character is a token: no tag, no end-of-turn marker is one token
        eos_token_id = 0

        def encode(self, text, add_special_tokens=False):
            return [ord(character) for character in text]

    for name in ("tags", "function_call"):
        protocol = build_protocol(name)
        assert protocol.stop_token_ids(CharacterTokenizer()) == {0}
        assert "</answer>" in protocol.stop_strings
    assert build_protocol("tags").stop_strings == ("</search>", "</answer>")


@pytest.mark.parametrize("name, turn", [("tags", "<search> a ## b </search>"), ("tags", "<answer> x </answer>"),
                                        ("function_call", "<answer> x </answer>")])
@pytest.mark.parametrize("overhang", ["\n", "\n\n", ".", '"}', "<"])
def test_characters_the_last_token_carries_past_the_stop_string_do_not_change_the_action(name, turn, overhang):
    protocol = build_protocol(name)
    assert protocol.parse(turn + overhang) == protocol.parse(turn) != Action(kind="invalid")


def test_parse_reads_a_turn_up_to_its_first_stop_string():
    assert text_through_first_stop("a</search>b</answer>c", ("</search>", "</answer>")) == "a</search>"
    assert text_through_first_stop("a</answer>b</search>c", ("</search>", "</answer>")) == "a</answer>"
    assert text_through_first_stop("no stop string", ("</search>",)) == "no stop string"
    # an engine that stops on strings would have ended this turn at </answer>: no complete block then
    assert build_protocol("tags").parse("<search> a </answer> b </search>").kind == "invalid"


def test_registry_refuses_duplicates_and_unknown_names():
    with pytest.raises(ValueError, match="already registered"):
        register_protocol("tags")(type("Other", (AgentProtocol,), {}))
    with pytest.raises(ValueError, match="valid protocols: function_call, tags"):
        build_protocol("xml")
    with pytest.raises(ValueError, match="prompt_style"):
        build_protocol("tags", prompt_style="verbose")
    assert set(PROTOCOLS) >= {"tags", "function_call"}
