"""Retrieval server under bad and heavy traffic: a 4xx naming the field for every bad request, no echo of
megabyte inputs, and zero server errors under concurrent load on a real uvicorn process.

tests/data/test_server.py checks the basic validation cases (empty/oversized batch, long query, topk
range, malformed JSON); this file adds the remaining wrong types and body shapes, the size of error
responses and of oversized bodies, and a small version of the `fanout bench retriever` load test.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from data.retriever import BM25Retriever
from data.server import MAX_REQUEST_BYTES, create_app
from rl.bench.retriever_load import load_test

DOCUMENTS = [
    {"id": "hall-0", "contents": "Bemo Hall\nBemo Hall was founded by Varlo Tenmis in 1901."},
    {"id": "city-0", "contents": "Quenbridge\nQuenbridge is a city in the Velmaria region."},
]


@pytest.fixture(scope="module")
def client():
    return TestClient(create_app(BM25Retriever(DOCUMENTS), num_documents=len(DOCUMENTS)))


@pytest.mark.parametrize(
    "payload, field, reason",
    [
        ({"queries": ["q"], "return_scores": "maybe"}, ["body", "return_scores"], "valid boolean"),
        ({"queries": ["q"], "return_scores": [1]}, ["body", "return_scores"], "valid boolean"),
        ({"queries": ["q"], "topk": 2.5}, ["body", "topk"], "valid integer"),
        ({"queries": ["q"], "topk": True}, ["body", "topk"], "valid integer"),
        ({"queries": ["q"], "topk": None}, ["body", "topk"], "valid integer"),
        ({"queries": [["nested"]]}, ["body", "queries", 0], "valid string"),
        ({"queries": None}, ["body", "queries"], "valid list"),
        ({"queries": ["q"] * 100_000}, ["body", "queries"], "at most 512 items"),
        ({"queries": ["word " * 200_000]}, ["body", "queries", 0], "at most 2000 characters"),
        ("queries", ["body"], "valid dictionary"),
        (3, ["body"], "valid dictionary"),
    ],
)
def test_wrong_types_and_shapes_get_a_422_naming_the_field(client, payload, field, reason):
    response = client.post("/retrieve", json=payload)
    assert response.status_code == 422
    problems = response.json()["detail"]
    assert problems[0]["loc"] == field and reason in problems[0]["msg"]
    assert len(response.content) < 1000  # the rejected value (up to a megabyte here) is not echoed back


def test_broken_bodies_get_a_4xx_and_the_server_keeps_serving(client):
    for body, content_type in [
        (b'{"queries": ["q"', "application/json"),
        (b"\xff\xfe\x00", "application/json"),
        (b'{"queries": ["q"]}', "text/plain"),
        (b"", "application/json"),
    ]:
        response = client.post("/retrieve", content=body, headers={"content-type": content_type})
        assert 400 <= response.status_code < 500 and response.json()["detail"]
    assert client.get("/retrieve").status_code == 405
    assert client.post("/search", json={"queries": ["q"]}).status_code == 404
    good = client.post("/retrieve", json={"queries": ["Who founded Bemo Hall?"], "topk": 1})
    assert good.status_code == 200 and good.json()["result"][0][0]["id"] == "hall-0"


def test_an_oversized_body_is_refused_before_it_is_parsed(client):
    body = b'{"queries": ["' + b"x" * (MAX_REQUEST_BYTES + 1) + b'"]}'
    response = client.post("/retrieve", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "at most 512 queries" in response.json()["detail"]


def test_largest_valid_request_is_under_the_body_limit(client):
    queries = ["\U0001f600" * 2000] * 512  # 512 queries of 2000 astral characters, 12 bytes each as JSON
    response = client.post("/retrieve", json={"queries": queries, "topk": 1})
    assert response.status_code == 200 and len(response.json()["result"]) == 512


def test_a_small_load_test_on_a_real_server_has_no_errors():
    result = load_test(num_requests=100, concurrency=16)
    assert result.status_counts == {200: 100}
    assert (result.transport_errors, result.malformed_answers) == (0, 0)
    figures = result.figures()
    assert figures["server_errors"] == 0 and figures["client_errors"] == 0
    assert figures["requests"] == 100 and figures["queries_per_request"] == 4
    assert 0 < figures["p50_ms"] <= figures["p99_ms"]
