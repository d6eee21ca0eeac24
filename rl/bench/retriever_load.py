"""Benchmark: load test of the HTTP retrieval server, on 127.0.0.1 only.

    fanout bench retriever            # 2,000 requests, 16 concurrent, 4 queries each (top-3)
    fanout bench retriever --quick    # 100 requests (test-suite setting)
    python -m rl.bench.retriever_load --requests 5000 --concurrency 32 --corpus world/corpus.jsonl

A real `fanout serve-retriever` process (uvicorn, BM25 over the generated world's corpus unless
--corpus is given) is started on a free port of 127.0.0.1 and stopped at the end; an httpx async client
keeps `concurrency` requests in flight until all are answered. Reported: throughput (requests/s and
queries/s), latency percentiles p50/p99 per request, and the error counts: server errors (5xx and
transport failures: refused, reset, timed out), client errors (4xx) and malformed answers (200 with
the wrong number of result lists). A healthy server has all three at 0.

What it simplifies on purpose: the client runs on the same 2-core machine as the server, so the
figures are those of the pair; requests are the sub-questions of the generated world, so BM25 work
per request is small and the figures mostly measure the HTTP path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np

LOCALHOST = "127.0.0.1"


@dataclass
class LoadResult:
    requests: int
    concurrency: int
    queries_per_request: int
    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    status_counts: Counter = field(default_factory=Counter)
    transport_errors: int = 0
    malformed_answers: int = 0

    @property
    def server_errors(self) -> int:
        return self.transport_errors + sum(
            count for status, count in self.status_counts.items() if status >= 500
        )

    @property
    def client_errors(self) -> int:
        return sum(count for status, count in self.status_counts.items() if 400 <= status < 500)

    def figures(self) -> dict:
        latencies_ms = np.asarray(self.latencies_s) * 1000
        return {
            "requests": self.requests,
            "concurrency": self.concurrency,
            "queries_per_request": self.queries_per_request,
            "throughput_rps": round(self.requests / self.wall_s, 1),
            "queries_per_s": round(self.requests * self.queries_per_request / self.wall_s, 1),
            "p50_ms": round(float(np.percentile(latencies_ms, 50)), 1),
            "p99_ms": round(float(np.percentile(latencies_ms, 99)), 1),
            "server_errors": self.server_errors,
            "client_errors": self.client_errors,
            "malformed_answers": self.malformed_answers,
        }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return sock.getsockname()[1]


def wait_until_healthy(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the retrieval server exited with code {process.returncode} before answering")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the retrieval server at {url} did not answer /health within {timeout_s:.0f} s")


@contextlib.contextmanager
def retrieval_server(
    corpus_path: str | os.PathLike, index_dir: str | os.PathLike, startup_timeout_s: float = 180.0
) -> Iterator[str]:
    """Run `fanout serve-retriever` on a free port of 127.0.0.1 (its default host); yields the base URL."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "rl",
        "serve-retriever",
        "--corpus",
        str(corpus_path),
        "--port",
        str(port),
        "--index-dir",
        str(index_dir),
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    url = f"http://{LOCALHOST}:{port}"
    try:
        wait_until_healthy(url, process, startup_timeout_s)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


async def run_load(url: str, payloads: list[dict], concurrency: int, timeout_s: float = 30.0) -> LoadResult:
    """POST every payload to `url`/retrieve with at most `concurrency` requests in flight."""
    queries_per_request = len(payloads[0]["queries"]) if payloads else 0
    result = LoadResult(
        requests=len(payloads), concurrency=concurrency, queries_per_request=queries_per_request
    )
    next_index = iter(range(len(payloads)))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        for index in next_index:
            payload = payloads[index]
            started = time.perf_counter()
            try:
                response = await client.post(f"{url}/retrieve", json=payload)
            except httpx.HTTPError:
                result.transport_errors += 1
                continue
            result.latencies_s.append(time.perf_counter() - started)
            result.status_counts[response.status_code] += 1
            if response.status_code == 200 and len(response.json().get("result", [])) != len(
                payload["queries"]
            ):
                result.malformed_answers += 1

    async with httpx.AsyncClient(limits=limits, timeout=timeout_s) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        result.wall_s = time.perf_counter() - started
    return result


def world_payloads(
    num_requests: int, queries_per_request: int, topk: int = 3
) -> tuple[list[dict], list[dict]]:
    """(corpus documents, request payloads) from a small generated world: its sub-questions, in order."""
    from data.world import generate_world
    from data.config import WorldConfig

    world = generate_world(
        WorldConfig(seed=0, num_entities_per_kind=50, num_train=400, num_validation=10, num_test=10)
    )
    queries = [
        sub for question in world.splits["train"] for sub in (question.sub_questions or [question.question])
    ]
    payloads = [
        {
            "queries": [
                queries[(request * queries_per_request + offset) % len(queries)]
                for offset in range(queries_per_request)
            ],
            "topk": topk,
        }
        for request in range(num_requests)
    ]
    return world.documents, payloads


def load_test(
    num_requests: int, concurrency: int, queries_per_request: int = 4, corpus_path: str | None = None
) -> LoadResult:
    """Start a server, warm it up with one request per connection, then time `num_requests` requests."""
    from data.corpus import write_corpus

    documents, payloads = world_payloads(num_requests + concurrency, queries_per_request)
    with tempfile.TemporaryDirectory(prefix="fanout-load-test-") as folder:
        corpus = corpus_path or write_corpus(Path(folder) / "corpus.jsonl", documents)
        with retrieval_server(corpus, Path(folder) / "index") as url:
            asyncio.run(run_load(url, payloads[:concurrency], concurrency))  # connections, BM25 warm-up
            return asyncio.run(run_load(url, payloads[concurrency:], concurrency))


def print_table(figures: dict) -> None:
    print(
        f"retriever: {figures['requests']} requests, {figures['concurrency']} concurrent, "
        f"{figures['queries_per_request']} queries each, 127.0.0.1"
    )
    print("| requests/s | queries/s | p50 (ms) | p99 (ms) | server errors | client errors | malformed |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    columns = (
        "throughput_rps",
        "queries_per_s",
        "p50_ms",
        "p99_ms",
        "server_errors",
        "client_errors",
        "malformed_answers",
    )
    print("| " + " | ".join(str(figures[column]) for column in columns) + " |")


def run(quick: bool) -> dict:
    figures = load_test(num_requests=100 if quick else 2000, concurrency=16).figures()
    print_table(figures)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Load test of the HTTP retrieval server on 127.0.0.1.")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--queries-per-request", type=int, default=4)
    parser.add_argument("--corpus", default=None, help="JSONL corpus (default: the generated world's)")
    args = parser.parse_args(argv)
    figures = load_test(args.requests, args.concurrency, args.queries_per_request, args.corpus).figures()
    print_table(figures)
    print(json.dumps({"suite": "retriever", **figures}), flush=True)
    return 0 if figures["server_errors"] == 0 and figures["malformed_answers"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
