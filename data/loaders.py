"""Loaders for QA datasets stored locally as JSON Lines or Parquet: named benchmarks, or any file by columns.

Named benchmarks are in the Search-R1 / FlashRAG row format: `{"id", "question", "golden_answers": [...],
"metadata": {...}}` (the Search-R1 parquet layout, whose answers sit in `reward_model.ground_truth.target`,
is read too). Each dataset name maps to a function that decides the question's structure, following
ParallelSearch: HotpotQA `comparison` -> parallel, `bridge` -> sequential; 2WikiMultiHopQA
`comparison`/`bridge_comparison` -> parallel, `inference`/`compositional` -> sequential; MuSiQue ->
sequential; NQ, TriviaQA, PopQA, Bamboogle -> single. New datasets register a mapper with
`@register_dataset("name")`.

Any other file is read by the generic loader through a column mapping (`data.columns: {name: {role:
column}}`): the roles are `question`, `answers` (a list, or one string), and optionally `id`, `structure`
(parallel / sequential / single, or HotpotQA / 2Wiki type names such as comparison and bridge) and
`sub_questions` (a list of strings, or of objects with a "question" field as MuSiQue's decomposition). A
column may be a dotted path into nested objects (`metadata.type`). Unmapped roles read the default
columns `id`, `question`, `golden_answers`; without a structure column a question is `single`, or
`sequential` when it has two or more sub-questions (a chain is the safe guess: fan-out is never demanded
where it may be wrong).

    questions = load_questions("data/hotpotqa_dev.jsonl", "hotpotqa")
    loaded = load_question_file("data/nq_dev.parquet", "nq", on_malformed="skip")   # + loaded.num_skipped
    mine = load_questions("my_qa.jsonl", "my_qa", columns={"question": "query", "answers": "answer"})

A malformed row (no question, no or empty golden answers, wrong types) raises DataError naming the
file and line (JSONL) or row number (Parquet), or with on_malformed="skip" is skipped and counted.
A file that yields no question at all (empty, or every row skipped) raises DataError naming it.
JSON Lines are read line by line so the exact line can be named (datasets' JSON builder fails on the
whole file at the first schema mismatch); Parquet goes through `datasets.load_dataset("parquet")`.

What it simplifies on purpose: documents and gold passages in metadata are kept as they are, not used.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from data.corpus import iter_jsonl, load_corpus  # noqa: F401  (load_corpus is part of this module's API)
from data.errors import ConfigError, DataError
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
                        "them as the key in data.train_files / data.eval_files, give its columns in "
                        f"data.columns.{dataset_name} for the generic loader, or register a mapper with "
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


def checked_text(text: Any, column: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"'{column}' must be a non-empty string, got {text!r}")
    return text.strip()


def checked_answers(answers: Any, column: str) -> list[str]:
    """Gold answers as non-empty strings (one string is one answer)."""
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, (list, tuple)) or not answers:
        raise ValueError(f"'{column}' must be a non-empty list of strings, got {answers!r}")
    if not all(isinstance(answer, (str, int, float)) and not isinstance(answer, bool) for answer in answers):
        raise ValueError(f"'{column}' must hold strings, got {answers!r}")
    answers = [str(answer) for answer in answers if str(answer).strip()]
    if not answers:
        raise ValueError(f"'{column}' holds only empty strings")
    return answers


def question_id_of(row_id: Any, dataset_name: str, row_number: int) -> str:
    """The row's id, or a stable one from the dataset name and row number."""
    has_id = isinstance(row_id, (str, int)) and not isinstance(row_id, bool) and str(row_id) != ""
    return str(row_id) if has_id else f"{dataset_name}-{row_number}"


def checked_metadata(row: dict) -> dict:
    metadata = row.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise ValueError(f"'metadata' must be an object, got {type(metadata).__name__}")
    return dict(metadata or {})


def row_to_question(row: dict, dataset_name: str, row_number: int, mapper: StructureMapper) -> Question:
    """A Question from one row of a named benchmark; raises ValueError saying what is wrong (the caller adds
    file and line)."""
    text = checked_text(row.get("question"), "question")
    answers = checked_answers(_golden_answers(row), "golden_answers")
    metadata = checked_metadata(row)
    return Question(id=question_id_of(row.get("id"), dataset_name, row_number), question=text, answers=answers,
                    structure=mapper(row), source=dataset_name, metadata=metadata)


# ----------------------------------------------------------------------------------------------
# The generic loader: any file through a column mapping
# ----------------------------------------------------------------------------------------------

COLUMN_ROLES = ("id", "question", "answers", "structure", "sub_questions")
DEFAULT_COLUMNS = {"id": "id", "question": "question", "answers": "golden_answers"}
# Values a structure column may hold: ours, and the HotpotQA / 2WikiMultiHopQA question types.
STRUCTURE_NAMES = {
    "parallel": "parallel", "comparison": "parallel", "bridge_comparison": "parallel",
    "sequential": "sequential", "bridge": "sequential", "compositional": "sequential", "inference": "sequential",
    "single": "single",
}


