"""Agent protocols: how the prompt is written, how a model turn is parsed, how observations are shown.

A protocol is the grammar shared by the model and the agent loop. Two are registered:

- "tags" (default, Search-R1 / ParallelSearch lineage): reasoning in <think>…</think>, one or more
  independent sub-queries issued in ONE turn as `<search>q1 ## q2</search>`, results returned in one
  <information>…</information> block per sub-query, final answer in <answer>…</answer>.
- "function_call" (Qwen / Hermes chat models): `<tool_call>{"name": …, "arguments": {…}}</tool_call>`
  blocks, several in one turn run in parallel, results in <tool_response> blocks of a user message,
  final answer in <answer>…</answer>.

A turn ends on one of the protocol's stop strings (its closing tags, matched on the decoded text, so a
stock tokenizer may split them into several tokens and fuse them with the text before them) or on one of
the tokenizer's end-of-turn special tokens (eos, `<|im_end|>`). The engine keeps the tokens as sampled,
so the token that completes a stop string may carry characters past it (`>\n`); `parse` reads the turn
up to the end of its first stop string.

`parse` never raises: whatever the model wrote becomes a search, an answer or an invalid action (which
the loop answers with `corrective_observation`). What is simplified on purpose: the first complete
action block of a turn decides the action, text around it is free-form reasoning, and argument
validation is left to the tools (a bad argument becomes an error observation there).

    protocol = build_protocol("tags")
    prompt_ids = protocol.render_prompt(question, tokenizer)
    action = protocol.parse("<think>two facts</think><search>a ## b</search>")  # kind "search", 2 calls
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

from data.registry import Registry
from data.types import Question
from data.trajectory import ToolCall
from rollouts.tools import SearchTool, function_schema

ACTION_KINDS = ("search", "answer", "invalid")
PROMPT_STYLES = ("minimal", "compact", "full")
SUBQUERY_SEPARATOR = "##"

# The search tool's schema, as the tool executor describes it: a protocol built without the executor's
# schemas (a single-turn benchmark) renders the same prompt as one built by rollouts/environment.py.
SEARCH_TOOL_SCHEMA = function_schema(SearchTool)


@dataclass
class Action:
    """What one model turn asked for: tool calls ("search"), a final answer, or nothing valid."""

    kind: str  # "search" (one or more tool calls, run in parallel), "answer" or "invalid"
    calls: list[ToolCall] = field(default_factory=list)
    answer: str | None = None
    reason: str = ""  # why the action is invalid (for logs)

    @property
    def queries(self) -> list[str]:
        return [str(call.arguments.get("query", "")) for call in self.calls if call.name == "search"]


def search_calls(queries: list[str]) -> list[ToolCall]:
    return [ToolCall(name="search", arguments={"query": query}) for query in queries]


def observation_body(call: ToolCall) -> str:
    """The text a call shows to the model: its observation, or its error when it produced none."""
    if call.observation:
        return call.observation
    return f"Error: {call.error}" if call.error else "No results."


def apply_chat_template(tokenizer, messages: list[dict]) -> list[int]:
    """Prompt token ids ending with the assistant header; a plain Qwen-style layout without a template."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        text += "<|im_start|>assistant\n"
    return tokenizer.encode(text, add_special_tokens=False)


# Special tokens that end a chat message (ChatML / Qwen, Llama 3, Gemma, Phi-3): a turn ends on each one
# the tokenizer has as a single token, besides its eos token.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")


def single_token_ids(tokenizer, texts: tuple[str, ...]) -> set[int]:
    """The ids of those texts that this tokenizer encodes as exactly one token."""
    token_ids = set()
    for text in texts:
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) == 1:
            token_ids.add(encoded[0])
    return token_ids


def text_through_first_stop(text: str, stop_strings: tuple[str, ...]) -> str:
    """`text` up to the end of the first stop string in it (all of it when there is none)."""
    ends = [text.find(stop) + len(stop) for stop in stop_strings if stop and stop in text]
    return text[:min(ends)] if ends else text


