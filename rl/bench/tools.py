"""Benchmark: k search calls of one turn run concurrently by ToolExecutor vs one after another.

    fanout bench tools            # 100 ms per call, 5 repeats
    fanout bench tools --quick    # 20 ms per call, 2 repeats (test-suite setting)

Each call is a real SearchTool query against BM25 over a small generated world, plus an artificial
latency (tools.latency_s) that models a remote search API. "serial" runs the k calls as k turns of
one call each; "concurrent" runs them as one turn. speedup = serial time / concurrent time (median of
the repeats); with latency-dominated calls it approaches k, which is what fanning out buys in
wall-clock time per round.

The same measurement runs over MCP (`mcp_speedup`): k read-only calls (`shop_get_product`) of one turn
sent by the MCP tool source (rollouts/mcp_tools.py) to the apps server (data/apps/server.py, started over
stdio with `--latency-ms`, the same latency awaited inside the server), each call in an episode of its
own, versus the same calls one per turn. It measures what the client session's requests in flight and
the server's event loop overlap.
"""

from __future__ import annotations

import statistics
import time

from data.apps.server import server_arguments
from data.apps.state import generate_base_state
from data.config import AppsWorldConfig, RetrieverConfig, WorldConfig
from data.retriever import BM25Retriever
from data.trajectory import ToolCall
from data.world import generate_world
from rollouts.config import McpServerConfig, ToolsConfig
from rollouts.tools import SearchTool, ToolExecutor, build_tools

CALL_COUNTS = (1, 2, 4, 8)


def _timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def measure_speedups(executor: ToolExecutor, calls, repeats: int) -> tuple[dict, list]:
    """{k: serial time / concurrent time} over CALL_COUNTS, and the table rows (k, serial ms, concurrent ms, ratio)."""
    executor.run_turn_sync(calls(2))  # warm-up: first event loop, thread pool, code paths
    rows, speedup = [], {}
    for k in CALL_COUNTS:
        serial_s = statistics.median(
            _timed(lambda: [executor.run_turn_sync([call]) for call in calls(k)]) for _ in range(repeats))
        concurrent_s = statistics.median(
            _timed(lambda: executor.run_turn_sync(calls(k))) for _ in range(repeats))
        speedup[str(k)] = round(serial_s / concurrent_s, 2)
        rows.append((k, serial_s * 1000, concurrent_s * 1000, serial_s / concurrent_s))
    return speedup, rows


def print_table(title: str, rows: list) -> None:
    print(title)
    print("| calls per turn | serial (ms) | concurrent (ms) | speedup |")
    print("|---:|---:|---:|---:|")
    for k, serial_ms, concurrent_ms, ratio in rows:
        print(f"| {k} | {serial_ms:.1f} | {concurrent_ms:.1f} | {ratio:.2f}x |")


def search_speedups(latency_s: float, repeats: int) -> tuple[dict, list]:
    world_config = WorldConfig(seed=0, num_entities_per_kind=30, num_train=40, num_validation=10, num_test=10)
    world = generate_world(world_config)
    queries = [sub_question for question in world.splits["train"] for sub_question in question.sub_questions]
    executor = ToolExecutor({"search": SearchTool(BM25Retriever(world.documents), topk=3)}, timeout_s=30.0,
                            latency_s=latency_s, max_calls_per_turn=max(CALL_COUNTS))

    def calls(k: int) -> list[ToolCall]:
        return [ToolCall("search", {"query": queries[i % len(queries)]}) for i in range(k)]

    return measure_speedups(executor, calls, repeats)


def mcp_speedups(latency_s: float, repeats: int) -> tuple[dict, list]:
    world_config = AppsWorldConfig(seed=0)
    skus = sorted(generate_base_state(world_config)["products"])
    server = McpServerConfig(name="apps", command="python", timeout_s=30.0, startup_timeout_s=180.0,
                             args=server_arguments(world_config, latency_ms=latency_s * 1000))
    executor = build_tools(ToolsConfig(enabled=[], mcp_servers=[server], max_calls_per_turn=max(CALL_COUNTS)),
                           RetrieverConfig(), retriever=None)

    def calls(k: int) -> list[ToolCall]:
        return [ToolCall("shop_get_product", {"sku": skus[i % len(skus)]}, episode_id=f"bench-{i}") for i in range(k)]

    try:
        return measure_speedups(executor, calls, repeats)
    finally:
        executor.close()


def run(quick: bool) -> dict:
    latency_s, repeats = (0.02, 2) if quick else (0.1, 5)
    speedup, rows = search_speedups(latency_s, repeats)
    mcp_speedup, mcp_rows = mcp_speedups(latency_s, repeats)
    print_table(f"tools: search, {latency_s * 1000:.0f} ms per call, median of {repeats} repeats", rows)
    print_table(f"tools over MCP: apps server, {latency_s * 1000:.0f} ms per call in the server, median of "
                f"{repeats} repeats", mcp_rows)
    return {"speedup": speedup, "mcp_speedup": mcp_speedup, "latency_ms": round(latency_s * 1000)}
