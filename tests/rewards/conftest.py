"""Builders for the reward tests: questions and trajectories written by hand, no model involved."""

from __future__ import annotations

import pytest

from data.types import Question
from data.trajectory import ToolCall, Trajectory, Turn


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


@pytest.fixture
def make_trajectory():
    return build_trajectory