class AgentProtocol(ABC):
    """Prompt rendering, stop conditions, turn parsing and observation rendering of one agent grammar."""

    name: str = ""
    stop_strings: tuple[str, ...] = ()  # texts that end a model turn, however the tokenizer splits them

    def __init__(self, prompt_style: str = "compact", tool_schemas: list[dict] | None = None):
        if prompt_style not in PROMPT_STYLES:
            raise ValueError(f"rollout.prompt_style {prompt_style!r} is not one of {PROMPT_STYLES}")
        self.prompt_style = prompt_style
        self.tool_schemas = tool_schemas or [SEARCH_TOOL_SCHEMA]

    def tool_names(self) -> list[str]:
        """Names of the tools this protocol's prompt offers (the configured ones when built by rollouts/environment.py)."""
        return [schema["function"]["name"] for schema in self.tool_schemas]

    def stop_token_ids(self, tokenizer) -> set[int]:
        """Token ids that end a turn: eos and the chat end-of-turn tokens (END_OF_TURN_TOKENS) of this tokenizer.

        A stop string that this vocabulary holds as one token (the tiny model's tags) is here too: its id
        ends the turn at the same token as the string match does, and an engine sees it without decoding.
        """
        stop_ids = single_token_ids(tokenizer, END_OF_TURN_TOKENS + self.stop_strings)
        if tokenizer.eos_token_id is not None:
            stop_ids.add(tokenizer.eos_token_id)
        return stop_ids

    def render_prompt(self, question: Question | str, tokenizer) -> list[int]:
        text = question.question if isinstance(question, Question) else str(question)
        return apply_chat_template(tokenizer, self.prompt_messages(text))

    def parse(self, turn_text: str) -> Action:
        """The action of one turn, read up to its first stop string; never raises (anything unexpected is invalid)."""
        try:
            text = turn_text if isinstance(turn_text, str) else str(turn_text)
            return self._parse(text_through_first_stop(text, self.stop_strings))
        except Exception as error:  # a parser bug must not kill a rollout: count it as an invalid turn
            return Action(kind="invalid", reason=f"unparseable turn ({type(error).__name__}: {error})")

    @abstractmethod
    def prompt_messages(self, question_text: str) -> list[dict]:
        """Chat messages (system/user) that instruct the model and ask the question."""

    @abstractmethod
    def _parse(self, turn_text: str) -> Action: ...

    @abstractmethod
    def render_action(self, action: Action, thought: str = "") -> str:
        """The text a model following this protocol writes for `action` (inverse of parse; used by SFT data)."""

    @abstractmethod
    def render_observation(self, calls: list[ToolCall], final: bool = False) -> str:
        """The text injected after a tool turn; with final=True it ends with the forced-answer cue."""

    @abstractmethod
    def corrective_observation(self, final: bool = False) -> str:
        """The text injected after an invalid turn; with final=True it ends with the forced-answer cue."""


PROTOCOLS: Registry[type[AgentProtocol]] = Registry("agent protocol")


def register_protocol(name: str) -> Callable[[type[AgentProtocol]], type[AgentProtocol]]:
    def decorator(protocol_class: type[AgentProtocol]) -> type[AgentProtocol]:
        PROTOCOLS.add(name, protocol_class)
        protocol_class.name = name
        return protocol_class

    return decorator


def build_protocol(name: str, prompt_style: str = "compact", tool_schemas: list[dict] | None = None) -> AgentProtocol:
    """The protocol registered as `name` (rollout.protocol)."""
    if name not in PROTOCOLS:
        raise ValueError(f"rollout.protocol {name!r} is not registered; valid protocols: {', '.join(sorted(PROTOCOLS))}")
    return PROTOCOLS[name](prompt_style=prompt_style, tool_schemas=tool_schemas)


# ----------------------------------------------------------------------------------------------
# "tags": <think> … <search> q1 ## q2 </search> … <information> … <answer> … </answer>
# ----------------------------------------------------------------------------------------------

TAGS_COMPACT_INSTRUCTION = (
    "Answer the question. Think inside <think> </think>. Search with <search> query </search>; "
    "put independent queries in one search, separated by ##: <search> query 1 ## query 2 </search>. "
    "Results come inside <information> </information>. Give the final answer inside <answer> </answer>."
)

