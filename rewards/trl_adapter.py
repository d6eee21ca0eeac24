"""Use TRL reward functions here, and our rewards in TRL's GRPOTrainer.

TRL's reward signature is `fn(prompts, completions, **columns) -> list[float | None]`: one call per
batch, completions as strings or chat message lists, every dataset column passed as a list (one entry
per completion), plus `completion_ids`, `trainer_state`, `log_extra`, `log_metric`.

    # a TRL-style function as one of our components
    register_reward("length_penalty")(from_trl(my_trl_length_penalty))

    # our reward (a registered name, "total", or a function with our signature) as a TRL reward_funcs entry
    trainer = GRPOTrainer(..., reward_funcs=[to_trl("total", config.reward), to_trl("format", config.reward)])

Both wrappers are small callable objects (picklable, with the `__name__` TRL logs under). Simplified
on purpose: `from_trl` passes the question text as the prompt (a Trajectory keeps prompt token ids,
not the rendered prompt), and `to_trl` rebuilds the turns from the completion alone, cutting a text at
observation blocks and a chat at assistant messages, so tool-call records (and the gold-document
credit that needs them) are absent.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from data.types import STRUCTURES, Question
from rewards.compose import safe_reward_value, score_trajectory
from rewards.parsing import PROTOCOLS, split_model_segments
from rewards.presets import config_for_question, resolve_preset
from rewards.registry import get_reward
from data.trajectory import Trajectory, Turn

_ANSWER_COLUMNS = ("golden_answers", "answers", "answer")


def _ignore(*args: Any, **kwargs: Any) -> None:
    """Stands in for TRL's log_extra / log_metric callbacks."""


def _callable_name(function: Callable) -> str:
    return getattr(function, "__name__", type(function).__name__)


# ----------------------------------------------------------------------------------------------
# TRL -> ours
# ----------------------------------------------------------------------------------------------


def question_columns(question: Question) -> dict[str, list]:
    """The dataset columns TRL would pass for this question, each as a one-element list."""
    row = question.to_row()
    extra = row.pop("metadata", {}) or {}
    row["answers"] = row["golden_answers"]
    columns = {key: value for key, value in extra.items() if key not in row}
    columns.update(row)
    return {key: [value] for key, value in columns.items()}


def completion_text(trajectory: Trajectory) -> str:
    """The model's response as TRL would see it: the decoded response, else the turns joined."""
    return trajectory.response_text or "".join(turn.text for turn in trajectory.turns)


class FromTrlReward:
    """Our reward signature `(trajectory, config) -> float | None` around a TRL reward function."""

    def __init__(self, trl_function: Callable[..., list]) -> None:
        self.trl_function = trl_function
        self.__name__ = _callable_name(trl_function)

    def __call__(self, trajectory: Trajectory, config: Any) -> float | None:
        outputs = self.trl_function(
            prompts=[trajectory.question.question],
            completions=[completion_text(trajectory)],
            completion_ids=[list(trajectory.response_ids)],
            trainer_state=None,
            log_extra=_ignore,
            log_metric=_ignore,
            **question_columns(trajectory.question),
        )
        if not isinstance(outputs, (list, tuple)) or len(outputs) != 1:
            raise ValueError(
                f"TRL reward {self.__name__!r} returned {outputs!r}; expected a list with one value"
            )
        return None if outputs[0] is None else float(outputs[0])


def from_trl(trl_function: Callable[..., list]) -> FromTrlReward:
    """Wrap `fn(prompts, completions, **columns) -> list[float | None]` as one of our rewards."""
    return FromTrlReward(trl_function)


# ----------------------------------------------------------------------------------------------
# Ours -> TRL
# ----------------------------------------------------------------------------------------------


def _message_text(message: Any) -> str:
    """Text of a chat message, including TRL/OpenAI structured tool calls rendered as <tool_call> blocks."""
    if not isinstance(message, dict):
        return str(message)
    content = message.get("content") or ""
    if isinstance(content, list):  # content parts: [{"type": "text", "text": …}, …]
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    text = str(content)
    for tool_call in message.get("tool_calls") or []:
        function = tool_call.get("function", tool_call) if isinstance(tool_call, dict) else {}
        function = function if isinstance(function, dict) else {}
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                pass
        call = json.dumps({"name": function.get("name"), "arguments": arguments}, default=str)
        text += f"<tool_call>{call}</tool_call>"
    return text


