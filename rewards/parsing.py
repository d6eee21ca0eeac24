"""Parse what the model wrote into actions, per agent protocol, for the reward functions.

The rewards never trust the agent loop's own parse for scoring: they re-read the model's text (the
`Turn.text` of every round, or the decoded response split at the observation blocks when no turns are
recorded) with the small grammars below. Each parser is linear in the text (a tokenizer on the tag
names plus a state machine, no backtracking regex), never raises, and reports *why* a turn is invalid.

Grammars (one model turn; an episode is valid when every turn is valid, every turn but the last is a
tool call and the last is the answer):

    tags           <think>…</think>?  ( <search>q1 ## q2 …</search> | <answer>…</answer> )
    function_call  <think>…</think>?  ( (<tool_call>{"name": …, "arguments": {…}}</tool_call>)+ | <answer>…</answer> )

Only whitespace may sit outside the tags. Under `function_call`, every block must be a JSON object
with a known tool name and an `arguments` object; each `search` call is one sub-query (`query`), or
several (`query_list`, the ParallelSearch function format). Both protocols give the final answer in
`<answer>…</answer>`.

The answer and the queries are also extracted leniently from invalid turns (last complete answer
block of the episode, first complete search block of a turn) so the graded Search-R1 score can credit
a correct answer in a malformed episode.

    episode = parse_trajectory(trajectory)
    episode.valid, episode.answer, episode.search_rounds, episode.subqueries_per_round
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from rewards.registry import NamedRegistry

DEFAULT_TOOL_NAMES: tuple[str, ...] = ("search",)


@dataclass(frozen=True)
class ParsedTurn:
    """One model turn read with a protocol grammar."""

    kind: str  # "search" (tool calls), "answer" or "invalid"
    queries: tuple[str, ...] = ()  # sub-queries issued in this turn (several = parallel calls)
    answer: str | None = None  # content of the last complete <answer> block in this turn
    problem: str = ""  # why the turn is invalid ("" when valid)

    @property
    def valid(self) -> bool:
        return self.kind != "invalid"


@dataclass(frozen=True)
class ParsedEpisode:
    """All model turns of one trajectory, with the episode-level verdict."""

    turns: tuple[ParsedTurn, ...]
    valid: bool
    answer: str | None  # last answer the model gave (lenient: also from invalid turns)
    problem: str = ""

    @property
    def model_calls(self) -> int:
        return len(self.turns)

    @property
    def queries_per_round(self) -> list[int]:
        """Number of sub-queries of each round that issued at least one."""
        return [len(turn.queries) for turn in self.turns if turn.queries]

    @property
    def search_rounds(self) -> int:
        return len(self.queries_per_round)

    @property
    def subqueries(self) -> int:
        return sum(self.queries_per_round)

    @property
    def subqueries_per_round(self) -> float:
        return self.subqueries / self.search_rounds if self.search_rounds else 0.0


@dataclass(frozen=True)
class ProtocolGrammar:
    """How to read one protocol: parse a single turn, and which tags enclose environment observations."""

    parse_turn: Callable[[str, Sequence[str]], ParsedTurn]
    observation_tags: tuple[str, ...]


PROTOCOLS: NamedRegistry[ProtocolGrammar] = NamedRegistry("agent protocol")


# ----------------------------------------------------------------------------------------------
# Helpers shared by the grammars
# ----------------------------------------------------------------------------------------------


def _tokenize(text: str, tag_names: Iterable[str]) -> list[tuple[bool, str]]:
    """Split text into (is_tag, piece): tag tokens `<name>` / `</name>` and the text between them."""
    pattern = re.compile("(</?(?:" + "|".join(map(re.escape, tag_names)) + ")>)")
    pieces = pattern.split(text)  # re.split with one group: text, tag, text, tag, ..., text
    return [(index % 2 == 1, piece) for index, piece in enumerate(pieces) if piece]


def last_block(text: str, tag: str) -> str | None:
    """Content of the last complete `<tag>…</tag>` block, stripped; None if there is none."""
    close_at = text.rfind(f"</{tag}>")
    if close_at < 0:
        return None
    open_at = text.rfind(f"<{tag}>", 0, close_at)
    return None if open_at < 0 else text[open_at + len(tag) + 2 : close_at].strip()


def first_block(text: str, tag: str) -> str | None:
    """Content of the first complete `<tag>…</tag>` block, stripped; None if there is none."""
    open_at = text.find(f"<{tag}>")
    if open_at < 0:
        return None
    close_at = text.find(f"</{tag}>", open_at)
    return None if close_at < 0 else text[open_at + len(tag) + 2 : close_at].strip()


def split_subqueries(search_body: str) -> tuple[str, ...]:
    """`q1 ## q2 ## q3` -> ("q1", "q2", "q3"); empty pieces are kept as "" so the grammar can reject them."""
    return tuple(piece.strip() for piece in search_body.split("##"))


def _action_sequence(tokens: list[tuple[bool, str]]) -> tuple[list[tuple[str, str]], str]:
    """Run the turn state machine: optional think block, then action blocks. Returns ([(tag, body)], problem)."""
    state, blocks, body_parts = "start", [], []
    for is_tag, token in tokens:
        if not is_tag:
            if state.startswith("in_"):
                body_parts.append(token)
            elif token.strip():
                return blocks, f"text outside tags: {token.strip()[:40]!r}"
            continue
        name, closing = token.strip("</>"), token.startswith("</")
        if not closing and state in ("start", "after_think", "after_action") and (name != "think" or state == "start"):
            state, body_parts = f"in_{name}", []
        elif closing and state == f"in_{name}":
            if name != "think":
                blocks.append((name, "".join(body_parts)))
            state = "after_think" if name == "think" else "after_action"
        else:
            return blocks, f"unexpected {token} (state {state})"
    if state != "after_action":
        return blocks, "no complete action block" if state in ("start", "after_think") else f"unclosed block ({state})"
    return blocks, ""


# ----------------------------------------------------------------------------------------------
# Protocol "tags": <search>q1 ## q2</search> / <answer>…</answer>
# ----------------------------------------------------------------------------------------------


def parse_tags_turn(text: str, tool_names: Sequence[str] = DEFAULT_TOOL_NAMES) -> ParsedTurn:
    text = text if isinstance(text, str) else ""
    answer = last_block(text, "answer")
    lenient_search = first_block(text, "search")
    lenient_queries = tuple(q for q in split_subqueries(lenient_search) if q) if lenient_search is not None else ()
    tokens = _tokenize(text, ("think", "search", "answer", "information"))
    blocks, problem = _action_sequence(tokens)
    if not problem and len(blocks) != 1:
        problem = f"{len(blocks)} action blocks in one turn (exactly one expected)"
    if not problem and blocks[0][0] == "information":
        problem = "the model wrote an <information> block (only the environment may)"
    if not problem and blocks[0][0] == "search":
        queries = split_subqueries(blocks[0][1])
        if not all(queries):
            problem = "empty sub-query in <search> (check the ## separators)"
        else:
            return ParsedTurn("search", queries=queries, answer=answer)
    if not problem:
        return ParsedTurn("answer", answer=answer)
    return ParsedTurn("invalid", queries=lenient_queries, answer=answer, problem=problem)


# ----------------------------------------------------------------------------------------------
# Protocol "function_call": <tool_call>{"name": "search", "arguments": {"query": …}}</tool_call>+
# ----------------------------------------------------------------------------------------------


def queries_of_tool_call(body: str, tool_names: Sequence[str]) -> tuple[tuple[str, ...], str]:
    """Sub-queries of one tool-call block and the problem with it ("" when it is a valid call)."""
    try:
        call = json.loads(body)
    except (ValueError, RecursionError):
        return (), "tool call is not valid JSON"
    if not isinstance(call, dict):
        return (), "tool call is not a JSON object"
    name, arguments = call.get("name"), call.get("arguments")
    if not isinstance(name, str) or name not in tool_names:
        return (), f"unknown tool name {str(name)[:40]!r} (known: {', '.join(tool_names)})"
    if not isinstance(arguments, dict):
        return (), "tool call 'arguments' is not a JSON object"
    if name != "search":
        return (), ""
    query, query_list = arguments.get("query"), arguments.get("query_list")
    if isinstance(query, str) and query.strip():
        return (query.strip(),), ""
    if isinstance(query_list, list) and query_list and all(isinstance(q, str) and q.strip() for q in query_list):
        return tuple(q.strip() for q in query_list), ""
    return (), "search call needs a non-empty 'query' string (or 'query_list' of strings)"


def parse_function_call_turn(text: str, tool_names: Sequence[str] = DEFAULT_TOOL_NAMES) -> ParsedTurn:
    text = text if isinstance(text, str) else ""
    answer = last_block(text, "answer")
    tokens = _tokenize(text, ("think", "tool_call", "answer", "tool_response", "information"))
    blocks, problem = _action_sequence(tokens)
    kinds = {name for name, _ in blocks}
    if not problem and kinds & {"tool_response", "information"}:
        problem = "the model wrote an observation block (only the environment may)"
    if not problem and "answer" in kinds and len(blocks) != 1:
        problem = "an <answer> must be the only action of its turn"
    queries: list[str] = []
    for name, body in blocks:
        if name == "tool_call":
            call_queries, call_problem = queries_of_tool_call(body, tool_names)
            queries.extend(call_queries)
            problem = problem or call_problem
    if problem:
        return ParsedTurn("invalid", queries=tuple(queries), answer=answer, problem=problem)
    return ParsedTurn("answer" if "answer" in kinds else "search", queries=tuple(queries), answer=answer)


PROTOCOLS.add("tags", ProtocolGrammar(parse_tags_turn, observation_tags=("information",)))
PROTOCOLS.add("function_call", ProtocolGrammar(parse_function_call_turn, observation_tags=("tool_response", "information")))


# ----------------------------------------------------------------------------------------------
# Episodes
# ----------------------------------------------------------------------------------------------


def split_model_segments(response_text: str, observation_tags: Sequence[str]) -> list[str]:
    """The model-written pieces of a decoded response: the text between observation blocks."""
    text = response_text if isinstance(response_text, str) else ""
    segments, position = [], 0
    while True:
        opens = [(text.find(f"<{tag}>", position), tag) for tag in observation_tags]
        opens = [(at, tag) for at, tag in opens if at >= 0]
        if not opens:
            segments.append(text[position:])
            break
        open_at, tag = min(opens)
        segments.append(text[position:open_at])
        close_at = text.find(f"</{tag}>", open_at)
        if close_at < 0:  # unterminated observation: the rest is environment text
            break
        position = close_at + len(tag) + 3
    if len(segments) > 1 and not segments[-1].strip():
        segments.pop()  # the response ended with an observation: no model turn after it
    return segments


def parse_episode(turn_texts: Sequence[str], protocol: str = "tags", invalid_flags: Sequence[bool] = (),
                  tool_names: Sequence[str] = DEFAULT_TOOL_NAMES) -> ParsedEpisode:
    """Parse every model turn and judge the episode: (tool calls)* then exactly one answer, at the end."""
    grammar = PROTOCOLS.get(protocol)
    turns = tuple(grammar.parse_turn(text, tool_names) for text in turn_texts)
    answers = [turn.answer for turn in turns if turn.answer is not None]
    answer = answers[-1] if answers else None
    problem = ""
    if not turns:
        problem = "no model turn"
    elif any(invalid_flags):
        problem = "the agent loop marked a turn invalid"
    else:
        for index, turn in enumerate(turns):
            expected = "answer" if index == len(turns) - 1 else "search"
            if not turn.valid:
                problem = f"turn {index}: {turn.problem}"
            elif turn.kind != expected:
                problem = f"turn {index}: {turn.kind} where {'the final answer' if expected == 'answer' else 'a tool call'} was expected"
            if problem:
                break
    return ParsedEpisode(turns=turns, valid=not problem, answer=answer, problem=problem)


def model_turn_texts(trajectory) -> list[str]:
    """What the model generated, round by round: the recorded turns, else the response split at observations."""
    turns = getattr(trajectory, "turns", None) or []
    if turns:
        return [turn.text if isinstance(turn.text, str) else "" for turn in turns]
    grammar = PROTOCOLS.get(getattr(trajectory, "protocol", "tags") or "tags")
    response_text = getattr(trajectory, "response_text", "")
    return split_model_segments(response_text, grammar.observation_tags) if response_text else []


def parse_trajectory(trajectory, tool_names: Sequence[str] = DEFAULT_TOOL_NAMES) -> ParsedEpisode:
    """Parse a Trajectory with the grammar of the protocol that generated it."""
    protocol = getattr(trajectory, "protocol", "tags") or "tags"
    invalid_flags = [bool(getattr(turn, "invalid", False)) for turn in getattr(trajectory, "turns", None) or []]
    return parse_episode(model_turn_texts(trajectory), protocol, invalid_flags, tool_names)
