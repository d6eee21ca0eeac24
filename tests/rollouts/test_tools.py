"""Tools and their executor: concurrent calls per turn, failures as error observations, batched search."""

from __future__ import annotations

import asyncio

import pytest

from data.config import RetrieverConfig
from data.errors import ConfigError
from data.retriever import BM25Retriever, Document
from rollouts.config import ToolsConfig
from rollouts.tools import (
    FaultInjectingTool,
    SearchTool,
    ToolExecutor,
    ToolResult,
    build_tools,
    register_tool,
)
from data.trajectory import ToolCall

DOCUMENTS = [
    {"id": "person-0", "contents": "Varlo Tenmis\nVarlo Tenmis was born in Quenbridge in 1850."},
    {"id": "city-0", "contents": "Quenbridge\nQuenbridge is a city in the Velmaria region. Founded in 1432."},
    {"id": "film-0", "contents": "Orvane Road\nOrvane Road is a 1954 film directed by Varlo Tenmis."},
    {"id": "company-0", "contents": "Drelmor Works\nDrelmor Works was founded in 1901 by Sela Marrow."},
]


class ProbeTool:
    """Records how many of its calls are in flight at once."""

    name = "probe"
    description = "echo after a short wait"
    parameters = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}

    def __init__(self, wait_s: float = 0.05):
        self.wait_s = wait_s
        self.in_flight = 0
        self.max_in_flight = 0

    async def call(self, arguments: dict) -> ToolResult:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        await asyncio.sleep(self.wait_s)
        self.in_flight -= 1
        return ToolResult(observation=f"echo {arguments['text']}")


class SlowTool(ProbeTool):
    name = "slow"

    async def call(self, arguments: dict) -> ToolResult:
        await asyncio.sleep(60)
        return ToolResult(observation="never")


class BrokenTool(ProbeTool):
    name = "broken"

    async def call(self, arguments: dict) -> ToolResult:
        raise RuntimeError("backend exploded")


class CountingRetriever:
    """A retriever that records the batches it is asked for."""

    def __init__(self):
        self.inner = BM25Retriever(DOCUMENTS)
        self.batches: list[list[str]] = []

    def search(self, queries: list[str], topk: int) -> list[list[Document]]:
        self.batches.append(list(queries))
        return self.inner.search(queries, topk)


def probe_calls(count: int) -> list[ToolCall]:
    return [ToolCall("probe", {"text": str(i)}) for i in range(count)]


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_all_calls_of_a_turn_run_concurrently(k):
    probe = ProbeTool()
    calls = ToolExecutor({"probe": probe}, max_calls_per_turn=8).run_turn_sync(probe_calls(k))
    assert probe.max_in_flight == k
    assert [call.observation for call in calls] == [f"echo {i}" for i in range(k)]
    assert all(call.error is None and call.latency_s > 0 for call in calls)


def test_turns_of_many_trajectories_run_in_one_event_loop():
    probe = ProbeTool()
    turns = [probe_calls(2), probe_calls(3), [], probe_calls(1)]
    done = ToolExecutor({"probe": probe}).run_turns_sync(turns)
    assert probe.max_in_flight == 6
    assert [[call.observation for call in calls] for calls in done] == [
        ["echo 0", "echo 1"], ["echo 0", "echo 1", "echo 2"], [], ["echo 0"]]


def test_timeouts_exceptions_unknown_tools_and_bad_arguments_become_error_observations():
    executor = ToolExecutor({"probe": ProbeTool(), "slow": SlowTool(), "broken": BrokenTool()}, timeout_s=0.2,
                            max_calls_per_turn=8)
    calls = executor.run_turn_sync([
        ToolCall("slow", {"text": "a"}), ToolCall("broken", {"text": "b"}), ToolCall("missing", {}),
        ToolCall("probe", {"wrong": 1}), ToolCall("probe", {"text": 5}), ToolCall("probe", "not a dict"),
        ToolCall("probe", {"text": "fine"}),
    ])
    assert calls[0].error == "slow timed out after 0.2 s"
    assert calls[1].error == "broken failed: RuntimeError: backend exploded"
    assert calls[2].error == "unknown tool 'missing'; available tools: broken, probe, slow"
    assert calls[3].error == "bad arguments for probe: 'text' is a required property"
    assert calls[4].error == "bad arguments for probe: 5 is not of type 'string'"
    assert calls[5].error == "arguments of probe must be a JSON object, got str"
    for call in calls[:6]:
        assert call.observation == f"Error: {call.error}" and call.retrieved_doc_ids == []
    assert (calls[6].observation, calls[6].error) == ("echo fine", None)


