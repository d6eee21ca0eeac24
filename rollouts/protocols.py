"""Agent protocols: how the prompt is written, how a model turn is parsed, how observations are shown.

A protocol is the grammar shared by the model and the agent loop. Two are registered:

- "tags" (default, Search-R1 / ParallelSearch lineage): reasoning in <think>…</think>, one or more
  independent sub-queries issued in ONE turn as `<search>q1 ## q2</search>`, results returned in one
  <information>…</information> block per sub-query, final answer in <answer>…</answer>. As in Search-R1,
  the whole episode is one assistant message: observations continue it inline.
- "function_call" (chat models with native function calling): `<tool_call>{"name": …, "arguments": {…}}
  </tool_call>` blocks, several in one turn run in parallel, each result a tool message, final answer in
  <answer>…</answer>. It speaks the model's own chat format (rollouts/chat_format.py): with a template that
  renders tools (Qwen2.5), the full prompt passes the tool schemas as `tools=` and the template lists
  them; the expert's tool calls are written as the template writes an assistant's `tool_calls`; results
  are rendered as the template renders `tool` messages (Qwen2.5: <tool_response> blocks in a user turn).
  With a template that defines none of that, the protocol's own Hermes-style spelling (the same blocks)
  is given in the system message and results come as a user message of <tool_response> blocks.

Prompts always go through the tokenizer's chat template (`apply_chat_template`). A turn ends on one of the
protocol's stop strings (its closing tags, matched on the decoded text, so a stock tokenizer may split
them into several tokens and fuse them with the text before them) or on one of the tokenizer's
end-of-turn tokens (the one its template writes after an assistant message, eos, and `<|im_end|>`-like
markers of the common families). The engine keeps the tokens as sampled, so the token that completes a
stop string may carry characters past it (`>\n`); `parse` reads the turn up to the end of its first stop
string. The tokens of the model's turns are never re-tokenised: an observation is rendered as text that
follows them and only that text is tokenised.

`parse` never raises: whatever the model wrote becomes a search, an answer or an invalid action (which
the loop answers with the corrective observation). What is simplified on purpose: the first complete
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
from typing import Any, Callable

from data.registry import Registry
from data.types import Question
from data.trajectory import ToolCall, Turn
from rollouts.chat_format import ChatFormat
from rollouts.tools import SearchTool, function_schema

ACTION_KINDS = ("search", "answer", "invalid")
# "auto" is decided by the experiment config (rl/config.py: "full" for a model given in model.path, else
# "compact"); a protocol built on its own, with no model to look at, reads it as "compact".
PROMPT_STYLES = ("auto", "minimal", "compact", "full")
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


# Special tokens that end a chat message (ChatML / Qwen, Llama 3, Gemma, Phi-3): a turn ends on each one
# the tokenizer has as a single token, besides its eos token and the one its chat template writes.
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


def has_chat_template_interface(tokenizer: Any) -> bool:
    """A real tokenizer (transformers), as opposed to a test double that only encodes."""
    return hasattr(tokenizer, "apply_chat_template")


class AgentProtocol(ABC):
    """Prompt rendering, stop conditions, turn parsing and observation rendering of one agent grammar."""

    name: str = ""
    stop_strings: tuple[str, ...] = ()  # texts that end a model turn, however the tokenizer splits them

    def __init__(self, prompt_style: str = "compact", tool_schemas: list[dict] | None = None):
        if prompt_style not in PROMPT_STYLES:
            raise ValueError(f"rollout.prompt_style {prompt_style!r} is not one of {PROMPT_STYLES}")
        self.prompt_style = "compact" if prompt_style == "auto" else prompt_style
        self.tool_schemas = tool_schemas or [SEARCH_TOOL_SCHEMA]

    def tool_names(self) -> list[str]:
        """Names of the tools this protocol's prompt offers (the configured ones when built by rollouts/environment.py)."""
        return [schema["function"]["name"] for schema in self.tool_schemas]

    def stop_token_ids(self, tokenizer) -> set[int]:
        """Token ids that end a turn: eos, the end-of-turn token of the tokenizer's chat template, and the
        chat end-of-turn tokens (END_OF_TURN_TOKENS) this tokenizer has.

        A stop string that this vocabulary holds as one token (the tiny model's tags) is here too: its id
        ends the turn at the same token as the string match does, and an engine sees it without decoding.
        """
        stop_ids = single_token_ids(tokenizer, END_OF_TURN_TOKENS + self.stop_strings)
        if tokenizer.eos_token_id is not None:
            stop_ids.add(tokenizer.eos_token_id)
        if has_chat_template_interface(tokenizer) and ChatFormat.of(tokenizer).end_of_turn_id is not None:
            stop_ids.add(ChatFormat.of(tokenizer).end_of_turn_id)
        return stop_ids

    def render_prompt(self, question: Question | str, tokenizer) -> list[int]:
        """Prompt token ids through the tokenizer's chat template, ending with the assistant header."""
        return ChatFormat.of(tokenizer).prompt_ids(self.prompt_messages(question_text(question)))

    def observation(self, turn: Turn, tokenizer: Any, final: bool = False) -> str:
        """The text the loop appends after `turn` when it did not answer; only this text is tokenised.

        The results of the turn's calls (render_observation), or after an invalid turn the corrective
        text; with final=True it ends with the forced-answer cue. By default the text continues the
        assistant's message (Search-R1 style); a protocol whose observations are chat messages renders
        them with the tokenizer's chat template here.
        """
        if turn.calls:
            return self.render_observation(turn.calls, final=final)
        return self.corrective_observation(final=final)

    def action_token_ids(self, action: Action, tokenizer: Any, thought: str = "") -> list[int]:
        """The tokens of one model turn that performs `action`, after `thought` in <think> if any (what the SFT
        expert writes).

        render_action's text tokenised on its own (as a model may generate it), then the tokenizer's
        end-of-turn token when the text ends on none of the stop strings: the engine ends such a turn there.
        """
        return self.turn_token_ids(self.render_action(action, thought), tokenizer)

    def turn_token_ids(self, text: str, tokenizer: Any) -> list[int]:
        token_ids = tokenizer.encode(text, add_special_tokens=False)
        if not (self.stop_strings and text.endswith(self.stop_strings)):
            end_of_turn_id = ChatFormat.of(tokenizer).end_of_turn_id
            if end_of_turn_id is not None:
                token_ids.append(end_of_turn_id)
        return token_ids

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
        """The text of a tool turn's results; with final=True it ends with the forced-answer cue."""

    @abstractmethod
    def corrective_observation(self, final: bool = False) -> str:
        """The text answering an invalid turn; with final=True it ends with the forced-answer cue."""


