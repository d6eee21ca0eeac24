"""The reward-side grammars: one turn per protocol, whole episodes, response splitting."""

from __future__ import annotations

import pytest

from rewards.parsing import (
    PROTOCOLS,
    first_block,
    last_block,
    parse_episode,
    parse_function_call_turn,
    parse_tags_turn,
    parse_trajectory,
    repeats_per_round,
    split_model_segments,
    strip_end_of_message,
)

SEARCH_A = '<tool_call>{"name": "search", "arguments": {"query": "a"}}</tool_call>'
SEARCH_B = '<tool_call>{"name": "search", "arguments": {"query": "b"}}</tool_call>'


@pytest.mark.parametrize(
    "text, kind, queries, answer, problem",
    [
        ("<think>t</think><search>a ## b</search>", "search", ("a", "b"), None, ""),
        ("<search> who directed X? </search>", "search", ("who directed X?",), None, ""),
        ("  <think>t</think>\n<answer> Paris </answer>\n", "answer", (), "Paris", ""),
        ("<answer>Paris</answer><|im_end|>", "answer", (), "Paris", ""),
        ("<search>a</search>\n<|endoftext|>", "search", ("a",), None, ""),
        ("", "invalid", (), None, "no complete action block"),
        ("Paris", "invalid", (), None, "text outside tags"),
        ("<think>t</think>", "invalid", (), None, "no complete action block"),
        ("<think>t</think>so<answer>P</answer>", "invalid", (), "P", "text outside tags"),
        ("<search>a</search><answer>b</answer>", "invalid", ("a",), "b", "2 action blocks"),
        ("<search>a ## </search>", "invalid", ("a",), None, "empty sub-query"),
        ("<search>a", "invalid", (), None, "unclosed block"),
        (
            "<think><search>a</search></think><answer>x</answer>",
            "invalid",
            ("a",),
            "x",
            "unexpected <search>",
        ),
        ("<think>a</think><think>b</think><answer>x</answer>", "invalid", (), "x", "unexpected <think>"),
        ("<answer>x</answer><think>a</think>", "invalid", (), "x", "unexpected <think>"),
        ("<information>x</information>", "invalid", (), None, "only the environment"),
        ("</answer>", "invalid", (), None, "unexpected </answer>"),
        ("<answer>  </answer>", "invalid", (), "", "empty <answer>"),
        ("<answer>a<answer>b</answer></answer>", "invalid", (), "b", "unexpected <answer>"),
        ("<search>a</search><|im_end|>trailing", "invalid", ("a",), None, "text outside tags"),
    ],
)
def test_tags_turn(text, kind, queries, answer, problem):
    turn = parse_tags_turn(text)
    assert (turn.kind, turn.queries, turn.answer) == (kind, queries, answer)
    assert turn.valid == (kind != "invalid")
    assert problem in turn.problem and bool(problem) == bool(turn.problem)


@pytest.mark.parametrize(
    "text, kind, queries, problem",
    [
        (SEARCH_A, "search", ("a",), ""),
        (f"<think>two facts</think>\n{SEARCH_A}\n{SEARCH_B}<|im_end|>", "search", ("a", "b"), ""),
        (
            '<tool_call>{"name": "search", "arguments": {"query_list": ["a", "b"]}}</tool_call>',
            "search",
            ("a", "b"),
            "",
        ),
        (
            '<tool_call>{"name": "search", "arguments": "{\\"query\\": \\"a\\"}"}</tool_call>',
            "search",
            ("a",),
            "",
        ),
        ("<answer>Paris</answer>", "answer", (), ""),
        ("<tool_call>not json</tool_call>", "invalid", (), "not valid JSON"),
        ("<tool_call>[1]</tool_call>", "invalid", (), "not a JSON object"),
        (
            '<tool_call>{"name": "browse", "arguments": {}}</tool_call>',
            "invalid",
            (),
            "unknown tool name 'browse'",
        ),
        (
            '<tool_call>{"name": "search", "arguments": [1]}</tool_call>',
            "invalid",
            (),
            "'arguments' is not a JSON object",
        ),
        (
            '<tool_call>{"name": "search", "arguments": "{oops"}</tool_call>',
            "invalid",
            (),
            "string that is not JSON",
        ),
        (
            '<tool_call>{"name": "search", "arguments": {"q": "a"}}</tool_call>',
            "invalid",
            (),
            "non-empty 'query'",
        ),
        (f"{SEARCH_A}<answer>x</answer>", "invalid", ("a",), "only action of its turn"),
        (f"let me search {SEARCH_A}", "invalid", (), "text outside tags"),
        ("<tool_response>x</tool_response>", "invalid", (), "observation block"),
        ("<search>a</search>", "invalid", (), "text outside tags"),  # tags syntax is not this protocol
        ("<answer></answer>", "invalid", (), "empty <answer>"),
        ("<tool_call>" + "[" * 50_000 + "</tool_call>", "invalid", (), "not valid JSON"),
    ],
)
def test_function_call_turn(text, kind, queries, problem):
    turn = parse_function_call_turn(text)
    assert (turn.kind, turn.queries) == (kind, queries)
    assert problem in turn.problem and bool(problem) == bool(turn.problem)