TAGS_FULL_INSTRUCTION = (
    "Answer the given question. Reason inside <think> and </think> first, and again every time you get "
    "new information. When you lack knowledge, call the search engine with <search> query </search>; it "
    "returns the top passages between <information> and </information>. When the question needs several "
    "facts that do not depend on each other, split it into independent sub-queries and issue them together "
    "in ONE search, separated by ##, e.g. <search> query 1 ## query 2 ## query 3 </search>: they run in "
    "parallel and each gets its own <information> block. When a query needs the answer of another, search "
    "for them one after the other. You may search several times. When you need no more knowledge, give "
    "the answer inside <answer> and </answer> without explanation, e.g. <answer> Beijing </answer>."
)

FORCED_ANSWER_CUE = "No searches left: give your final answer now."
INVALID_ACTION_TEXT = "That was not a valid action: either search or give the final answer."

_TAGS_ACTION_PATTERN = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL)


@register_protocol("tags")
class TagsProtocol(AgentProtocol):
    stop_strings = ("</search>", "</answer>")

    def prompt_messages(self, question_text: str) -> list[dict]:
        if self.prompt_style == "minimal":  # a model SFT'd on the protocol needs no instruction
            return [{"role": "user", "content": f"Question: {question_text}"}]
        instruction = TAGS_FULL_INSTRUCTION if self.prompt_style == "full" else TAGS_COMPACT_INSTRUCTION
        return [{"role": "user", "content": f"{instruction}\nQuestion: {question_text}"}]

    def _parse(self, turn_text: str) -> Action:
        match = _TAGS_ACTION_PATTERN.search(turn_text)
        if match is None:
            return Action(kind="invalid", reason="no complete <search> or <answer> block")
        tag, body = match.group(1), match.group(2)
        if tag == "answer":
            answer = body.strip()
            return Action(kind="answer", answer=answer) if answer else Action(kind="invalid", reason="empty answer")
        queries = [query.strip() for query in body.split(SUBQUERY_SEPARATOR)]
        queries = [query for query in queries if query]
        if not queries:
            return Action(kind="invalid", reason="search without a query")
        return Action(kind="search", calls=search_calls(queries))

    def render_action(self, action: Action, thought: str = "") -> str:
        think = f"<think> {thought} </think>\n" if thought else ""
        if action.kind == "answer":
            return f"{think}<answer> {action.answer} </answer>"
        return f"{think}<search> {f' {SUBQUERY_SEPARATOR} '.join(action.queries)} </search>"

    def render_observation(self, calls: list[ToolCall], final: bool = False) -> str:
        if len(calls) == 1:
            blocks = [f"<information>{observation_body(calls[0])}</information>"]
        else:
            blocks = [
                f"<information>Query: {call.arguments.get('query', call.name)}\n{observation_body(call)}</information>"
                for call in calls
            ]
        cue = f"{FORCED_ANSWER_CUE}\n" if final else ""
        return "\n" + "\n".join(blocks) + "\n" + cue

    def corrective_observation(self, final: bool = False) -> str:
        return f"\n{INVALID_ACTION_TEXT}\n" + (f"{FORCED_ANSWER_CUE}\n" if final else "")


# ----------------------------------------------------------------------------------------------
# "function_call": <tool_call>{"name": "search", "arguments": {"query": "…"}}</tool_call> × N
# ----------------------------------------------------------------------------------------------

FUNCTION_CALL_COMPACT_INSTRUCTION = (
    'Answer the question. Call a tool with <tool_call>{"name": "search", "arguments": {"query": "..."}}'
    "</tool_call>; several calls in one turn run in parallel, so make independent queries in one turn. "
    "Results come inside <tool_response> </tool_response>. Give the final answer inside <answer> </answer>."
)

FUNCTION_CALL_FULL_INSTRUCTION = (
    "# Tools\n\nYou may call one or more functions to help answer the user's question.\n\n"
    "The available functions are described inside <tools></tools>:\n<tools>\n{schemas}\n</tools>\n\n"
    "For each call, write a JSON object with the function name and its arguments inside "
    '<tool_call></tool_call>:\n<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n'
    "</tool_call>\nCalls written in the same turn run in parallel: when the question needs several facts "
    "that do not depend on each other, request them all in one turn. When a query needs the result of "
    "another, make the calls in successive turns. When you know the answer, write it inside "
    "<answer> </answer> without explanation."
)

