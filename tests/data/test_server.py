"""The retrieval server: Search-R1 response shapes, request validation (4xx), a real uvicorn round trip."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from data.retriever import BM25Retriever, HttpRetriever, RetrievalError
from data.server import create_app

DOCUMENTS = [
    {"id": "person-0", "contents": "Varlo Tenmis\nVarlo Tenmis was born in Quenbridge in 1850."},
    {"id": "city-0", "contents": "Quenbridge\nQuenbridge is a city in the Velmaria region. Founded in 1432."},
    {"id": "film-0", "contents": "Orvane Road\nOrvane Road is a 1954 film directed by Varlo Tenmis."},
]


@pytest.fixture(scope="module")
def retriever():
    return BM25Retriever(DOCUMENTS)


@pytest.fixture(scope="module")
def client(retriever):
    return TestClient(create_app(retriever, num_documents=len(DOCUMENTS)))


def test_batched_retrieve_with_scores(client):
    queries = ["When was Varlo Tenmis born?", "Orvane Road director"]
    response = client.post("/retrieve", json={"queries": queries, "topk": 2, "return_scores": True})
    assert response.status_code == 200
    result = response.json()["result"]
    assert len(result) == 2 and [len(per_query) for per_query in result] == [2, 2]
    assert result[0][0]["document"] == DOCUMENTS[0]
    assert result[1][0]["document"]["id"] == "film-0"
    assert result[0][0]["score"] > 0 and result[0][0]["score"] >= result[0][1]["score"]


def test_retrieve_without_scores_returns_the_documents_themselves(client):
    response = client.post("/retrieve", json={"queries": ["When was Quenbridge founded?"], "topk": 1})
    assert response.json() == {"result": [[DOCUMENTS[1]]]}


def test_health(client):
    assert client.get("/health").json() == {"status": "ok", "documents": 3}


@pytest.mark.parametrize("payload", [
    {"queries": [], "topk": 3},
    {"queries": ["q"] * 513, "topk": 3},
    {"queries": ["x" * 2001], "topk": 3},
    {"queries": [""], "topk": 3},
    {"queries": ["q"], "topk": 0},
    {"queries": ["q"], "topk": 101},
    {"queries": ["q"], "topk": "3"},
    {"queries": [42], "topk": 3},
    {"queries": "not a list", "topk": 3},
    {"topk": 3},
    ["q"],
])
def test_invalid_requests_get_a_4xx_with_a_reason(client, payload):
    response = client.post("/retrieve", json=payload)
    assert response.status_code == 422
    assert response.json()["detail"]


def test_malformed_json_gets_a_4xx_and_the_server_keeps_serving(client):
    response = client.post("/retrieve", content=b'{"queries": ["q"',
                           headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500
    assert client.post("/retrieve", json={"queries": ["Quenbridge"], "topk": 1}).status_code == 200


def test_limits_are_inclusive(client):
    response = client.post("/retrieve", json={"queries": ["q"] * 512, "topk": 100})
    assert response.status_code == 200
    result = response.json()["result"]
    assert len(result) == 512 and len(result[0]) == 3  # topk clamped to the corpus size


def test_a_failing_retriever_is_a_500_not_a_dead_server():
    class Broken:
        def search(self, queries, topk):
            raise OSError("index file vanished")

    client = TestClient(create_app(Broken()), raise_server_exceptions=False)
    response = client.post("/retrieve", json={"queries": ["q"], "topk": 1})
    assert response.status_code == 500 and "index file vanished" in response.json()["detail"]
    assert client.get("/health").status_code == 200


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def live_server(retriever):
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(retriever, len(DOCUMENTS)), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start within 20 s"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_http_retriever_against_a_real_server_matches_in_process_bm25(live_server, retriever):
    client = HttpRetriever(f"{live_server}/retrieve", timeout_s=10, retries=1)
    queries = ["When was Varlo Tenmis born?", "When was Quenbridge founded?", "Who directed Orvane Road?"]
    remote = client.search(queries, topk=2)
    local = retriever.search(queries, topk=2)
    assert [[(hit.id, hit.contents) for hit in hits] for hits in remote] == [
        [(hit.id, hit.contents) for hit in hits] for hits in local]
    local_scores = [hit.score for hits in local for hit in hits]
    assert [hit.score for hits in remote for hit in hits] == pytest.approx(local_scores)
    client.close()


def test_raw_search_r1_style_post(live_server):
    payload = {"queries": ["Orvane Road", "Velmaria region"], "topk": 1, "return_scores": True}
    body = httpx.post(f"{live_server}/retrieve", json=payload, timeout=10).json()
    ids = [[item["document"]["id"] for item in per_query] for per_query in body["result"]]
    assert ids == [["film-0"], ["city-0"]]
    bad = httpx.post(f"{live_server}/retrieve", json={"queries": [], "topk": 1}, timeout=10)
    assert bad.status_code == 422


def test_http_retriever_reports_rejected_and_unreachable_servers(live_server):
    with pytest.raises(RetrievalError, match="rejected the request"):
        HttpRetriever(f"{live_server}/retrieve", retries=3).search(["x" * 2001], topk=1)
    unreachable = HttpRetriever(f"http://127.0.0.1:{free_port()}/retrieve", timeout_s=1, retries=1,
                                backoff_s=0.01)
    with pytest.raises(RetrievalError, match="failed after 2 attempts"):
        unreachable.search(["q"], topk=1)