def _turns_from_completion(completion: Any, protocol: str) -> tuple[list[Turn], str]:
    """Model turns and full response text of a TRL completion (a string or a list of chat messages)."""
    if isinstance(completion, str):
        segments = split_model_segments(completion, PROTOCOLS[protocol].observation_delimiters)
        return [Turn(text=segment) for segment in segments], completion
    messages = [message for message in completion or [] if isinstance(message, dict)]
    turns = [Turn(text=_message_text(message)) for message in messages if message.get("role") == "assistant"]
    return turns, "".join(_message_text(message) for message in messages)


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    user_messages = [m for m in prompt or [] if isinstance(m, dict) and m.get("role") == "user"]
    return _message_text(user_messages[-1]) if user_messages else ""


def question_from_columns(prompt: Any, columns: dict[str, Any], index: int) -> Question:
    """The Question of row `index` of a TRL batch (dataset columns are lists, one entry per completion)."""
    row = {
        key: value[index]
        for key, value in columns.items()
        if isinstance(value, (list, tuple)) and len(value) > index
    }
    answer_column = next((name for name in _ANSWER_COLUMNS if row.get(name) is not None), None)
    if answer_column is None:
        raise ValueError(
            f"to_trl: the dataset has no gold answers; add a column named one of {_ANSWER_COLUMNS} "
            f"(columns received: {sorted(columns)})"
        )
    golds = row[answer_column]
    golds = [str(gold) for gold in golds] if isinstance(golds, (list, tuple)) else [str(golds)]
    structure = row.get("structure") or "single"
    if structure not in STRUCTURES:
        raise ValueError(f"to_trl: row {index} has structure {structure!r}; valid values: {STRUCTURES}")
    text = (
        _prompt_text(prompt).strip() or str(row.get("question") or "").strip() or "(question text not given)"
    )
    return Question(
        id=str(row.get("id", index)),
        question=text,
        answers=golds,
        structure=structure,
        sub_questions=list(row.get("sub_questions") or []),
        supporting_doc_ids=list(row.get("supporting_doc_ids") or []),
    )


def trajectory_from_completion(
    prompt: Any, completion: Any, columns: dict[str, Any], index: int = 0, protocol: str = "tags"
) -> Trajectory:
    """A Trajectory rebuilt from a TRL prompt/completion pair, for scoring with our rewards."""
    turns, response_text = _turns_from_completion(completion, protocol)
    question = question_from_columns(prompt, columns, index)
    return Trajectory(
        question=question, prompt_ids=[], turns=turns, response_text=response_text, protocol=protocol
    )


class ToTrlReward:
    """A TRL `reward_funcs` entry scoring completions with one of our rewards (or the weighted total)."""

    def __init__(self, reward: str | Callable, reward_config: Any, protocol: str = "tags") -> None:
        if isinstance(reward, str) and reward != "total":
            get_reward(reward)  # fail now, listing the registered names, not at the first training step
        PROTOCOLS[protocol]  # noqa: B018  (fail now: a KeyError naming the registered protocols)
        self.reward, self.reward_config, self.protocol = reward, reward_config, protocol
        self.__name__ = reward if isinstance(reward, str) else _callable_name(reward)

    def _score(self, trajectory: Trajectory) -> float | None:
        if self.reward == "total":
            return score_trajectory(trajectory, self.reward_config).total
        reward_function = get_reward(self.reward) if isinstance(self.reward, str) else self.reward
        value, _ = safe_reward_value(
            self.__name__, reward_function, trajectory,
            resolve_preset(config_for_question(self.reward_config, trajectory.question)),
        )
        return value

    def __call__(self, prompts: list, completions: list, **columns: Any) -> list[float | None]:
        return [
            self._score(trajectory_from_completion(prompt, completion, columns, index, self.protocol))
            for index, (prompt, completion) in enumerate(zip(prompts, completions))
        ]


def to_trl(reward: str | Callable, reward_config: Any, protocol: str = "tags") -> ToTrlReward:
    """A TRL reward from a registered name, "total" (the weighted sum) or a (trajectory, config) function."""
    return ToTrlReward(reward, reward_config, protocol)
