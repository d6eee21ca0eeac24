"""Tools the agent calls, and the executor that runs all calls of a turn concurrently.

A tool is a name, a description, a JSON schema of its arguments and `async call(arguments) ->
ToolResult`. Tools are registered by name (`@register_tool("search")` on a builder taking the tools
and retriever configs) and enabled in YAML (`tools.enabled: [search]`). `SearchTool` answers one
sub-query with the top-k passages in Search-R1's layout (`Doc 1(Title: X) text`).

`ToolExecutor.run_turn(calls)` runs every call of one model turn at the same time (asyncio.gather),
each under its own timeout; an unknown tool, bad arguments, an exception or a timeout becomes an
error observation on that call and never an exception, so a failing tool cannot kill a rollout.
`run_turns_sync` runs the turns of a whole batch of trajectories in one event loop, and the search
tool gathers every query submitted in the same pass of the loop into ONE batched `retriever.search`
call (results are identical to one call per query; BM25 scores queries independently).

    executor = build_tools(config.tools, config.retriever, retriever)
    calls = executor.run_turn_sync([ToolCall("search", {"query": "When was Varlo Tenmis born?"}),
                                    ToolCall("search", {"query": "When was Quen Ardo born?"})])
    calls[0].observation, calls[0].retrieved_doc_ids, calls[1].error

Besides registered tools, `tools.mcp_servers` plugs in MCP servers: `build_tools` starts each one and
adds the tools it lists (rollouts/mcp_tools.py; the executor then keeps the sources, for the episode
state of stateful servers and for `close()`). A call carries its episode id (`ToolCall.episode_id`) to
tools that keep one state per episode.

What it simplifies on purpose: calls of one turn are independent (no call sees another's result);
blocking tools run in asyncio's default thread pool; `FaultInjectingTool` simulates unreliable tools
for reliability tests (`tools.fault_rate` / `tools.fault_timeout_rate` wrap every enabled tool in it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol, TypeVar

import jsonschema

from data.config import RetrieverConfig
from data.corpus import format_passages
from data.errors import ConfigError
from data.registry import Registry
from data.retriever import Document, Retriever
from data.trajectory import ToolCall
from rollouts.config import ToolsConfig

T = TypeVar("T")


@dataclass
class ToolResult:
    observation: str  # text shown to the model
    error: str | None = None  # set when the tool could not do what was asked
    retrieved_doc_ids: list[str] = field(default_factory=list)


class Tool(Protocol):
    name: str
    description: str
    parameters: dict  # JSON schema of the arguments object

    async def call(self, arguments: dict) -> ToolResult: ...


# Optional attributes a tool may have: `timeout_s` (its own per-call timeout instead of tools.timeout_s) and
# `takes_episode = True` (the executor then calls `call(arguments, episode_id=...)` with the call's episode,
# for tools that keep one state per episode, like those of an MCP server: rollouts/mcp_tools.py).
# A tool with `takes_corpus_partition = True` (the search tool, MCP tools) is called with
# `corpus_partition=...` too when the call carries one: the question confines its searches to a partition of
# the corpus (data.retriever.partition_of; the generated world's entity sets), or an MCP server starts the
# episode from that part of its world (the apps server's training worlds).


class ToolFailure(RuntimeError):
    """Raised by a tool that failed; the executor turns it into an error observation."""


def function_schema(tool: Tool) -> dict:
    """The OpenAI / HF chat-template description of a tool (`tools=[...]` in apply_chat_template)."""
    return {"type": "function",
            "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters}}


def error_observation(message: str) -> str:
    return f"Error: {message}"


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------

ToolBuilder = Callable[["ToolsConfig", "RetrieverConfig", "Retriever | None"], Tool]
TOOL_BUILDERS: Registry[ToolBuilder] = Registry("tool")


def register_tool(name: str) -> Callable[[ToolBuilder], ToolBuilder]:
    return TOOL_BUILDERS.register(name)


# ----------------------------------------------------------------------------------------------
# Search
# ----------------------------------------------------------------------------------------------


class QueryBatcher:
    """Runs the queries submitted during one pass of an event loop as one `retriever.search` call."""

    def __init__(self, retriever: Retriever, topk: int):
        self.retriever = retriever
        self.topk = topk
        # per event loop: (query, corpus partition or None, future) of the calls waiting for the next batch
        self._pending: dict[asyncio.AbstractEventLoop, list[tuple[str, str | None, asyncio.Future]]] = {}
        self._lock = threading.Lock()  # one tool may serve event loops in several threads
        self._flush_tasks: set[asyncio.Task] = set()
        self.num_batches = 0  # retriever calls made (for tests and metrics)

    async def search(self, query: str, partition: str | None = None) -> list[Document]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            pending = self._pending.setdefault(loop, [])
            pending.append((query, partition, future))
            start_flush = len(pending) == 1
        if start_flush:  # a task of its own: a caller's timeout must not cancel the others' batch
            task = loop.create_task(self._flush(loop))
            self._flush_tasks.add(task)
            task.add_done_callback(self._flush_tasks.discard)
        return await future

    async def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        await asyncio.sleep(0)  # let the other calls of this round enqueue their queries
        with self._lock:
            batch = self._pending.pop(loop, [])
        by_partition: dict[str | None, list[tuple[str, asyncio.Future]]] = {}
        for query, partition, future in batch:
            by_partition.setdefault(partition, []).append((query, future))
        for partition, calls in by_partition.items():  # one retriever call per partition searched
            await self._search_batch(calls, partition)

    async def _search_batch(self, batch: list[tuple[str, asyncio.Future]], partition: str | None) -> None:
        if not batch:
            return
        self.num_batches += 1
        queries = [query for query, _ in batch]
        try:
            if partition is None:
                results = await asyncio.to_thread(self.retriever.search, queries, self.topk)
            else:
                results = await asyncio.to_thread(self.retriever.search, queries, self.topk, partition=partition)
            if len(results) != len(batch):
                raise ToolFailure(f"retriever returned {len(results)} result lists for {len(batch)} queries")
        except Exception as error:
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), documents in zip(batch, results):
            if not future.done():  # a caller that timed out has cancelled its future
                future.set_result(documents)


class SearchTool:
    """One sub-query -> the top-k passages as `Doc i(Title: X) text` lines, truncated to max_passage_chars."""

    name = "search"
    description = "Search the corpus; returns the top passages for one self-contained query."
    parameters = {
        "type": "object",
        "properties": {"query": {"type": "string", "description": "one self-contained search query"}},
        "required": ["query"],
        "additionalProperties": False,
    }

    def __init__(self, retriever: Retriever, topk: int = 3, max_passage_chars: int = 300,
                 latency_s: float = 0.0, batch_queries: bool = True):
        self.retriever = retriever
        self.topk = topk
        self.max_passage_chars = max_passage_chars
        self.latency_s = latency_s  # artificial latency of this tool (the executor has its own, for any tool)
        self.batcher = QueryBatcher(retriever, topk) if batch_queries else None

    takes_corpus_partition = True  # the executor passes the call's corpus_partition (ToolCall)

    async def call(self, arguments: dict, corpus_partition: str | None = None) -> ToolResult:
        query = str(arguments.get("query", "")).strip()
        if not query:
            return ToolResult(observation=error_observation("empty search query"), error="empty search query")
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        if self.batcher is not None:
            documents = await self.batcher.search(query, corpus_partition)
        elif corpus_partition is None:
            documents = (await asyncio.to_thread(self.retriever.search, [query], self.topk))[0]
        else:
            documents = (await asyncio.to_thread(self.retriever.search, [query], self.topk,
                                                 partition=corpus_partition))[0]
        if not documents:
            return ToolResult(observation="No results.")
        return ToolResult(observation=format_passages(documents, self.max_passage_chars),
                          retrieved_doc_ids=[document.id for document in documents])


@register_tool("search")
def build_search_tool(tools_config: ToolsConfig, retriever_config: RetrieverConfig,
                      retriever: Retriever | None) -> Tool:
    if retriever is None:
        raise ConfigError("tools.enabled lists 'search' but no retriever was built (check the retriever "
                          "section)")
    return SearchTool(retriever, topk=retriever_config.topk,
                      max_passage_chars=retriever_config.max_passage_chars)


# ----------------------------------------------------------------------------------------------
# Fault injection (reliability tests)
# ----------------------------------------------------------------------------------------------


class FaultInjectingTool:
    """Wraps a tool so a seeded fraction of calls raises and another fraction hangs (and so times out)."""

    def __init__(self, tool: Tool, failure_rate: float = 0.0, timeout_rate: float = 0.0, seed: int = 0,
                 hang_s: float = 3600.0):
        if failure_rate < 0 or timeout_rate < 0 or failure_rate + timeout_rate > 1:
            raise ValueError(f"failure_rate ({failure_rate}) and timeout_rate ({timeout_rate}) must be >= 0 "
                             "and sum to at most 1")
        self.tool = tool
        self.name, self.description, self.parameters = tool.name, tool.description, tool.parameters
        self.takes_corpus_partition = getattr(tool, "takes_corpus_partition", False)
        self.failure_rate, self.timeout_rate, self.hang_s = failure_rate, timeout_rate, hang_s
        self.rng = random.Random(seed)
        self.injected_failures = 0
        self.injected_hangs = 0

    async def call(self, arguments: dict, **call_context: Any) -> ToolResult:
        draw = self.rng.random()
        if draw < self.failure_rate:
            self.injected_failures += 1
            raise ToolFailure(f"injected failure in {self.name}")
        if draw < self.failure_rate + self.timeout_rate:
            self.injected_hangs += 1
            await asyncio.sleep(self.hang_s)
        return await self.tool.call(arguments, **call_context)


# ----------------------------------------------------------------------------------------------
# Executor
# ----------------------------------------------------------------------------------------------


def run_sync(coroutine: Awaitable[T]) -> T:
    """Run a coroutine to completion from sync code, also when this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    # This thread runs a loop already (a notebook, an async actor): run in a fresh thread with its own loop.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


