"""Parse what the model wrote into actions, per agent protocol, for the reward functions.

The rewards never trust the agent loop's own parse for scoring: they re-read the model's text (the
`Turn.text` of every round, or the decoded response split at the observation blocks when no turns are
recorded) with the small grammars below. Each parser is linear in the text (a tokenizer on the tag
names plus a state machine, no backtracking regex), never raises, and reports *why* a turn is invalid.

Grammars (one model turn; an episode is valid when every turn is valid, every turn but the last is a
tool call and the last is the answer):

    tags           <think>…</think>?  ( <search>q1 ## q2 …</search> | <answer>…</answer> )
    function_call  <think>…</think>?  ( (<tool_call>{"name": …, "arguments": {…}}</tool_call>)+
                                        | <answer>…</answer> )

Only whitespace may sit outside the tags (and a trailing end-of-message token such as `<|im_end|>`,
which the engine decodes with the turn); sub-queries and the answer must not be empty. Under
`function_call`, every block must be a JSON object with a known tool name and an `arguments` object
(or a JSON string of one, OpenAI style); the known tool names are the ones the episode could call
(`Trajectory.tool_names`, i.e. `tools.enabled`); each `search` call is one sub-query (`query`), or several
(`query_list`, the ParallelSearch function format), and a call to another tool is a valid call that issues
no sub-query. Both protocols give the final answer in
`<answer>…</answer>`. This grammar is stricter than the agent loop's (rollouts/protocols.py reads the
first action block and treats surrounding text as reasoning): the loop acts on sloppy turns, the
format reward teaches the model not to write them.

The answer and the queries are also extracted leniently from invalid turns (last complete answer
block of the episode, first complete search block of a turn) so the graded Search-R1 score can credit
a correct answer in a malformed episode.

    episode = parse_trajectory(trajectory)
    episode.valid, episode.answer, episode.search_rounds, episode.subqueries_per_round
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable, Sequence

from data.registry import Registry

DEFAULT_TOOL_NAMES: tuple[str, ...] = ("search",)
# End-of-message tokens a turn may end with when decoded with special tokens (Qwen, Llama, SentencePiece).
END_OF_MESSAGE_MARKERS: tuple[str, ...] = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>")


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
    def query_rounds(self) -> list[tuple[str, ...]]:
        """The sub-queries of each round that issued at least one."""
        return [turn.queries for turn in self.turns if turn.queries]

    @property
    def queries_per_round(self) -> list[int]:
        """Number of sub-queries of each round that issued at least one."""
        return [len(queries) for queries in self.query_rounds]

    @property
    def repeated_subqueries(self) -> int:
        """Sub-queries that repeat one the episode issued before, in their round or an earlier one (case and
        whitespace folded): lookups written twice."""
        return sum(repeats_per_round(self.query_rounds))

    @property
    def search_rounds(self) -> int:
        return len(self.queries_per_round)

    @property
    def subqueries(self) -> int:
        return sum(self.queries_per_round)

    @property
    def subqueries_per_round(self) -> float:
        return self.subqueries / self.search_rounds if self.search_rounds else 0.0


def fold_query(query: str) -> str:
    """A sub-query compared as a lookup: case and whitespace folded."""
    return " ".join(query.lower().split())


def repeats_per_round(query_rounds: Sequence[Sequence[Any]], key: Callable[[Any], Hashable] = fold_query
                      ) -> list[int]:
    """For each round, how many of its sub-queries repeat one issued before it, in the round or an earlier
    one; two are the same when their `key` is (by default fold_query: case and whitespace folded)."""
    seen: set[Hashable] = set()
    repeats = []
    for queries in query_rounds:
        count = 0
        for query in queries:
            folded = key(query)
            count += folded in seen
            seen.add(folded)
        repeats.append(count)
    return repeats


@dataclass(frozen=True)
class ProtocolGrammar:
    """How to read one protocol: parse one turn; the (open, close) markers of injected observations."""

    parse_turn: Callable[[str, Sequence[str]], ParsedTurn]
    observation_delimiters: tuple[tuple[str, str], ...]


PROTOCOLS: Registry[ProtocolGrammar] = Registry("agent protocol")


# ----------------------------------------------------------------------------------------------
# Helpers shared by the grammars
# ----------------------------------------------------------------------------------------------


def _tokenize(text: str, tag_names: Iterable[str]) -> list[tuple[bool, str]]:
    """Split text into (is_tag, piece): tag tokens `<name>` / `</name>` and the text between them."""
    pattern = re.compile("(</?(?:" + "|".join(map(re.escape, tag_names)) + ")>)")
    pieces = pattern.split(text)  # re.split with one group: text, tag, text, tag, ..., text
    return [(index % 2 == 1, piece) for index, piece in enumerate(pieces) if piece]


def last_block(text: str, tag: str) -> str | None:
    """Content of the last complete `<tag>…</tag>` block (the last opening tag that is closed), stripped."""
    open_at = text.rfind(f"<{tag}>", 0, max(text.rfind(f"</{tag}>"), 0))
    if open_at < 0:
        return None
    close_at = text.find(f"</{tag}>", open_at)
    return text[open_at + len(tag) + 2 : close_at].strip()


def first_block(text: str, tag: str) -> str | None:
    """Content of the first complete `<tag>…</tag>` block, stripped; None if there is none."""
    open_at = text.find(f"<{tag}>")
    if open_at < 0:
        return None
    close_at = text.find(f"</{tag}>", open_at)
    return None if close_at < 0 else text[open_at + len(tag) + 2 : close_at].strip()


def strip_end_of_message(text: str) -> str:
    """The turn without trailing end-of-message tokens (the stop token the engine decoded with the text)."""
    text = text.rstrip()
    while text.endswith(END_OF_MESSAGE_MARKERS):
        marker = next(marker for marker in END_OF_MESSAGE_MARKERS if text.endswith(marker))
        text = text[: -len(marker)].rstrip()
    return text


def split_subqueries(search_body: str) -> tuple[str, ...]:
    """`q1 ## q2 ## q3` -> ("q1", "q2", "q3"); empty pieces are kept as "" so the grammar can reject them."""
    return tuple(piece.strip() for piece in search_body.split("##"))


def _action_sequence(tokens: list[tuple[bool, str]]) -> tuple[list[tuple[str, str]], str]:
    """The turn state machine: optional think block, then action blocks -> ([(tag, body)], problem)."""
    state, blocks, body_parts = "start", [], []
    for is_tag, token in tokens:
        if not is_tag:
            if state.startswith("in_"):
                body_parts.append(token)
            elif token.strip():
                return blocks, f"text outside tags: {token.strip()[:40]!r}"
            continue
        name, closing = token.strip("</>"), token.startswith("</")
        if (
            not closing
            and state in ("start", "after_think", "after_action")
            and (name != "think" or state == "start")
        ):
            state, body_parts = f"in_{name}", []
        elif closing and state == f"in_{name}":
            if name != "think":
                blocks.append((name, "".join(body_parts)))
            state = "after_think" if name == "think" else "after_action"
        else:
            return blocks, f"unexpected {token} (state {state})"
    if state == "after_action":
        return blocks, ""
    if state in ("start", "after_think"):
        return blocks, "no complete action block"
    return blocks, f"unclosed block ({state})"


# ----------------------------------------------------------------------------------------------
# Protocol "tags": <search>q1 ## q2</search> / <answer>…</answer>
# ----------------------------------------------------------------------------------------------


def _tags_block_problem(blocks: list[tuple[str, str]]) -> str:
    if len(blocks) != 1:
        return f"{len(blocks)} action blocks in one turn (exactly one expected)"
    name, body = blocks[0]
    if name == "information":
        return "the model wrote an <information> block (only the environment may)"
    if name == "search" and not all(split_subqueries(body)):
        return "empty sub-query in <search> (check the ## separators)"
    if name == "answer" and not body.strip():
        return "empty <answer>"
    return ""


def parse_tags_turn(text: str, tool_names: Sequence[str] = DEFAULT_TOOL_NAMES) -> ParsedTurn:
    text = strip_end_of_message(text if isinstance(text, str) else "")
    answer = last_block(text, "answer")
    blocks, problem = _action_sequence(_tokenize(text, ("think", "search", "answer", "information")))
    problem = problem or _tags_block_problem(blocks)
    if problem:
        lenient_search = first_block(text, "search") or ""
        lenient_queries = tuple(query for query in split_subqueries(lenient_search) if query)
        return ParsedTurn("invalid", queries=lenient_queries, answer=answer, problem=problem)
    name, body = blocks[0]
    if name == "search":
        return ParsedTurn("search", queries=split_subqueries(body), answer=answer)
    return ParsedTurn("answer", answer=answer)


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
    if isinstance(arguments, str):  # OpenAI style: the arguments object serialised as a JSON string
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError):
            return (), "tool call 'arguments' is a string that is not JSON"
    if not isinstance(arguments, dict):
        return (), "tool call 'arguments' is not a JSON object"
    if name != "search":
        return (), ""
    query, query_list = arguments.get("query"), arguments.get("query_list")
    if isinstance(query, str) and query.strip():
        return (query.strip(),), ""
    query_list = query_list if isinstance(query_list, list) else []
    if query_list and all(isinstance(query, str) and query.strip() for query in query_list):
        return tuple(query.strip() for query in query_list), ""
    return (), "search call needs a non-empty 'query' string (or 'query_list' of strings)"


def _function_call_block_problem(blocks: list[tuple[str, str]]) -> str:
    kinds = {name for name, _ in blocks}
    if kinds & {"tool_response", "information"}:
        return "the model wrote an observation block (only the environment may)"
    if "answer" in kinds and len(blocks) != 1:
        return "an <answer> must be the only action of its turn"
    if "answer" in kinds and not blocks[0][1].strip():
        return "empty <answer>"
    return ""


def parse_function_call_turn(text: str, tool_names: Sequence[str] = DEFAULT_TOOL_NAMES) -> ParsedTurn:
    text = strip_end_of_message(text if isinstance(text, str) else "")
    answer = last_block(text, "answer")
    tag_names = ("think", "tool_call", "answer", "tool_response", "information")
    blocks, problem = _action_sequence(_tokenize(text, tag_names))
    problem = problem or _function_call_block_problem(blocks)
    queries: list[str] = []
    for name, body in blocks:
        if name == "tool_call":
            call_queries, call_problem = queries_of_tool_call(body, tool_names)
            queries.extend(call_queries)
            problem = problem or call_problem
    if problem:
        return ParsedTurn("invalid", queries=tuple(queries), answer=answer, problem=problem)
    kind = "answer" if blocks[0][0] == "answer" else "search"
    return ParsedTurn(kind, queries=tuple(queries), answer=answer)


TAGS_OBSERVATIONS = (("<information>", "</information>"),)
FUNCTION_CALL_OBSERVATIONS = (
    ("<|im_start|>user", "<|im_start|>assistant"),  # tool responses arrive in a user message of the chat
    ("<tool_response>", "</tool_response>"),
    ("<information>", "</information>"),
)
PROTOCOLS.add("tags", ProtocolGrammar(parse_tags_turn, TAGS_OBSERVATIONS))
PROTOCOLS.add("function_call", ProtocolGrammar(parse_function_call_turn, FUNCTION_CALL_OBSERVATIONS))


# ----------------------------------------------------------------------------------------------
# Episodes
# ----------------------------------------------------------------------------------------------


def split_model_segments(response_text: str, observation_delimiters: Sequence[tuple[str, str]]) -> list[str]:
    """The model-written pieces of a decoded response: the non-blank text between observation blocks.

    Text the environment injects without delimiters (a corrective message, a forced-answer cue) cannot be
    told apart from model text here and lands in the next segment; the recorded `Trajectory.turns` can.
    """
    text = response_text if isinstance(response_text, str) else ""
    segments, position = [], 0
    while True:
        opens = [
            (text.find(open_marker, position), open_marker, close)
            for open_marker, close in observation_delimiters
        ]
        opens = [found for found in opens if found[0] >= 0]
        if not opens:
            segments.append(text[position:])
            break
        open_at, open_marker, close = min(opens)
        segments.append(text[position:open_at])
        close_at = text.find(close, open_at + len(open_marker))
        if close_at < 0:  # unterminated observation: the rest is environment text
            break
        position = close_at + len(close)
    return [segment for segment in segments if segment.strip()]


def parse_episode(
    turn_texts: Sequence[str],
    protocol: str = "tags",
    invalid_flags: Sequence[bool] = (),
    tool_names: Sequence[str] = DEFAULT_TOOL_NAMES,
) -> ParsedEpisode:
    """Parse every model turn and judge the episode: (tool calls)* then exactly one answer, at the end."""
    return _parse_episode_cached(
        tuple(turn_texts), protocol, tuple(map(bool, invalid_flags)), tuple(tool_names)
    )


@functools.lru_cache(maxsize=4096)  # every reward component parses the same trajectory: parse it once
def _parse_episode_cached(
    turn_texts: tuple[str, ...], protocol: str, invalid_flags: tuple[bool, ...], tool_names: tuple[str, ...]
) -> ParsedEpisode:
    grammar = PROTOCOLS[protocol]
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
                wanted = "the final answer" if expected == "answer" else "a tool call"
                problem = f"turn {index}: {turn.kind} where {wanted} was expected"
            if problem:
                break
    return ParsedEpisode(turns=turns, valid=not problem, answer=answer, problem=problem)


def model_turn_texts(trajectory) -> list[str]:
    """What the model generated, round by round: the recorded turns, else the response cut at observations."""
    turns = getattr(trajectory, "turns", None) or []
    if turns:
        return [turn.text if isinstance(turn.text, str) else "" for turn in turns]
    response_text = getattr(trajectory, "response_text", "")
    if not isinstance(response_text, str) or not response_text:
        return []
    return list(_split_response_cached(response_text, getattr(trajectory, "protocol", "tags") or "tags"))


@functools.lru_cache(maxsize=4096)
def _split_response_cached(response_text: str, protocol: str) -> tuple[str, ...]:
    return tuple(split_model_segments(response_text, PROTOCOLS[protocol].observation_delimiters))


def parse_trajectory(trajectory, tool_names: Sequence[str] | None = None) -> ParsedEpisode:
    """Parse a Trajectory with the grammar of the protocol that generated it.

    tool_names: the tools a call may name; by default the ones the episode had (`Trajectory.tool_names`,
    the configured `tools.enabled`), else DEFAULT_TOOL_NAMES.
    """
    if tool_names is None:
        tool_names = getattr(trajectory, "tool_names", None) or DEFAULT_TOOL_NAMES
    protocol = getattr(trajectory, "protocol", "tags") or "tags"
    invalid_flags = [
        bool(getattr(turn, "invalid", False)) for turn in getattr(trajectory, "turns", None) or []
    ]
    return parse_episode(model_turn_texts(trajectory), protocol, invalid_flags, tool_names)