def check_column_mapping(columns: dict[str, str], dataset_name: str) -> dict[str, str]:
    """The full {role: column} mapping (defaults filled in); ConfigError naming an unknown role."""
    unknown = sorted(set(columns) - set(COLUMN_ROLES))
    if unknown:
        raise ConfigError(f"key 'data.columns.{dataset_name}': unknown role(s) {unknown}; the roles are "
                          f"{', '.join(COLUMN_ROLES)} (each maps to a column of the file)")
    return {**DEFAULT_COLUMNS, **columns}


def column_value(row: dict, column: str) -> Any:
    """row[column], or the value at a dotted path into nested objects (`metadata.type`); None if absent."""
    if column in row:
        return row[column]
    node: Any = row
    for part in column.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def checked_sub_questions(value: Any, column: str) -> list[str]:
    """A list of strings, or of objects with a "question" field (MuSiQue's question_decomposition)."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"'{column}' must be a list of strings, got {type(value).__name__}")
    texts = [item.get("question") if isinstance(item, dict) else item for item in value]
    if not all(isinstance(text, str) and text.strip() for text in texts):
        raise ValueError(f"'{column}' must hold non-empty strings (or objects with a 'question'), got {value!r}")
    return [text.strip() for text in texts]


def mapped_structure(value: Any, column: str, sub_questions: list[str]) -> str:
    if value is None:
        return "sequential" if len(sub_questions) >= 2 else "single"
    structure = STRUCTURE_NAMES.get(str(value).strip().lower())
    if structure is None:
        raise ValueError(f"'{column}' is {value!r}; valid values: {', '.join(STRUCTURE_NAMES)}")
    return structure


def single_as_list(value: Any) -> Any:
    """One answer written as a bare number (`"answer": 1873`) is a list of one."""
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def mapped_row_to_question(row: dict, dataset_name: str, row_number: int, columns: dict[str, str]) -> Question:
    """A Question from one row read through `columns` ({role: column}, defaults filled in)."""
    sub_questions = (checked_sub_questions(column_value(row, columns["sub_questions"]), columns["sub_questions"])
                     if "sub_questions" in columns else [])
    structure = (mapped_structure(column_value(row, columns["structure"]), columns["structure"], sub_questions)
                 if "structure" in columns else mapped_structure(None, "", sub_questions))
    return Question(
        id=question_id_of(column_value(row, columns["id"]), dataset_name, row_number),
        question=checked_text(column_value(row, columns["question"]), columns["question"]),
        answers=checked_answers(single_as_list(column_value(row, columns["answers"])), columns["answers"]),
        structure=structure, sub_questions=sub_questions, source=dataset_name, metadata=checked_metadata(row),
    )


@dataclass
class LoadedQuestions:
    path: str
    dataset_name: str
    questions: list[Question] = field(default_factory=list)
    num_skipped: int = 0
    skipped: list[str] = field(default_factory=list)  # "file:line: reason" of the first skipped rows


def load_question_file(
    path: str | os.PathLike, dataset_name: str, on_malformed: str = "error", columns: dict[str, str] | None = None
) -> LoadedQuestions:
    """All questions of one file, with the count (and first reasons) of skipped malformed rows.

    columns: {role: column} for the generic loader (data.columns.<dataset_name>); None: `dataset_name` must be
    a registered benchmark.
    """
    if on_malformed not in ON_MALFORMED_CHOICES:
        raise DataError(f"on_malformed is {on_malformed!r}; valid choices: {', '.join(ON_MALFORMED_CHOICES)}")
    path = Path(path)
    reader = ROW_READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"unsupported file type {path.suffix!r}; supported: {', '.join(sorted(ROW_READERS))}",
                        path=str(path))
    if not path.is_file():
        raise DataError("file does not exist (check data.train_files / data.eval_files)", path=str(path))
    if columns is not None:
        mapping = check_column_mapping(columns, dataset_name)
        convert = functools.partial(mapped_row_to_question, columns=mapping)
    else:
        convert = functools.partial(row_to_question, mapper=structure_mapper(dataset_name))
    loaded = LoadedQuestions(path=str(path), dataset_name=dataset_name)
    for row_number, row in reader(path):
        try:
            loaded.questions.append(convert(row, dataset_name, row_number))
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


def load_questions(path: str | os.PathLike, dataset_name: str, on_malformed: str = "error",
                   columns: dict[str, str] | None = None) -> list[Question]:
    """Questions of one file (see load_question_file for the columns and the count of skipped rows)."""
    return load_question_file(path, dataset_name, on_malformed, columns).questions
