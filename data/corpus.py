"""Wiki-style corpora: JSON Lines of `{"id", "contents"}` rows, the wiki-18 convention of Search-R1/FlashRAG.

`contents` is a title line, a newline, then the passage text. This module reads and writes such
files with errors that name the file and line, fingerprints a corpus (so a BM25 index on disk is
reused only for the exact same documents) and formats retrieved passages the way Search-R1 shows
them to the model: `Doc 1(Title: X) text`.

What it simplifies on purpose: the whole corpus is held in memory as a list of dicts (fine up to a
few million passages; a 21M-passage wiki dump wants a retrieval server on a bigger machine).

    documents = load_corpus("world/corpus.jsonl")
    print(format_passages(documents[:3], max_passage_chars=300))
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from data.errors import DataError


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, row) for every non-blank line; a line that is not a JSON object raises DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file does not exist (check the path in your config)", path=str(path))
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                message = f"not valid JSON ({error.msg} at column {error.colno})"
                raise DataError(message, str(path), line_number) from None
            if not isinstance(row, dict):
                message = f"expected a JSON object per line, got {type(row).__name__}"
                raise DataError(message, str(path), line_number)
            yield line_number, row


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Write rows atomically (temp file + rename), so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(temporary, path)
    return path


def check_document(row: dict, path: str, line: int) -> dict:
    """A corpus row as {"id": str, "contents": str}, or DataError naming what is missing."""
    if "contents" not in row or not isinstance(row["contents"], str):
        message = f"corpus row needs a string 'contents' (title line + text); keys present: {sorted(row)}"
        raise DataError(message, path, line)
    if "id" not in row or not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool):
        message = f"corpus row needs an 'id' (string or integer); keys present: {sorted(row)}"
        raise DataError(message, path, line)
    return {"id": str(row["id"]), "contents": row["contents"]}


def load_corpus(path: str | os.PathLike) -> list[dict]:
    """Rows {"id": str, "contents": str} of a JSONL corpus; a bad row raises DataError (file:line)."""
    documents = [check_document(row, str(path), line) for line, row in iter_jsonl(path)]
    if not documents:
        raise DataError("corpus is empty (expected JSON Lines of {\"id\", \"contents\"})", path=str(path))
    return documents


def check_corpus(path: str | os.PathLike) -> int:
    """Validate every row of a JSONL corpus without holding it in memory; returns the number of documents.

    For a driver that hands the corpus to other processes: a bad row fails here, naming file and line.
    """
    count = 0
    for line, row in iter_jsonl(path):
        check_document(row, str(path), line)
        count += 1
    if not count:
        raise DataError("corpus is empty (expected JSON Lines of {\"id\", \"contents\"})", path=str(path))
    return count


def write_corpus(path: str | os.PathLike, documents: Iterable[dict]) -> Path:
    rows = ({"id": document["id"], "contents": document["contents"]} for document in documents)
    return write_jsonl(path, rows)


def corpus_fingerprint(documents: Iterable[dict]) -> str:
    """A short hash of ids and contents: equal fingerprints mean the same corpus in the same order."""
    digest = hashlib.sha256()
    for document in documents:
        digest.update(str(document["id"]).encode("utf-8") + b"\0")
        digest.update(document["contents"].encode("utf-8") + b"\n")
    return digest.hexdigest()[:16]


def split_title(contents: str) -> tuple[str, str]:
    """(title, text) of a wiki-18 `contents` string; wiki-18 titles carry double quotes, which are dropped."""
    title, _, text = contents.partition("\n")
    return title.strip().strip('"'), text.strip()


def truncate_text(text: str, max_chars: int) -> str:
    """Cut at the last word boundary before max_chars and mark the cut with '...' (max_chars <= 0: no cut)."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    cut = text[:max_chars].rsplit(" ", 1)[0] if " " in text[:max_chars] else text[:max_chars]
    return cut.rstrip() + "..."


def format_passages(documents: Iterable, max_passage_chars: int = 0) -> str:
    """Search-R1's passage layout, one per line: `Doc 1(Title: X) text` (dicts or objects with .contents)."""
    lines = []
    for rank, document in enumerate(documents, start=1):
        contents = document["contents"] if isinstance(document, dict) else document.contents
        title, text = split_title(contents)
        lines.append(f"Doc {rank}(Title: {title}) {truncate_text(text, max_passage_chars)}")
    return "\n".join(lines)