def test_function_call_other_known_tools_are_calls_without_subqueries():
    text = '<tool_call>{"name": "calculator", "arguments": {"expression": "1+1"}}</tool_call>'
    assert parse_function_call_turn(text).kind == "invalid"
    turn = parse_function_call_turn(text, ("search", "calculator"))
    assert (turn.kind, turn.queries) == ("search", ())


@pytest.mark.parametrize(
    "turns, valid, problem",
    [
        (["<search>a</search>", "<answer>x</answer>"], True, ""),
        (["<answer>x</answer>"], True, ""),
        (["<search>a ## b</search>", "<search>c</search>", "<answer>x</answer>"], True, ""),
        ([], False, "no model turn"),
        (["<search>a</search>"], False, "turn 0: search where the final answer was expected"),
        (
            ["<answer>x</answer>", "<answer>y</answer>"],
            False,
            "turn 0: answer where a tool call was expected",
        ),
        (["<search>a</search> oops", "<answer>x</answer>"], False, "turn 0: text outside tags"),
        (["<search>a</search>", "<answer>x"], False, "turn 1: unclosed block"),
    ],
)
def test_episode_validity(turns, valid, problem):
    episode = parse_episode(turns, "tags")
    assert episode.valid is valid
    assert episode.problem.startswith(problem) and bool(problem) == bool(episode.problem)


def test_episode_invalid_when_agent_loop_flagged_a_turn():
    episode = parse_episode(["<search>a</search>", "<answer>x</answer>"], "tags", invalid_flags=[True, False])
    assert not episode.valid and "agent loop" in episode.problem


@pytest.mark.parametrize(
    "turns, answer",
    [
        (["<answer>A</answer>", "<search>x</search>", "<answer>B</answer>"], "B"),
        (["<answer>A</answer>", "<search>x</search>"], "A"),  # lenient: invalid episode, answer still read
        (["<search>x</search>"], None),
    ],
)
def test_episode_answer_is_the_last_one_written(turns, answer):
    assert parse_episode(turns, "tags").answer == answer


def test_episode_counts():
    episode = parse_episode(["<search>a ## b</search>", "<search>c</search>", "oops", "<answer>x</answer>"])
    assert episode.queries_per_round == [2, 1]
    assert (episode.search_rounds, episode.subqueries, episode.model_calls) == (2, 3, 4)
    assert episode.subqueries_per_round == 1.5
    assert parse_episode(["<answer>x</answer>"]).subqueries_per_round == 0.0


def test_repeated_subqueries_count_lookups_written_twice_in_a_round_or_later():
    episode = parse_episode(["<search>A born ## a  BORN ## b born</search>", "<search>b born ## c</search>",
                             "<answer>x</answer>"])
    assert episode.query_rounds == [("A born", "a  BORN", "b born"), ("b born", "c")]
    assert repeats_per_round(episode.query_rounds) == [1, 1]
    assert episode.repeated_subqueries == 2
    assert parse_episode(["<search>a ## b</search>", "<answer>x</answer>"]).repeated_subqueries == 0