def question_text(question: Question | str) -> str:
    return question.question if isinstance(question, Question) else str(question)


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

# The system message of the full prompt when the chat template lists the tools itself (`tools=`, Qwen2.5):
# the template says how to call them, this says how to use them.
FUNCTION_CALL_TOOLS_INSTRUCTION = (
    "Answer the user's question with the tools. Calls written in the same turn run in parallel: when the "
    "question needs several facts that do not depend on each other, request them all in one turn. When a "
    "query needs the result of another, make the calls in successive turns. When you know the answer, "
    "write it inside <answer> </answer> without explanation."
)

FUNCTION_CALL_FORCED_ANSWER_CUE = "No tool calls left: give your final answer now."
FUNCTION_CALL_INVALID_ACTION_TEXT = "That was not a valid action: either call a tool or give the final answer."

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


def call_records(calls: list[ToolCall]) -> list[dict]:
    return [{"name": call.name, "arguments": call.arguments} for call in calls]


@register_protocol("function_call")
class FunctionCallProtocol(AgentProtocol):
    # Several calls may follow each other in one turn, so a tool-call turn ends with the message (the
    # tokenizer's end-of-turn token, e.g. <|im_end|>), not with </tool_call>.
    stop_strings = ("</answer>",)

    def render_prompt(self, question: Question | str, tokenizer) -> list[int]:
        """Through the chat template; the full prompt passes the tools as `tools=` to a template that lists them."""
        chat = ChatFormat.of(tokenizer)
        if self.prompt_style == "full" and chat.takes_tools:
            messages = [{"role": "system", "content": FUNCTION_CALL_TOOLS_INSTRUCTION},
                        {"role": "user", "content": question_text(question)}]
            return chat.prompt_ids(messages, tools=self.tool_schemas)
        return chat.prompt_ids(self.prompt_messages(question_text(question)))

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
        """The protocol's own spelling; a tool-call turn then ends on the end-of-turn token (action_token_ids)."""
        think = f"<think> {thought} </think>\n" if thought else ""
        if action.kind == "answer":
            return f"{think}<answer> {action.answer} </answer>"
        blocks = [f"<tool_call>{json.dumps(record)}</tool_call>" for record in call_records(action.calls)]
        return think + "\n".join(blocks)

    def action_token_ids(self, action: Action, tokenizer: Any, thought: str = "") -> list[int]:
        """Tool calls without a thought as the chat template writes an assistant's `tool_calls` when it does (the
        model's native format, Qwen2.5: `<tool_call>\\n{...}\\n</tool_call>`) and this protocol reads them back;
        else render_action."""
        if action.kind == "search" and not thought:
            native = ChatFormat.of(tokenizer).tool_call_text(call_records(action.calls))
            if native is not None and call_records(self.parse(native).calls) == call_records(action.calls):
                return self.turn_token_ids(native, tokenizer)
        return super().action_token_ids(action, tokenizer, thought)

    def render_observation(self, calls: list[ToolCall], final: bool = False) -> str:
        """The user message holding the results, for a chat template that defines no tool messages."""
        blocks = "\n".join(f"<tool_response>\n{observation_body(call)}\n</tool_response>" for call in calls)
        return blocks + (f"\n{FUNCTION_CALL_FORCED_ANSWER_CUE}" if final else "")

    def corrective_observation(self, final: bool = False) -> str:
        return FUNCTION_CALL_INVALID_ACTION_TEXT + (f"\n{FUNCTION_CALL_FORCED_ANSWER_CUE}" if final else "")

    def observation_messages(self, calls: list[ToolCall], chat: ChatFormat, final: bool = False) -> list[dict]:
        """The chat messages after a turn: one `tool` message per call where the template defines them (the
        forced-answer cue then a user message of its own), else one user message."""
        if calls and chat.renders_tool_messages:
            messages = [{"role": "tool", "name": call.name, "content": observation_body(call)} for call in calls]
            return messages + ([{"role": "user", "content": FUNCTION_CALL_FORCED_ANSWER_CUE}] if final else [])
        content = self.render_observation(calls, final) if calls else self.corrective_observation(final)
        return [{"role": "user", "content": content}]

    def observation(self, turn: Turn, tokenizer: Any, final: bool = False) -> str:
        """The messages after the turn as the chat template renders them, up to the next assistant header."""
        chat = ChatFormat.of(tokenizer)
        turn_ended = bool(chat.end_of_turn) and turn.text.endswith(chat.end_of_turn)
        return chat.continuation(self.observation_messages(turn.calls, chat, final), turn_ended=turn_ended)


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