class ToolExecutor:
    """Runs the tool calls of a turn concurrently; every failure becomes an error observation on its call.

    timeout_s: per call (including latency_s). latency_s: artificial delay before every call, modelling
    a remote API. max_calls_per_turn: calls beyond it are refused with an error observation (0: no limit).
    """

    def __init__(self, tools: dict[str, Tool], timeout_s: float = 5.0, latency_s: float = 0.0,
                 max_calls_per_turn: int = 4, sources: list | None = None):
        self.tools = dict(tools)
        self.sources = list(sources or [])  # MCP tool sources (rollouts/mcp_tools.py): episode state, close
        self.timeout_s = timeout_s
        self.latency_s = latency_s
        self.max_calls_per_turn = max_calls_per_turn
        self._validators = {name: jsonschema.Draft202012Validator(tool.parameters)
                            for name, tool in self.tools.items()}

    def tool_schemas(self) -> list[dict]:
        return [function_schema(tool) for tool in self.tools.values()]

    def episode_state(self, episode_id: str) -> dict[str, Any]:
        """{source name: the episode's state} from every tool source that keeps one (the MCP apps server)."""
        states = {source.config.name: source.episode_state(episode_id) for source in self.sources}
        return {name: state for name, state in states.items() if state is not None}

    def end_episode(self, episode_id: str) -> None:
        for source in self.sources:
            source.end_episode(episode_id)

    def close(self) -> None:
        """Stop the tool sources' server processes (MCP servers); the executor's tools are unusable after."""
        for source in self.sources:
            source.close()

    async def run_turn(self, calls: list[ToolCall]) -> list[ToolCall]:
        """Fill observation, error, latency_s and retrieved_doc_ids of every call (in place); never raises."""
        limit = self.max_calls_per_turn if self.max_calls_per_turn > 0 else len(calls)
        for refused in calls[limit:]:
            self._set_error(refused, f"refused: at most {limit} tool calls per turn")
        await asyncio.gather(*(self._run_call(call) for call in calls[:limit]))
        return calls

    async def run_turns(self, turns: list[list[ToolCall]]) -> list[list[ToolCall]]:
        """The turns of many trajectories at once (one rollout round of a batch)."""
        return list(await asyncio.gather(*(self.run_turn(calls) for calls in turns)))

    def run_turn_sync(self, calls: list[ToolCall]) -> list[ToolCall]:
        return run_sync(self.run_turn(calls))

    def run_turns_sync(self, turns: list[list[ToolCall]]) -> list[list[ToolCall]]:
        return run_sync(self.run_turns(turns))

    @staticmethod
    def _set_error(call: ToolCall, message: str) -> None:
        call.error = message
        call.observation = error_observation(message)
        call.retrieved_doc_ids = []

    def _argument_problem(self, call: ToolCall) -> str | None:
        if call.name not in self.tools:
            return f"unknown tool {call.name!r}; available tools: {', '.join(sorted(self.tools)) or 'none'}"
        if not isinstance(call.arguments, dict):
            return f"arguments of {call.name} must be a JSON object, got {type(call.arguments).__name__}"
        problem = jsonschema.exceptions.best_match(self._validators[call.name].iter_errors(call.arguments))
        return f"bad arguments for {call.name}: {problem.message}" if problem else None

    async def _invoke(self, tool: Tool, call: ToolCall) -> ToolResult:
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        context: dict[str, Any] = {}
        if getattr(tool, "takes_episode", False):
            context["episode_id"] = call.episode_id
        if getattr(tool, "takes_corpus_partition", False) and call.corpus_partition is not None:
            context["corpus_partition"] = call.corpus_partition
        return await tool.call(call.arguments, **context)

    async def _run_call(self, call: ToolCall) -> None:
        started = time.perf_counter()
        try:
            problem = self._argument_problem(call)
            if problem:
                self._set_error(call, problem)
                return
            tool = self.tools[call.name]
            timeout_s = getattr(tool, "timeout_s", None) or self.timeout_s
            result = await asyncio.wait_for(self._invoke(tool, call), timeout_s)
            call.observation, call.error = result.observation, result.error
            call.retrieved_doc_ids = list(result.retrieved_doc_ids)
        except asyncio.TimeoutError:
            self._set_error(call, f"{call.name} timed out after {timeout_s:g} s")
        except Exception as error:  # any tool failure is an observation, never a crashed rollout
            self._set_error(call, f"{call.name} failed: {type(error).__name__}: {error}")
        finally:
            call.latency_s = time.perf_counter() - started


