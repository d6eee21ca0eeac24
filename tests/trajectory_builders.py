"""Trajectories written by hand for reward and eval tests (no model): QA turns in the tags or function-call
protocol, and apps episodes whose rounds of calls and recorded end state are given. Importable as
`from trajectory_builders import build_trajectory` from any folder under tests/ (like tiny_models)."""

from __future__ import annotations

import json

from data.apps.tools import APP_TOOLS
from data.apps.world import APPS_SOURCE_NAME
from data.trajectory import ToolCall, Trajectory, Turn
from data.types import Question


def build_trajectory(
    turn_texts: list[str],
    answers=("Paris",),
    structure: str = "single",
    sub_questions=(),
    supporting_doc_ids=(),
    retrieved=None,
    protocol: str = "tags",
    invalid_turns=(),
    question_text: str = "Where is the Eiffel Tower?",
) -> Trajectory:
    """A trajectory whose turns are `turn_texts`; `retrieved[i]`: doc ids that turn i's search returned."""
    question = Question(
        id="q",
        question=question_text,
        answers=list(answers),
        structure=structure,
        sub_questions=list(sub_questions),
        supporting_doc_ids=list(supporting_doc_ids),
    )
    turns = []
    for index, text in enumerate(turn_texts):
        doc_ids = (retrieved or {}).get(index, [])
        calls = (
            [ToolCall(name="search", arguments={"query": "q"}, retrieved_doc_ids=list(doc_ids))]
            if doc_ids
            else []
        )
        turns.append(Turn(text=text, calls=calls, invalid=index in invalid_turns))
    return Trajectory(question=question, prompt_ids=[], turns=turns, protocol=protocol)


def call_turn(calls: list[dict]) -> Turn:
    text = "\n".join(f"<tool_call>{json.dumps(call)}</tool_call>" for call in calls) + "<|im_end|>"
    return Turn(text=text, calls=[ToolCall(call["name"], dict(call["arguments"])) for call in calls])


def apps_trajectory(question, rounds: list[list[dict]], answer: str, final_state: dict | None) -> Trajectory:
    turns = [call_turn(calls) for calls in rounds] + [Turn(text=f"<answer> {answer} </answer>", answer=answer)]
    return Trajectory(question=question, prompt_ids=[], turns=turns, protocol="function_call",
                      tool_names=APP_TOOLS.names(), final_answer=answer,
                      episode_states={} if final_state is None else {APPS_SOURCE_NAME: final_state})
