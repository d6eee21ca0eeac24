"""BM25 retrieval: ranking on a hand-made corpus, batching, the on-disk index cache, the backend registry."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import bm25s
import pytest

from data.corpus import write_corpus
from data.config import RetrieverConfig
from data.errors import ConfigError
from data.retriever import BM25Retriever, build_retriever, register_retriever

DOCUMENTS = [
    {"id": "person-0", "contents": "Varlo Tenmis\nVarlo Tenmis was born in Quenbridge in 1850."},
    {"id": "city-0", "contents": "Quenbridge\nQuenbridge is a city in the Velmaria region. Founded in 1432."},
    {"id": "film-0", "contents": "Orvane Road\nOrvane Road is a 1954 film directed by Varlo Tenmis."},
    {"id": "company-0", "contents": "Drelmor Works\nDrelmor Works was founded in 1901 by Sela Marrow."},
]


def test_bm25_ranks_the_entity_document_first_and_scores_descend():
    retriever = BM25Retriever(DOCUMENTS)
    (born, founded, directed) = retriever.search(
        ["When was Varlo Tenmis born?", "When was Quenbridge founded?", "Who directed Orvane Road?"], topk=3)
    assert [born[0].id, founded[0].id, directed[0].id] == ["person-0", "city-0", "film-0"]
    for hits in (born, founded, directed):
        assert len(hits) == 3
        assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
    assert born[0].contents == DOCUMENTS[0]["contents"]


def test_batched_search_equals_one_query_at_a_time():
    retriever = BM25Retriever(DOCUMENTS)
    queries = ["Varlo Tenmis", "Drelmor Works founder", "Velmaria region", "nothing matches zzz"]
    batched = retriever.search(queries, topk=2)
    one_by_one = [retriever.search([query], topk=2)[0] for query in queries]
    assert [[(h.id, h.score) for h in hits] for hits in batched] == [
        [(h.id, h.score) for h in hits] for hits in one_by_one]


def test_concurrent_searches_from_threads_match_serial_results():
    retriever = BM25Retriever(DOCUMENTS)
    queries = [f"{name} {word}" for name in ("Varlo Tenmis", "Quenbridge", "Orvane Road", "Drelmor Works")
               for word in ("born", "founded", "directed", "region")]
    serial = [[hit.id for hit in hits] for hits in retriever.search(queries, topk=2)]
    def search_one(query: str) -> list[str]:
        return [hit.id for hit in retriever.search([query], topk=2)[0]]

    with ThreadPoolExecutor(max_workers=8) as pool:
        threaded = list(pool.map(search_one, queries))
    assert threaded == serial


def test_topk_is_clamped_to_the_corpus_and_empty_batches_are_fine():
    retriever = BM25Retriever(DOCUMENTS)
    assert len(retriever.search(["Varlo"], topk=50)[0]) == len(DOCUMENTS)
    assert retriever.search([], topk=3) == []


def test_index_is_saved_under_the_corpus_fingerprint_and_loaded_back(tmp_path, monkeypatch):
    first = BM25Retriever(DOCUMENTS, index_dir=tmp_path)
    saved = list(tmp_path.iterdir())
    assert len(saved) == 1 and first.fingerprint in saved[0].name
    expected = first.search(["When was Varlo Tenmis born?"], topk=4)

    def refuse_to_index(self, *args, **kwargs):
        raise AssertionError("the saved index must be loaded, not rebuilt")

    monkeypatch.setattr(bm25s.BM25, "index", refuse_to_index)
    loaded = BM25Retriever(DOCUMENTS, index_dir=tmp_path)
    assert [(h.id, h.score) for h in loaded.search(["When was Varlo Tenmis born?"], topk=4)[0]] == [
        (h.id, h.score) for h in expected[0]]
    monkeypatch.undo()
    changed = DOCUMENTS[:3] + [{"id": "company-0", "contents": "Drelmor Works\nFounded in 1902."}]
    assert BM25Retriever(changed, index_dir=tmp_path).fingerprint != first.fingerprint
    assert len(list(tmp_path.iterdir())) == 2


def test_build_retriever_by_backend_name(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl", DOCUMENTS)
    from_path = build_retriever(RetrieverConfig(backend="bm25"), corpus_path=str(corpus))
    assert from_path.search(["Orvane Road"], topk=1)[0][0].id == "film-0"
    assert (tmp_path / "bm25_index").is_dir()  # default index location: next to the corpus
    from_documents = build_retriever(RetrieverConfig(backend="bm25"), documents=DOCUMENTS)
    assert from_documents.index_path is None
    with pytest.raises(ConfigError, match="registered backends: bm25, http"):
        build_retriever(RetrieverConfig(backend="faiss"), documents=DOCUMENTS)
    with pytest.raises(ValueError, match="already registered"):
        register_retriever("bm25")(lambda *args: None)


def test_bm25s_debug_lines_stay_out_of_the_log():
    import logging

    import data.retriever  # noqa: F401  (bm25s sets its logger to DEBUG when imported; the retriever lowers it)

    assert not logging.getLogger("bm25s").isEnabledFor(logging.INFO)