def test_unknown_protocol_names_the_registered_ones():
    with pytest.raises(KeyError, match="function_call, tags"):
        parse_episode(["<answer>x</answer>"], "xml")


@pytest.mark.parametrize(
    "protocol, response, segments",
    [
        (
            "tags",
            "<search>a ## b</search>\n<information>x</information>\n<information>y</information>\n"
            "<answer>z</answer>",
            ["<search>a ## b</search>\n", "\n<answer>z</answer>"],
        ),
        ("tags", "<search>a</search><information>unterminated", ["<search>a</search>"]),
        ("tags", "<answer>z</answer>", ["<answer>z</answer>"]),
        ("tags", "<information>x</information>", []),
        (
            "function_call",
            f"{SEARCH_A}<|im_end|>\n<|im_start|>user\n<tool_response>\nr\n</tool_response><|im_end|>\n"
            "<|im_start|>assistant\n<answer>z</answer><|im_end|>",
            [f"{SEARCH_A}<|im_end|>\n", "\n<answer>z</answer><|im_end|>"],
        ),
        (
            "function_call",
            f"{SEARCH_A}<tool_response>r</tool_response><answer>z</answer>",
            [SEARCH_A, "<answer>z</answer>"],
        ),
    ],
)
def test_split_model_segments(protocol, response, segments):
    assert split_model_segments(response, PROTOCOLS[protocol].observation_delimiters) == segments


def test_parse_trajectory_accepts_the_tools_the_episode_had(make_trajectory):
    calculator = '<tool_call>{"name": "calculator", "arguments": {"expression": "1 + 1"}}</tool_call><|im_end|>'
    trajectory = make_trajectory([calculator, "<answer>Paris</answer><|im_end|>"], protocol="function_call")
    episode = parse_trajectory(trajectory)  # the default record: only search was configured
    assert not episode.valid and "unknown tool name 'calculator'" in episode.problem
    trajectory.tool_names = ["search", "calculator"]  # what the agent loop records with tools.enabled=[search, calculator]
    episode = parse_trajectory(trajectory)
    assert episode.valid and episode.model_calls == 2 and episode.search_rounds == 0  # no sub-query was issued
    assert not parse_trajectory(trajectory, tool_names=["search"]).valid  # an explicit list still wins


def test_parse_trajectory_uses_the_trajectory_protocol(make_trajectory):
    turns = [f"{SEARCH_A}\n{SEARCH_B}<|im_end|>", "<answer>Paris</answer><|im_end|>"]
    assert parse_trajectory(make_trajectory(turns, protocol="function_call")).valid
    assert not parse_trajectory(make_trajectory(turns, protocol="tags")).valid


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<answer>x</answer><|im_end|>", "<answer>x</answer>"),
        ("a<|im_end|> <|endoftext|>\n", "a"),
        ("<|im_end|>a", "<|im_end|>a"),
    ],
)
def test_strip_end_of_message(text, expected):
    assert strip_end_of_message(text) == expected


@pytest.mark.parametrize(
    "text, first, last",
    [
        ("<b>1</b><b>2</b>", "1", "2"),
        ("<b>1</b><b>2", "1", "1"),
        ("</b><b>", None, None),
        ("", None, None),
    ],
)
def test_first_and_last_block(text, first, last):
    assert (first_block(text, "b"), last_block(text, "b")) == (first, last)


def test_agent_protocol_renderings_are_valid_for_the_format_reward():
    """What the scripted expert writes (rollouts/protocols.py render_action) must score as valid."""
    from rollouts import protocols

    for name in ("tags", "function_call"):
        protocol = protocols.build_protocol(name)
        search = protocols.Action(kind="search", calls=protocols.search_calls(["age of A", "age of B"]))
        answer = protocols.Action(kind="answer", answer="A")
        turns = [
            protocol.render_action(search, thought="two facts"),
            protocol.render_action(answer, thought="done"),
        ]
        episode = parse_episode(turns, name)
        assert episode.valid, (name, episode.problem)
        assert (episode.queries_per_round, episode.answer) == ([2], "A")