def test_calls_beyond_the_per_turn_limit_are_refused():
    probe = ProbeTool()
    calls = ToolExecutor({"probe": probe}, max_calls_per_turn=2).run_turn_sync(probe_calls(4))
    assert [call.error for call in calls] == [None, None, "refused: at most 2 tool calls per turn",
                                              "refused: at most 2 tool calls per turn"]
    assert probe.max_in_flight == 2


def test_search_tool_formats_passages_and_reports_doc_ids():
    executor = ToolExecutor({"search": SearchTool(BM25Retriever(DOCUMENTS), topk=2, max_passage_chars=24)})
    (call,) = executor.run_turn_sync([ToolCall("search", {"query": "When was Varlo Tenmis born?"})])
    assert call.retrieved_doc_ids == ["person-0", "film-0"]
    assert call.observation == ("Doc 1(Title: Varlo Tenmis) Varlo Tenmis was born...\n"
                                "Doc 2(Title: Orvane Road) Orvane Road is a 1954...")
    (empty,) = executor.run_turn_sync([ToolCall("search", {"query": "   "})])
    assert empty.error == "empty search query"


def test_concurrent_queries_of_a_round_share_one_retriever_call_with_identical_results():
    queries = ["When was Varlo Tenmis born?", "When was Quenbridge founded?", "Who directed Orvane Road?",
               "Who founded Drelmor Works?"]
    batched_retriever, single_retriever = CountingRetriever(), CountingRetriever()
    batched = ToolExecutor({"search": SearchTool(batched_retriever, topk=2)})
    unbatched = ToolExecutor({"search": SearchTool(single_retriever, topk=2, batch_queries=False)})
    def two_turns() -> list[list[ToolCall]]:
        return [[ToolCall("search", {"query": q}) for q in queries[:2]],
                [ToolCall("search", {"query": q}) for q in queries[2:]]]

    turns, reference = two_turns(), two_turns()
    batched.run_turns_sync(turns)
    unbatched.run_turns_sync(reference)
    assert batched_retriever.batches == [queries]  # one retriever call for the whole round
    assert sorted(map(tuple, single_retriever.batches)) == sorted((q,) for q in queries)
    assert [[(c.observation, c.retrieved_doc_ids) for c in calls] for calls in turns] == [
        [(c.observation, c.retrieved_doc_ids) for c in calls] for calls in reference]
    assert [call.retrieved_doc_ids[0] for calls in turns for call in calls] == [
        "person-0", "city-0", "film-0", "company-0"]


def test_a_failing_retriever_fails_every_call_of_the_batch_with_an_error_observation():
    class Down:
        def search(self, queries, topk):
            raise ConnectionError("retrieval server down")

    calls = ToolExecutor({"search": SearchTool(Down())}).run_turn_sync(
        [ToolCall("search", {"query": "a"}), ToolCall("search", {"query": "b"})])
    assert [call.error for call in calls] == ["search failed: ConnectionError: retrieval server down"] * 2


def test_fault_injection_is_seeded_and_failures_and_hangs_become_error_observations():
    def run(seed: int) -> tuple[list, FaultInjectingTool]:
        faulty = FaultInjectingTool(ProbeTool(wait_s=0), failure_rate=0.3, timeout_rate=0.2, seed=seed,
                                    hang_s=60)
        executor = ToolExecutor({"probe": faulty}, timeout_s=0.1, max_calls_per_turn=0)
        return [call.error for call in executor.run_turn_sync(probe_calls(40))], faulty

    errors, faulty = run(seed=7)
    again, _ = run(seed=7)
    other, _ = run(seed=8)
    assert errors == again and errors != other
    failures = errors.count("probe failed: ToolFailure: injected failure in probe")
    timeouts = errors.count("probe timed out after 0.1 s")
    assert (failures, timeouts) == (faulty.injected_failures, faulty.injected_hangs)
    assert failures + timeouts + errors.count(None) == 40 and failures > 0 and timeouts > 0
    with pytest.raises(ValueError, match="sum to at most 1"):
        FaultInjectingTool(ProbeTool(), failure_rate=0.7, timeout_rate=0.5)