FUNCTION_CALL_FORCED_ANSWER_CUE = "No tool calls left: give your final answer now."

_TOOL_CALL_PATTERN = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_ANSWER_PATTERN = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def parse_tool_call_json(body: str) -> ToolCall | str:
    """A ToolCall from one block's JSON, or a string saying what is wrong with it."""
    try:
        payload = json.loads(body)
    except json.JSONDecodeError as error:
        return f"tool call is not valid JSON ({error.msg})"
    if not isinstance(payload, dict) or not isinstance(payload.get("name"), str) or not payload["name"]:
        return 'tool call needs a JSON object with a "name" string'
    arguments = payload.get("arguments", {})
    if isinstance(arguments, str):  # OpenAI-style: arguments serialised as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return "tool call arguments are a string that is not JSON"
    if not isinstance(arguments, dict):
        return 'tool call "arguments" must be a JSON object'
    return ToolCall(name=payload["name"], arguments=arguments)


def user_message(content: str) -> str:
    """A user message in the middle of the assistant's response, handing the turn back to the assistant."""
    return f"\n<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"


@register_protocol("function_call")
class FunctionCallProtocol(AgentProtocol):
    # Several calls may follow each other in one turn, so a tool-call turn ends with the message (the
    # tokenizer's end-of-turn token, e.g. <|im_end|>), not with </tool_call>.
    stop_strings = ("</answer>",)

    def prompt_messages(self, question_text: str) -> list[dict]:
        if self.prompt_style == "full":
            schemas = "\n".join(json.dumps(schema) for schema in self.tool_schemas)
            system = FUNCTION_CALL_FULL_INSTRUCTION.format(schemas=schemas)
            return [{"role": "system", "content": system}, {"role": "user", "content": question_text}]
        if self.prompt_style == "minimal":
            return [{"role": "user", "content": f"Question: {question_text}"}]
        return [{"role": "user", "content": f"{FUNCTION_CALL_COMPACT_INSTRUCTION}\nQuestion: {question_text}"}]

    def _parse(self, turn_text: str) -> Action:
        answer_match = _ANSWER_PATTERN.search(turn_text)
        call_matches = list(_TOOL_CALL_PATTERN.finditer(turn_text))
        if answer_match and (not call_matches or answer_match.start() < call_matches[0].start()):
            answer = answer_match.group(1).strip()
            return Action(kind="answer", answer=answer) if answer else Action(kind="invalid", reason="empty answer")
        if not call_matches:
            return Action(kind="invalid", reason="no complete <tool_call> or <answer> block")
        calls = []
        for match in call_matches:
            call_or_problem = parse_tool_call_json(match.group(1).strip())
            if isinstance(call_or_problem, str):
                return Action(kind="invalid", reason=call_or_problem)
            calls.append(call_or_problem)
        return Action(kind="search", calls=calls)

    def render_action(self, action: Action, thought: str = "") -> str:
        think = f"<think> {thought} </think>\n" if thought else ""
        if action.kind == "answer":
            return f"{think}<answer> {action.answer} </answer>"
        blocks = [
            f'<tool_call>{json.dumps({"name": call.name, "arguments": call.arguments})}</tool_call>'
            for call in action.calls
        ]
        return think + "\n".join(blocks) + "<|im_end|>"

    def render_observation(self, calls: list[ToolCall], final: bool = False) -> str:
        blocks = "\n".join(f"<tool_response>\n{observation_body(call)}\n</tool_response>" for call in calls)
        cue = f"\n{FUNCTION_CALL_FORCED_ANSWER_CUE}" if final else ""
        return user_message(blocks + cue)

    def corrective_observation(self, final: bool = False) -> str:
        cue = f"\n{FUNCTION_CALL_FORCED_ANSWER_CUE}" if final else ""
        return user_message("That was not a valid action: either call a tool or give the final answer." + cue)


__all__ = [
    "ACTION_KINDS",
    "END_OF_TURN_TOKENS",
    "Action",
    "AgentProtocol",
    "PROTOCOLS",
    "SEARCH_TOOL_SCHEMA",
    "build_protocol",
    "register_protocol",
    "text_through_first_stop",
    "TagsProtocol",
    "FunctionCallProtocol",
]
