"""Retrieval behind one batched interface: in-process BM25 (bm25s) or a Search-R1-compatible HTTP server.

    retriever = build_retriever(config.retriever, documents=world.documents)
    hits = retriever.search(["When was Varlo Tenmis born?", "Who directed Orvane Road?"], topk=3)
    hits[0][0].id, hits[0][0].score

`Retriever.search` takes a batch of queries and returns the top-k documents of each, best first, so
one call serves every sub-query of a rollout round. The BM25 index (English stopwords, Snowball
stemmer from PyStemmer) is built once and saved next to the corpus under a fingerprint of its
contents, so a changed corpus never reuses a stale index. `HttpRetriever` speaks the Search-R1
`/retrieve` API (see data/server.py) with a timeout and retries, so a cluster can share one server.

What it simplifies on purpose: lexical retrieval only (no dense e5 index); the HTTP client is
synchronous (the tool layer runs it in a worker thread).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import bm25s
import httpx
import Stemmer

from data.config import RetrieverConfig
from data.corpus import corpus_fingerprint, load_corpus
from data.errors import ConfigError, DataError
from data.registry import Registry

# bm25s sets its own logger to DEBUG when imported, which prints a line per index build; warnings only.
logging.getLogger("bm25s").setLevel(logging.WARNING)

BM25_INDEX_FORMAT = "bm25s-en-snowball-v1"  # part of the index key: change it when tokenisation changes


class RetrievalError(RuntimeError):
    """The retriever could not answer (server down, bad response). Tools turn it into an error observation."""


@dataclass
class Document:
    id: str
    contents: str  # title line + "\n" + text (wiki-18 convention)
    score: float = 0.0

    def to_row(self) -> dict:
        return {"id": self.id, "contents": self.contents}


class Retriever(Protocol):
    def search(self, queries: list[str], topk: int) -> list[list[Document]]:
        """Top-k documents for each query, best first (one list per query, same order).

        A retriever that can restrict a search to a corpus partition takes `partition=NAME` as well."""
        ...


def partition_of(doc_id: str) -> str:
    """The corpus partition of a document: its id's prefix before "/" ("w3/person-0001" -> "w3"), else ""."""
    prefix, separator, _ = doc_id.partition("/")
    return prefix if separator else ""


# ----------------------------------------------------------------------------------------------
# BM25 (bm25s)
# ----------------------------------------------------------------------------------------------


class BM25Retriever:
    """BM25 over an in-memory corpus; with index_dir, the index is cached in `index_dir/<fingerprint>/`."""

    def __init__(self, documents: list[dict], index_dir: str | os.PathLike | None = None):
        if not documents:
            raise DataError("cannot build a BM25 index over an empty corpus")
        self.documents = documents
        self.stemmer = Stemmer.Stemmer("english")
        self._lock = threading.Lock()  # PyStemmer is not thread-safe; servers search from a thread pool
        self.fingerprint = corpus_fingerprint(documents)
        self.index_path = Path(index_dir) / f"{BM25_INDEX_FORMAT}-{self.fingerprint}" if index_dir else None
        self.index = self._load_or_build()
        self._partitions: dict[str, BM25Retriever] = {}  # built on first use, in memory

    def _tokenize(self, texts: list[str], return_ids: bool):
        return bm25s.tokenize(texts, stopwords="en", stemmer=self.stemmer, return_ids=return_ids,
                              show_progress=False)

    def _load_or_build(self) -> bm25s.BM25:
        if self.index_path is not None and (self.index_path / "params.index.json").is_file():
            return bm25s.BM25.load(str(self.index_path), show_progress=False)
        index = bm25s.BM25()
        index.index(self._tokenize([document["contents"] for document in self.documents], return_ids=True),
                    show_progress=False)
        if self.index_path is not None:
            self._save(index)
        return index

    def _save(self, index: bm25s.BM25) -> None:
        """Save into a temporary folder, then rename: concurrent builders never see half an index."""
        self.index_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(prefix=".bm25-", dir=self.index_path.parent))
        index.save(str(temporary), show_progress=False)
        try:
            os.rename(temporary, self.index_path)
        except OSError:  # another process saved the same index first
            shutil.rmtree(temporary, ignore_errors=True)

    def partition(self, name: str) -> "BM25Retriever":
        """A retriever over the documents of one partition (data.retriever.partition_of)."""
        with self._lock:
            if name not in self._partitions:
                documents = [document for document in self.documents if partition_of(document["id"]) == name]
                if not documents:
                    raise RetrievalError(f"the corpus has no partition {name!r} (no document id starts with "
                                         f"'{name}/')")
                self._partitions[name] = BM25Retriever(documents)
            return self._partitions[name]

    def search(self, queries: list[str], topk: int, partition: str | None = None) -> list[list[Document]]:
        """`partition`: search only that partition's documents (None: the whole corpus)."""
        if partition is not None:
            return self.partition(partition).search(queries, topk)
        if not queries:
            return []
        k = max(1, min(topk, len(self.documents)))
        with self._lock:
            query_tokens = self._tokenize(list(queries), return_ids=False)
            indices_QK, scores_QK = self.index.retrieve(query_tokens, k=k, show_progress=False, n_threads=0)
        return [
            [Document(self.documents[int(i)]["id"], self.documents[int(i)]["contents"], float(score))
             for i, score in zip(indices_K, scores_K)]
            for indices_K, scores_K in zip(indices_QK, scores_QK)
        ]


