"""Loaders for real QA benchmarks stored locally in the Search-R1 / FlashRAG row format.

A row is `{"id", "question", "golden_answers": [...], "metadata": {...}}` (the Search-R1 parquet
layout, whose answers sit in `reward_model.ground_truth.target`, is read too). Each dataset name maps
to a function that decides the question's structure, following ParallelSearch: HotpotQA
`comparison` -> parallel, `bridge` -> sequential; 2WikiMultiHopQA `comparison`/`bridge_comparison`
-> parallel, `inference`/`compositional` -> sequential; MuSiQue -> sequential; NQ, TriviaQA, PopQA,
Bamboogle -> single. New datasets register a mapper with `@register_dataset("name")`.

    questions = load_questions("data/hotpotqa_dev.jsonl", "hotpotqa")
    loaded = load_question_file("data/nq_dev.parquet", "nq", on_malformed="skip")   # + loaded.num_skipped

A malformed row (no question, no or empty golden answers, wrong types) raises DataError naming the
file and line (JSONL) or row number (Parquet), or with on_malformed="skip" is skipped and counted.
A file that yields no question at all (empty, or every row skipped) raises DataError naming it.
JSON Lines are read line by line so the exact line can be named (datasets' JSON builder fails on the
whole file at the first schema mismatch); Parquet goes through `datasets.load_dataset("parquet")`.

What it simplifies on purpose: documents and gold passages in metadata are kept as they are, not used.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from data.corpus import iter_jsonl, load_corpus  # noqa: F401  (load_corpus is part of this module's API)
from data.errors import DataError
from data.registry import Registry
from data.types import Question

logger = logging.getLogger(__name__)

ON_MALFORMED_CHOICES = ("error", "skip")


# ----------------------------------------------------------------------------------------------
# Structure of a question, per dataset
# ----------------------------------------------------------------------------------------------

StructureMapper = Callable[[dict], str]
STRUCTURE_MAPPERS: Registry[StructureMapper] = Registry("dataset structure mapper")


def register_dataset(*names: str) -> Callable[[StructureMapper], StructureMapper]:
    """Register the structure mapper of one or more dataset names (lower case); duplicates are refused."""
    return STRUCTURE_MAPPERS.register(*names)


def _question_type(row: dict) -> str:
    metadata = row.get("metadata")
    value = metadata.get("type") if isinstance(metadata, dict) else None
    return str(value if value is not None else row.get("type", "")).lower()


@register_dataset("nq", "triviaqa", "popqa", "bamboogle")
def single_hop(row: dict) -> str:
    return "single"


@register_dataset("hotpotqa")
def hotpotqa_structure(row: dict) -> str:
    return "parallel" if _question_type(row) == "comparison" else "sequential"


@register_dataset("2wikimultihopqa")
def two_wiki_structure(row: dict) -> str:
    return "parallel" if _question_type(row) in ("comparison", "bridge_comparison") else "sequential"


@register_dataset("musique")
def musique_structure(row: dict) -> str:
    return "sequential"


def structure_mapper(dataset_name: str) -> StructureMapper:
    mapper = STRUCTURE_MAPPERS.get(dataset_name.lower())
    if mapper is None:
        registered = ", ".join(sorted(STRUCTURE_MAPPERS))
        raise DataError(f"unknown dataset {dataset_name!r}: registered names are {registered} (use one of "
                        "them as the key in data.train_files / data.eval_files, or register a mapper with "
                        "data.loaders.register_dataset)")
    return mapper


# ----------------------------------------------------------------------------------------------
# Reading rows
# ----------------------------------------------------------------------------------------------

RowReader = Callable[[Path], Iterator[tuple[int, dict]]]
ROW_READERS: Registry[RowReader] = Registry("row reader")  # keyed by file suffix


def register_reader(*suffixes: str) -> Callable[[RowReader], RowReader]:
    return ROW_READERS.register(*suffixes)


@register_reader(".jsonl", ".json")
def read_jsonl_rows(path: Path) -> Iterator[tuple[int, dict]]:
    yield from iter_jsonl(path)


@register_reader(".parquet")
def read_parquet_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(row number from 1, row) through datasets; the table is kept in memory, its cache is temporary."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from datasets import load_dataset

    with tempfile.TemporaryDirectory(prefix="fanout-parquet-") as cache_dir:
        try:
            table = load_dataset("parquet", data_files=str(path), split="train", keep_in_memory=True,
                                 cache_dir=cache_dir)
        except Exception as error:  # pyarrow / datasets raise many types for a broken file
            message = f"cannot read Parquet file ({type(error).__name__}: {error})"
            raise DataError(message, path=str(path)) from None
    for row_index, row in enumerate(table):
        yield row_index + 1, row


# ----------------------------------------------------------------------------------------------
# Validation and conversion
# ----------------------------------------------------------------------------------------------


def _golden_answers(row: dict):
    if "golden_answers" in row:
        return row["golden_answers"]
    reward_model = row.get("reward_model")  # Search-R1's processed parquet rows
    if isinstance(reward_model, dict) and isinstance(reward_model.get("ground_truth"), dict):
        return reward_model["ground_truth"].get("target")
    return None


def row_to_question(row: dict, dataset_name: str, row_number: int, mapper: StructureMapper) -> Question:
    """A Question from one row; raises ValueError saying what is wrong (the caller adds file and line)."""
    text = row.get("question")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"'question' must be a non-empty string, got {text!r}")
    answers = _golden_answers(row)
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, (list, tuple)) or not answers:
        raise ValueError(f"'golden_answers' must be a non-empty list of strings, got {answers!r}")
    if not all(isinstance(answer, (str, int, float)) and not isinstance(answer, bool) for answer in answers):
        raise ValueError(f"'golden_answers' must hold strings, got {answers!r}")
    answers = [str(answer) for answer in answers if str(answer).strip()]
    if not answers:
        raise ValueError("'golden_answers' holds only empty strings")
    metadata = row.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise ValueError(f"'metadata' must be an object, got {type(metadata).__name__}")
    row_id = row.get("id")
    has_id = isinstance(row_id, (str, int)) and str(row_id) != ""
    question_id = str(row_id) if has_id else f"{dataset_name}-{row_number}"
    return Question(id=question_id, question=text.strip(), answers=answers, structure=mapper(row),
                    source=dataset_name, metadata=dict(metadata or {}))


@dataclass
class LoadedQuestions:
    path: str
    dataset_name: str
    questions: list[Question] = field(default_factory=list)
    num_skipped: int = 0
    skipped: list[str] = field(default_factory=list)  # "file:line: reason" of the first skipped rows


def load_question_file(
    path: str | os.PathLike, dataset_name: str, on_malformed: str = "error"
) -> LoadedQuestions:
    """All questions of one benchmark file, with the count (and first reasons) of skipped malformed rows."""
    if on_malformed not in ON_MALFORMED_CHOICES:
        raise DataError(f"on_malformed is {on_malformed!r}; valid choices: {', '.join(ON_MALFORMED_CHOICES)}")
    path = Path(path)
    reader = ROW_READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"unsupported file type {path.suffix!r}; supported: {', '.join(sorted(ROW_READERS))}",
                        path=str(path))
    if not path.is_file():
        raise DataError("file does not exist (check data.train_files / data.eval_files)", path=str(path))
    mapper = structure_mapper(dataset_name)
    loaded = LoadedQuestions(path=str(path), dataset_name=dataset_name)
    for row_number, row in reader(path):
        try:
            loaded.questions.append(row_to_question(row, dataset_name, row_number, mapper))
        except ValueError as error:
            if on_malformed == "error":
                raise DataError(f"malformed row: {error} (set data.on_malformed_row=skip to skip such rows)",
                                str(path), row_number) from None
            loaded.num_skipped += 1
            if len(loaded.skipped) < 20:
                loaded.skipped.append(f"{path}:{row_number}: {error}")
    if not loaded.questions:
        reason = (f"all {loaded.num_skipped} rows are malformed (first: {loaded.skipped[0]})" if loaded.num_skipped
                  else "the file has no rows")
        raise DataError(f"no questions: {reason}", path=str(path))
    if loaded.num_skipped:
        logger.warning("%s: skipped %d malformed rows (first: %s)", path, loaded.num_skipped,
                       loaded.skipped[0])
    return loaded


def load_questions(path: str | os.PathLike, dataset_name: str, on_malformed: str = "error") -> list[Question]:
    """Questions of one benchmark file (see load_question_file for the count of skipped rows)."""
    return load_question_file(path, dataset_name, on_malformed).questions
