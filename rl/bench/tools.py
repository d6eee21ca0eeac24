"""Benchmark: k search calls of one turn run concurrently by ToolExecutor vs one after another.

    fanout bench tools            # 100 ms per call, 5 repeats
    fanout bench tools --quick    # 20 ms per call, 2 repeats (test-suite setting)

Each call is a real SearchTool query against BM25 over a small generated world, plus an artificial
latency (tools.latency_s) that models a remote search API. "serial" runs the k calls as k turns of
one call each; "concurrent" runs them as one turn. speedup = serial time / concurrent time (median of
the repeats); with latency-dominated calls it approaches k, which is what fanning out buys in
wall-clock time per round.
"""

from __future__ import annotations

import statistics
import time

from data.retriever import BM25Retriever
from data.world import generate_world
from data.config import WorldConfig
from rollouts.tools import SearchTool, ToolExecutor
from data.trajectory import ToolCall

CALL_COUNTS = (1, 2, 4, 8)


def _timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def run(quick: bool) -> dict:
    latency_s, repeats = (0.02, 2) if quick else (0.1, 5)
    world_config = WorldConfig(seed=0, num_entities_per_kind=30, num_train=40, num_validation=10, num_test=10)
    world = generate_world(world_config)
    queries = [sub_question for question in world.splits["train"] for sub_question in question.sub_questions]
    executor = ToolExecutor({"search": SearchTool(BM25Retriever(world.documents), topk=3)}, timeout_s=30.0,
                            latency_s=latency_s, max_calls_per_turn=max(CALL_COUNTS))

    def calls(k: int) -> list[ToolCall]:
        return [ToolCall("search", {"query": queries[i % len(queries)]}) for i in range(k)]

    executor.run_turn_sync(calls(2))  # warm-up: first event loop, thread pool, BM25 code paths
    rows, speedup = [], {}
    for k in CALL_COUNTS:
        serial_s = statistics.median(
            _timed(lambda: [executor.run_turn_sync([call]) for call in calls(k)]) for _ in range(repeats))
        concurrent_s = statistics.median(
            _timed(lambda: executor.run_turn_sync(calls(k))) for _ in range(repeats))
        speedup[str(k)] = round(serial_s / concurrent_s, 2)
        rows.append((k, serial_s * 1000, concurrent_s * 1000, serial_s / concurrent_s))

    print(f"tools: {latency_s * 1000:.0f} ms per call, median of {repeats} repeats")
    print("| calls per turn | serial (ms) | concurrent (ms) | speedup |")
    print("|---:|---:|---:|---:|")
    for k, serial_ms, concurrent_ms, ratio in rows:
        print(f"| {k} | {serial_ms:.1f} | {concurrent_ms:.1f} | {ratio:.2f}x |")
    return {"speedup": speedup, "latency_ms": round(latency_s * 1000)}