# ----------------------------------------------------------------------------------------------
# HTTP client of the Search-R1 /retrieve API
# ----------------------------------------------------------------------------------------------


def parse_retrieve_item(item: dict) -> Document:
    """One result item: {"document": {...}, "score": s} (return_scores) or the document itself."""
    document = item.get("document", item)
    return Document(str(document["id"]), document["contents"], float(item.get("score", 0.0)))


class HttpRetriever:
    """Client of a retrieval server: POST {"queries", "topk", "return_scores": true} to `url`."""

    def __init__(self, url: str, timeout_s: float = 10.0, retries: int = 2, backoff_s: float = 0.2):
        self.url = url
        self.retries = retries
        self.backoff_s = backoff_s
        self.client = httpx.Client(timeout=timeout_s)

    def _post(self, payload: dict) -> dict:
        last_problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                response = self.client.post(self.url, json=payload)
            except httpx.TransportError as error:  # connection refused, timeouts: worth a retry
                last_problem = f"{type(error).__name__}: {error}"
                continue
            if response.status_code >= 500:
                last_problem = f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            if response.status_code >= 400:  # our request is wrong: retrying will not help
                raise RetrievalError(f"{self.url} rejected the request (HTTP {response.status_code}): "
                                     f"{response.text[:300]}")
            return response.json()
        raise RetrievalError(f"{self.url} failed after {self.retries + 1} attempts ({last_problem}); "
                             "is the server running (fanout serve-retriever --corpus ...)?")

    def search(self, queries: list[str], topk: int, partition: str | None = None) -> list[list[Document]]:
        if partition is not None:
            raise RetrievalError(f"a question asks to search corpus partition {partition!r}, which the "
                                 "Search-R1 /retrieve API cannot express; use retriever.backend=bm25")
        if not queries:
            return []
        body = self._post({"queries": list(queries), "topk": topk, "return_scores": True})
        try:
            results = body["result"]
            documents = [[parse_retrieve_item(item) for item in per_query] for per_query in results]
        except (KeyError, TypeError, ValueError) as error:
            raise RetrievalError(
                f"{self.url} answered in an unexpected shape ({error!r}); expected "
                '{"result": [[{"document": {"id", "contents"}, "score"}, ...], ...]}') from None
        if len(documents) != len(queries):
            raise RetrievalError(
                f"{self.url} returned {len(documents)} result lists for {len(queries)} queries")
        return documents

    def close(self) -> None:
        self.client.close()


# ----------------------------------------------------------------------------------------------
# Factory, chosen by retriever.backend
# ----------------------------------------------------------------------------------------------

RetrieverBuilder = Callable[..., Retriever]
RETRIEVER_BUILDERS: Registry[RetrieverBuilder] = Registry("retriever backend")


def register_retriever(backend: str) -> Callable[[RetrieverBuilder], RetrieverBuilder]:
    return RETRIEVER_BUILDERS.register(backend)


def default_index_dir(corpus_path: str | os.PathLike) -> Path:
    return Path(corpus_path).parent / "bm25_index"


@register_retriever("bm25")
def build_bm25(retriever_config: RetrieverConfig, documents: list[dict] | None, corpus_path: str | None) -> Retriever:
    if documents is None:
        if not corpus_path:
            raise DataError("the bm25 retriever needs documents or a corpus path (data.corpus_path)")
        documents = load_corpus(corpus_path)
    index_dir = retriever_config.index_dir or (default_index_dir(corpus_path) if corpus_path else None)
    return BM25Retriever(documents, index_dir=index_dir)


@register_retriever("http")
def build_http(retriever_config: RetrieverConfig, documents: list[dict] | None, corpus_path: str | None) -> Retriever:
    return HttpRetriever(retriever_config.url, timeout_s=retriever_config.timeout_s,
                         retries=retriever_config.retries)


def build_retriever(
    retriever_config: RetrieverConfig, documents: list[dict] | None = None, corpus_path: str | None = None
) -> Retriever:
    """The retriever named by `retriever_config.backend` (data.config.RetrieverConfig)."""
    builder = RETRIEVER_BUILDERS.get(retriever_config.backend)
    if builder is None:
        raise ConfigError(f"key 'retriever.backend' is {retriever_config.backend!r}; "
                          f"registered backends: {', '.join(sorted(RETRIEVER_BUILDERS))}")
    return builder(retriever_config, documents, corpus_path)