def build_tools(tools_config: ToolsConfig, retriever_config: RetrieverConfig, retriever: Retriever | None) -> ToolExecutor:
    """The executor of the tools named in `tools.enabled` (rollouts.config.ToolsConfig, data.config.RetrieverConfig)."""
    tools, sources = {}, []
    for name in tools_config.enabled:
        builder = TOOL_BUILDERS.get(name)
        if builder is None:
            registered = ", ".join(sorted(TOOL_BUILDERS))
            raise ConfigError(f"key 'tools.enabled' lists {name!r}; registered tools: {registered}")
        tools[name] = builder(tools_config, retriever_config, retriever)
        if tools_config.fault_rate > 0 or tools_config.fault_timeout_rate > 0:
            tools[name] = FaultInjectingTool(tools[name], failure_rate=tools_config.fault_rate,
                                             timeout_rate=tools_config.fault_timeout_rate, seed=0)
    if tools_config.mcp_servers:
        from rollouts.mcp_tools import build_mcp_sources  # imported here: rollouts.mcp_tools imports this module

        sources = build_mcp_sources(tools_config.mcp_servers)
        for source in sources:
            clashes = sorted(set(source.tools()) & set(tools))
            if clashes:
                for started in sources:
                    started.close()
                raise ConfigError(f"tools.mcp_servers[{source.config.name}] offers {clashes}, already taken by "
                                  "another tool; leave them out with its allowed_tools")
            tools.update(source.tools())
    return ToolExecutor(tools, timeout_s=tools_config.timeout_s, latency_s=tools_config.latency_s,
                        max_calls_per_turn=tools_config.max_calls_per_turn, sources=sources)