def test_executor_latency_applies_to_every_call_and_counts_against_the_timeout():
    executor = ToolExecutor({"probe": ProbeTool(wait_s=0)}, timeout_s=0.05, latency_s=1.0)
    calls = executor.run_turn_sync(probe_calls(2))
    assert [call.error for call in calls] == ["probe timed out after 0.05 s"] * 2


def test_run_turn_sync_works_inside_a_running_event_loop():
    executor = ToolExecutor({"probe": ProbeTool(wait_s=0)})

    async def from_async_code():
        return executor.run_turn_sync(probe_calls(2))

    assert [call.observation for call in asyncio.run(from_async_code())] == ["echo 0", "echo 1"]


def test_build_tools_from_config_and_registry_rules():
    executor = build_tools(ToolsConfig(timeout_s=3.0, max_calls_per_turn=6), RetrieverConfig(topk=2),
                           BM25Retriever(DOCUMENTS))
    assert list(executor.tools) == ["search"]
    assert (executor.timeout_s, executor.max_calls_per_turn) == (3.0, 6)
    assert executor.tools["search"].topk == 2
    assert executor.tool_schemas()[0]["function"]["name"] == "search"
    assert executor.tool_schemas()[0]["function"]["parameters"]["required"] == ["query"]
    with pytest.raises(ConfigError, match="registered tools: search"):
        build_tools(ToolsConfig(enabled=["calculator"]), RetrieverConfig(), None)
    with pytest.raises(ConfigError, match="no retriever"):
        build_tools(ToolsConfig(), RetrieverConfig(), None)
    with pytest.raises(ValueError, match="already registered"):
        register_tool("search")(lambda *args: None)


def test_tools_benchmark_quick_run_reports_a_speedup_per_call_count():
    from rl.bench.tools import run

    figures = run(quick=True)
    for key in ("speedup", "mcp_speedup"):
        assert sorted(figures[key]) == ["1", "2", "4", "8"]
        assert all(isinstance(value, float) and value > 0 for value in figures[key].values())
    assert figures["mcp_speedup"]["8"] > 2  # 8 calls of 20 ms in the server overlap over one MCP session


def test_a_call_with_a_corpus_partition_searches_only_that_partition_even_batched_with_others():
    # the same name in two partitions with other facts, as in the generated world's training sets
    documents = [{"id": "w1/person-0000", "contents": "Varlo Tenmis\nVarlo Tenmis was born in 1843."},
                 {"id": "w2/person-0000", "contents": "Varlo Tenmis\nVarlo Tenmis was born in 1902."},
                 {"id": "person-0000", "contents": "Quen Ardo\nQuen Ardo was born in 1777."}]
    executor = ToolExecutor({"search": SearchTool(BM25Retriever(documents), topk=1)})
    calls = [ToolCall("search", {"query": "When was Varlo Tenmis born?"}, corpus_partition=partition)
             for partition in ("w2", "w1", "")]
    executor.run_turn_sync(calls)
    assert [call.retrieved_doc_ids for call in calls] == [["w2/person-0000"], ["w1/person-0000"], ["person-0000"]]
    assert "1902" in calls[0].observation and "1843" in calls[1].observation


def test_an_unknown_partition_or_a_retriever_without_partitions_is_an_error_observation():
    documents = [{"id": "w1/a", "contents": "A\nAlpha."}]

    class NoPartitions:
        def search(self, queries, topk):
            return [[Document("w1/a", "A\nAlpha.")] for _ in queries]

    for retriever in (BM25Retriever(documents), NoPartitions()):
        executor = ToolExecutor({"search": SearchTool(retriever, topk=1)})
        call = ToolCall("search", {"query": "Alpha"}, corpus_partition="w9")
        executor.run_turn_sync([call])
        assert call.error and call.retrieved_doc_ids == []
    assert "no partition 'w9'" in ToolExecutor({"search": SearchTool(BM25Retriever(documents), topk=1)}) \
        .run_turn_sync([ToolCall("search", {"query": "Alpha"}, corpus_partition="w9")])[0].error
