"""A tokenizer's chat template, read the way the agent loop needs it: prompts, end of turn, tool messages.

Stock chat models are prompted through their own chat template (`apply_chat_template`), end a message on
their own end-of-turn token, and read tool results the way their template renders tool messages.
`ChatFormat.of(tokenizer)` reads all of that off the template once, by rendering small probe
conversations whose message contents are sentinels it finds again in the text:

- `prompt_ids(messages, tools)`: the messages up to the assistant header, with `tools=` when the template
  renders tools (Qwen2.5 lists them in its system message; a template that ignores them gets none);
- `end_of_turn` / `end_of_turn_id`: the single token the template writes right after an assistant
  message's content (`<|im_end|>` for Qwen and ChatML, `<|eot_id|>` Llama 3, `<end_of_turn>` Gemma,
  `<|end|>` Phi-3), else the eos token;
- `continuation(messages, turn_ended)`: the text the template puts between the end of a model turn and
  the next assistant header when `messages` (tool results, a user message) come in between. It renders a
  probe conversation with and without them and takes the difference (TRL's GRPO tool loop does the same,
  `_get_tool_suffix_ids`). The model's own turn is never re-rendered: its tokens stay as generated and
  only this text is tokenised. A turn that did not end on the end-of-turn token (cut at its budget) gets
  the template's end of message first, so the context stays a well-formed conversation;
- `renders_tool_messages`: whether the template defines how a `tool` message looks (Qwen2.5: a
  `<tool_response>` block inside a user turn) rather than writing every role the same way;
- `tool_call_text(calls)`: how the template writes an assistant message's `tool_calls`, when it writes
  them (Qwen2.5 / Hermes: `<tool_call>\\n{"name": …, "arguments": …}\\n</tool_call>`), else None.

A tokenizer without a chat template gets DEFAULT_CHAT_TEMPLATE: ChatML (`<|im_start|>role\\n…<|im_end|>`),
the layout of Qwen and of fanout-rl's tiny model, with a warning, since a model never trained on it must
learn it (the SFT warm-start teaches it). That needs `<|im_start|>` and `<|im_end|>` to be tokens of its
vocabulary (Qwen base models have them); a tokenizer without them is refused with a ChatTemplateError
saying how to give the model folder a template (a `chat_template.jinja` file next to the tokenizer).

What it simplifies on purpose: a template is assumed to render earlier messages the same whatever
follows them (true of the common families; a template that is not raises a ChatTemplateError naming what
differs), and a template that refuses a system message (Gemma) gets the system text at the head of the
first user message.

    chat = ChatFormat.of(tokenizer)
    prompt_ids = chat.prompt_ids([{"role": "user", "content": "Who founded Bemo Hall?"}])
    observation = chat.continuation([{"role": "tool", "content": "Doc 1 ..."}], turn_ended=True)
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from data.errors import ConfigError

logger = logging.getLogger(__name__)

# ChatML, as Qwen and the tiny model write it: what a tokenizer without a chat template gets.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Probe message contents: texts no template writes by itself, found again in the rendered conversation.
_USER_PROBE = "fanout-probe-user-7a1c"
_ASSISTANT_PROBE = "fanout-probe-assistant-7a1c"
_TOOL_PROBE = "fanout-probe-tool-7a1c"
_PROBE_ROLE = "fanoutproberole"  # a role no template knows: what the template writes for any role
_PROBE_TOOL_NAME = "fanout_probe_tool"


class ChatTemplateError(ConfigError):
    """A chat template that cannot be used to play episodes (it names what is wrong and what to do)."""


def _probe_conversation() -> list[dict]:
    return [{"role": "user", "content": _USER_PROBE}, {"role": "assistant", "content": _ASSISTANT_PROBE}]


class ChatFormat:
    """What the agent loop reads off one tokenizer's chat template (see the module docstring)."""

    _cache: "weakref.WeakKeyDictionary[Any, tuple[str, ChatFormat]]" = weakref.WeakKeyDictionary()

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        own_template = getattr(tokenizer, "chat_template", None)
        self.uses_default_template = not own_template
        self.template: str = own_template or DEFAULT_CHAT_TEMPLATE
        if self.uses_default_template:
            self._check_default_template_fits()
        self.takes_tools = _PROBE_TOOL_NAME in self.render(
            [{"role": "user", "content": _USER_PROBE}], add_generation_prompt=True, tools=[_probe_tool_schema()])
        # what the template writes after an assistant message's content when the conversation ends there
        self._after_assistant = self._after_probe(self.render(_probe_conversation(), add_generation_prompt=False))
        self.end_of_turn, self.end_of_turn_id = self._find_end_of_turn()
        self.renders_tool_messages = self._defines_tool_role()

    @classmethod
    def of(cls, tokenizer: Any) -> "ChatFormat":
        """The chat format of `tokenizer`, read once per tokenizer (again if its chat template changes)."""
        try:
            template, chat_format = cls._cache.get(tokenizer, (None, None))
        except TypeError:  # not weak-referenceable: read it every time
            return cls(tokenizer)
        if chat_format is None or template != getattr(tokenizer, "chat_template", None):
            chat_format = cls(tokenizer)
            cls._cache[tokenizer] = (getattr(tokenizer, "chat_template", None), chat_format)
        return chat_format

    # ------------------------------------------------------------------ rendering

    def render(self, messages: list[dict], add_generation_prompt: bool, tools: list[dict] | None = None) -> str:
        """The conversation as text; `tools` only reach a template that renders them."""
        extra = {"tools": tools} if tools else {}
        return self.tokenizer.apply_chat_template(messages, chat_template=self.template, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt, **extra)

    def prompt_ids(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """Token ids of `messages` up to and including the assistant header (the prompt of an episode)."""
        tools = tools if tools and self.takes_tools else None
        try:
            text = self.render(messages, add_generation_prompt=True, tools=tools)
        except Exception as error:  # jinja2's TemplateError, raised e.g. by templates without a system role
            if not messages or messages[0]["role"] != "system":
                raise ChatTemplateError(f"the chat template cannot render the prompt: {error}") from error
            try:
                text = self.render(system_into_first_user(messages), add_generation_prompt=True, tools=tools)
            except Exception:
                raise ChatTemplateError(f"the chat template cannot render the prompt: {error}") from error
        return self.tokenizer.encode(text, add_special_tokens=False)

    def continuation(self, messages: list[dict], turn_ended: bool = True) -> str:
        """The text from the end of a model turn to the next assistant header, with `messages` in between.

        turn_ended: the turn ended on the end-of-turn token (then the model wrote it, and the text starts
        after it); otherwise the text starts with the template's end of the assistant message.
        """
        closed = self._after_assistant
        following = self._after_probe(self.render(_probe_conversation() + list(messages), add_generation_prompt=True))
        # What the model writes of its message's end: up to the end-of-turn token (a template may add more
        # after it when the conversation ends there, e.g. Phi-3's eos, which is not part of the message).
        if self.end_of_turn and self.end_of_turn in closed:
            closed = closed[:closed.index(self.end_of_turn) + len(self.end_of_turn)]
        if not following.startswith(closed):
            raise ChatTemplateError(
                f"the chat template ends an assistant message differently when messages follow it "
                f"({closed!r} alone, {following[:len(closed) + 20]!r}...), so tool results cannot be appended "
                "to the tokens as generated; use a template that keeps earlier messages as they were")
        if turn_ended and self.end_of_turn and self.end_of_turn in closed:
            return following[len(closed):]
        return following

    def tool_call_text(self, calls: list[dict]) -> str | None:
        """How the template writes an assistant turn holding these calls ({"name", "arguments"}), or None.

        The text the model writes after the assistant header, up to its end-of-turn token; None when the
        template writes no tool calls (it ignores `tool_calls`).
        """
        user = [{"role": "user", "content": _USER_PROBE}]
        header = self.render(user, add_generation_prompt=True)
        message = {"role": "assistant", "content": "",
                   "tool_calls": [{"type": "function", "function": dict(call)} for call in calls]}
        try:
            written = self.render(user + [message], add_generation_prompt=False)
        except Exception:  # a template that refuses tool calls writes none
            return None
        if not written.startswith(header):
            return None
        text = written[len(header):]
        if self.end_of_turn in text:
            text = text[:text.index(self.end_of_turn)]
        return text if text.strip() and calls and all(call["name"] in text for call in calls) else None

    # ------------------------------------------------------------------ probes

    def _check_default_template_fits(self) -> None:
        """ChatML needs its markers as tokens of the vocabulary; without them there is no default to give."""
        added = {token.content for token in getattr(self.tokenizer, "added_tokens_decoder", {}).values()}
        if not {"<|im_start|>", "<|im_end|>"} <= added:
            raise ChatTemplateError(
                "the tokenizer has no chat template, and the default one (ChatML) needs <|im_start|> and "
                "<|im_end|> tokens, which it lacks: give the model folder a chat template (a chat_template.jinja "
                "file, or tokenizer.chat_template set before save_pretrained), e.g. the one of the instruct "
                "model of the same family")
        logger.warning("the tokenizer has no chat template: prompts use fanout-rl's default, ChatML "
                       "(<|im_start|>role ... <|im_end|>); set tokenizer.chat_template to use another")

    def _after_probe(self, text: str) -> str:
        position = text.find(_ASSISTANT_PROBE)
        if position < 0:
            raise ChatTemplateError("the chat template does not write an assistant message's content; "
                                    "the agent loop needs a template that renders assistant turns")
        return text[position + len(_ASSISTANT_PROBE):]

    def _find_end_of_turn(self) -> tuple[str, int | None]:
        """The first added/special token the template writes after an assistant message's content, else eos."""
        closed = self._after_assistant
        candidates = {token.content: token_id for token_id, token in
                      getattr(self.tokenizer, "added_tokens_decoder", {}).items() if token.content}
        found = [(closed.find(text), -len(text), text) for text in candidates if text in closed]
        if found:
            _, _, text = min(found)
            return text, candidates[text]
        eos = getattr(self.tokenizer, "eos_token", None)
        return (eos or ""), getattr(self.tokenizer, "eos_token_id", None)

    def _defines_tool_role(self) -> bool:
        """True when a `tool` message is written otherwise than any role would be (the template defines it)."""
        try:
            tool_text = self.continuation([{"role": "tool", "content": _TOOL_PROBE, "name": "search"}])
        except Exception:
            return False
        if _TOOL_PROBE not in tool_text:
            return False
        try:
            any_role_text = self.continuation([{"role": _PROBE_ROLE, "content": _TOOL_PROBE}])
        except Exception:  # unknown roles are refused: "tool" is one the template knows
            return True
        return tool_text != any_role_text.replace(_PROBE_ROLE, "tool")


def system_into_first_user(messages: list[dict]) -> list[dict]:
    """The system message's text moved to the head of the first user message (templates without a system role)."""
    system, rest = messages[0]["content"], [dict(message) for message in messages[1:]]
    for message in rest:
        if message["role"] == "user":
            message["content"] = f"{system}\n\n{message['content']}"
            return rest
    return [{"role": "user", "content": system}] + rest


def _probe_tool_schema() -> dict:
    return {"type": "function", "function": {"name": _PROBE_TOOL_NAME, "description": "probe",
                                             "parameters": {"type": "object", "properties": {}}}}


__all__ = ["ChatFormat", "ChatTemplateError", "DEFAULT_CHAT_TEMPLATE", "system_into_first_user"]
