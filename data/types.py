"""The question record shared by every stage: generated world, benchmark loaders, rollouts, rewards, eval."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

STRUCTURES = ("parallel", "sequential", "single")
ENVIRONMENT_KEY = "environment"  # Question.metadata: the environment the question belongs to ("apps", ...)
QA_ENVIRONMENT = "qa"  # the environment of a question that names none: question answering with search
# Question.metadata: the part of the tools' world a question is about. Its tool calls carry it: a search stays
# in that corpus partition (data/world.py, train_worlds), the apps server starts the episode from that world's
# state (data/apps/world.py, train_worlds). Absent: the whole corpus, the base world.
PARTITION_KEY = "corpus_partition"


def question_environment(question: "Question") -> str:
    """The environment a question is played and scored in: metadata["environment"], else "qa"."""
    return question.metadata.get(ENVIRONMENT_KEY) or QA_ENVIRONMENT


@dataclass
class Question:
    """One question with its gold answers and, when known, its structure and gold sub-questions.

    structure: "parallel" (independent lookups that can be issued in one round), "sequential"
    (a chain where one answer feeds the next query) or "single" (one lookup).
    sub_questions: gold sub-queries in the order an expert would issue them; for sequential questions
    later ones may contain the answer of earlier ones already filled in.
    supporting_doc_ids: corpus ids of the documents that answer the sub-questions (same order), if known.
    """

    id: str
    question: str
    answers: list[str]
    structure: str = "single"
    sub_questions: list[str] = field(default_factory=list)
    supporting_doc_ids: list[str] = field(default_factory=list)
    source: str = "world"
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.structure not in STRUCTURES:
            raise ValueError(f"question {self.id!r}: structure {self.structure!r} is not one of {STRUCTURES}")
        if not self.question.strip():
            raise ValueError(f"question {self.id!r}: empty question text")
        if not self.answers or not all(isinstance(answer, str) and answer.strip() for answer in self.answers):
            raise ValueError(f"question {self.id!r}: needs at least one non-empty gold answer, got {self.answers!r}")

    def to_row(self) -> dict:
        """The contract row format (`golden_answers`, Search-R1/FlashRAG style) plus our extra fields."""
        row = asdict(self)
        row["golden_answers"] = row.pop("answers")
        return row

    @classmethod
    def from_row(cls, row: dict) -> "Question":
        row = dict(row)
        answers = row.pop("golden_answers", None)
        if answers is None:
            answers = row.pop("answers")
        known = {name for name in cls.__dataclass_fields__}
        extra = {key: row.pop(key) for key in list(row) if key not in known}
        question = cls(answers=list(answers), **row)
        question.metadata.update(extra)
        return question
