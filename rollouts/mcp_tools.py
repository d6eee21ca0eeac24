"""MCP servers as a tool source: any stdio MCP server named in `tools.mcp_servers` becomes tools, no code.

For each configured server (rollouts.config.McpServerConfig) fanout starts the command as a subprocess
and speaks MCP to it over stdio with the `mcp` SDK's `Client`. The tools, their descriptions and JSON
schemas come from the server's `tools/list` (only `allowed_tools` when given; tools flagged as control
tools in their `_meta`, data/mcp_meta.py, are kept from the model). Each becomes an `McpTool` in the
ToolExecutor next to the registered tools, so the calls of a turn run concurrently (one client session
carries many requests in flight) and are validated against the listed schema.

Failures never crash a rollout. A tool result with `isError` is an error observation with the server's
text; a call past the server's `timeout_s` is a timeout error; when the server dies (a crash, a kill)
the calls in flight become error observations and the next call starts it again (`restarts` counts
it). Each call carries its episode id in the request `_meta` (`fanout-rl/episode`), so a stateful server
(the apps server, data/apps/server.py) keeps one state per episode, and its question's partition when it has
one (`fanout-rl/partition`: the apps server's training world); `episode_state` / `end_episode`
call the server's control tools when it has them.

Each server connection lives on an event loop of its own in a background thread: the `mcp` client is
bound to the loop that opened it, while the executor's callers run on loops of their own (a rollout
actor's, or a fresh one per `run_turn_sync`). Calls cross over with `asyncio.run_coroutine_threadsafe`.

What it simplifies on purpose: stdio servers only (no HTTP transport yet); results are shown as their
text content (other content as a placeholder); the tool list is read once, at start.

    source = McpToolSource(McpServerConfig(name="apps", command="python", args=["-m", "data.apps.server"]))
    tools = source.tools()                    # {"contacts_search": McpTool, ...}
    source.close()
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import json
import logging
import os
import sys
import threading
import weakref
from typing import Any, TextIO

import anyio
from mcp import types as mcp_types
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.stdio import stdio_client

from data.errors import ConfigError
from data.mcp_meta import CONTROL_META_KEY, EPISODE_META_KEY, PARTITION_META_KEY
from rollouts.config import McpServerConfig
from rollouts.tools import ToolFailure, ToolResult

logger = logging.getLogger(__name__)

# The transport is gone: the server exited or closed its pipes. The next call starts it again.
CONNECTION_LOST = (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream, BrokenPipeError,
                   ConnectionError)
_LIVE_CONNECTIONS: "weakref.WeakSet[McpConnection]" = weakref.WeakSet()


class McpServerDied(ToolFailure):
    """The server process went away during a call."""


def server_parameters(config: McpServerConfig) -> StdioServerParameters:
    """The subprocess of a configured server: "python" is this interpreter, and fanout's PYTHONPATH is
    passed on (so `-m data.apps.server` imports the same code as fanout) unless `env` sets it."""
    command = sys.executable if config.command == "python" else config.command
    inherited = {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}
    return StdioServerParameters(command=command, args=list(config.args), env={**inherited, **config.env})


def server_error_stream() -> TextIO:
    """Where a server's stderr goes: this process's stderr when it is a real file. The `mcp` SDK's default is
    the sys.stderr of the moment it was imported, which under a notebook or a capturing test runner is an
    object without a file descriptor, and then no server can start (io.UnsupportedOperation: fileno)."""
    for stream in (sys.stderr, sys.__stderr__):
        try:
            if stream is not None:
                stream.fileno()
                return stream
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
            continue
    global _DEVNULL
    if _DEVNULL is None:
        _DEVNULL = open(os.devnull, "w")  # noqa: SIM115 - kept open for every later server
    return _DEVNULL


_DEVNULL: TextIO | None = None


def result_text(result: mcp_types.CallToolResult) -> str:
    """What the model sees of a tool result: its text content, or the structured content as JSON."""
    parts = []
    for block in result.content:
        parts.append(block.text if isinstance(block, mcp_types.TextContent) else f"[{block.type} content]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)


class McpConnection:
    """One MCP server subprocess and the client session to it, owned by a background event loop.

    `call_tool` may be awaited from any event loop (and `call_tool_sync` from plain code); the server is
    started on the first call, and started again on the call after it died.
    """

    def __init__(self, config: McpServerConfig):
        self.config = config
        self.parameters = server_parameters(config)
        self.starts = 0  # server processes started (the first start, then restarts)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"mcp-{config.name}", daemon=True)
        self._thread.start()
        self._client: Client | None = None
        self._stop: asyncio.Event | None = None
        self._serve_task: asyncio.Task | None = None
        self._lock: asyncio.Lock | None = None
        self._closed = False
        _LIVE_CONNECTIONS.add(self)

    @property
    def restarts(self) -> int:
        return max(self.starts - 1, 0)

    def _submit(self, coroutine) -> concurrent.futures.Future:
        if self._closed:
            coroutine.close()
            raise ToolFailure(f"MCP server {self.config.name!r}: the connection is closed")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    async def call_tool(self, name: str, arguments: dict, episode_id: str = "",
                        partition: str | None = None) -> mcp_types.CallToolResult:
        """tools/call on the server (cancelling the await cancels the request)."""
        return await asyncio.wrap_future(self._submit(self._call_tool(name, arguments, episode_id, partition)))

    def call_tool_sync(self, name: str, arguments: dict, episode_id: str = "") -> mcp_types.CallToolResult:
        return self._submit(self._call_tool(name, arguments, episode_id)).result()

    def list_tools_sync(self) -> list[mcp_types.Tool]:
        return self._submit(self._list_tools()).result()

    # -- on the connection's loop ---------------------------------------------------------------

    async def _connected(self) -> Client:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._client is None:
                await self._start()
            return self._client

    async def _start(self) -> None:
        ready: asyncio.Future = self._loop.create_future()
        self._stop = asyncio.Event()
        self.starts += 1
        self._serve_task = self._loop.create_task(self._serve(ready, self._stop))
        try:
            self._client = await asyncio.wait_for(ready, self.config.startup_timeout_s)
        except asyncio.TimeoutError:
            self._stop.set()
            raise ToolFailure(f"MCP server {self.config.name!r} did not start within "
                              f"{self.config.startup_timeout_s:g} s (tools.mcp_servers.startup_timeout_s)") from None
        except Exception as error:
            raise ToolFailure(f"MCP server {self.config.name!r} could not start ({self.parameters.command} "
                              f"{' '.join(self.parameters.args)}): {type(error).__name__}: {error}") from None
        if self.starts > 1:
            logger.warning("MCP server %r started again (restart %d)", self.config.name, self.restarts)

    async def _serve(self, ready: asyncio.Future, stop: asyncio.Event) -> None:
        """Holds the client session open (the `async with` must enter and exit in one task) until `stop`."""
        try:
            # no session-wide read timeout: it would also bound the handshake of a slowly starting server
            async with Client(stdio_client(self.parameters, errlog=server_error_stream())) as client:
                ready.set_result(client)
                await stop.wait()
        except BaseException as error:  # noqa: BLE001 - a dead server must not take the loop down
            if not ready.done():
                ready.set_exception(error if isinstance(error, Exception) else RuntimeError(repr(error)))
            elif not isinstance(error, asyncio.CancelledError):
                logger.info("MCP server %r session ended: %s", self.config.name, error)

    async def _drop(self, client: Client) -> None:
        """Forget a dead session (once, whichever call noticed first) and let its serve task clean up."""
        if self._client is client:
            self._client = None
            self._stop.set()
            if self._serve_task is not None:
                await asyncio.wait({self._serve_task}, timeout=10)

    async def _call_tool(self, name: str, arguments: dict, episode_id: str,
                         partition: str | None = None) -> mcp_types.CallToolResult:
        client = await self._connected()
        meta = {EPISODE_META_KEY: episode_id} if episode_id else {}
        if partition:
            meta[PARTITION_META_KEY] = partition
        try:
            # The executor enforces timeout_s (and cancels the call); this only bounds calls made without it
            # (the control tools), well after the executor's timeout so the two never race.
            return await client.call_tool(name, arguments, read_timeout_seconds=2 * self.config.timeout_s + 5,
                                          meta=meta or None)
        except MCPError as error:
            if error.code != mcp_types.CONNECTION_CLOSED:
                raise ToolFailure(f"MCP server {self.config.name!r} refused {name}: {error}") from None
            failure = error
        except CONNECTION_LOST as error:
            failure = error
        await self._drop(client)
        raise McpServerDied(f"MCP server {self.config.name!r} exited during {name} ({failure}); "
                            "it is started again on the next call")

    async def _list_tools(self) -> list[mcp_types.Tool]:
        client = await self._connected()
        tools, cursor = [], None
        while True:
            page = await client.list_tools(cursor=cursor)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                return tools

    async def _shutdown(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._serve_task is not None:
            await asyncio.wait({self._serve_task}, timeout=10)

    def close(self) -> None:
        """Stop the server process and the connection's loop (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=15)
        except Exception as error:  # closing must not raise: the process is being torn down anyway
            logger.warning("MCP server %r did not shut down cleanly: %s", self.config.name, error)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


@atexit.register
def _close_live_connections() -> None:
    for connection in list(_LIVE_CONNECTIONS):
        connection.close()


class McpTool:
    """One tool of an MCP server, as the ToolExecutor sees a tool (name, description, schema, async call)."""

    takes_episode = True  # the executor passes each call's episode id
    takes_corpus_partition = True  # and its question's partition (the apps server's training world)

    def __init__(self, connection: McpConnection, listed: mcp_types.Tool):
        self.connection = connection
        self.name = listed.name
        self.description = listed.description or listed.title or listed.name
        self.parameters = dict(listed.input_schema)
        self.timeout_s = connection.config.timeout_s

    async def call(self, arguments: dict, episode_id: str = "", corpus_partition: str | None = None) -> ToolResult:
        result = await self.connection.call_tool(self.name, arguments, episode_id, corpus_partition)
        text = result_text(result)
        if result.is_error:
            return ToolResult(observation=f"Error: {text}", error=text or f"{self.name} failed")
        return ToolResult(observation=text)


def is_control_tool(listed: mcp_types.Tool) -> bool:
    return bool((listed.meta or {}).get(CONTROL_META_KEY))


class McpToolSource:
    """The tools one configured MCP server offers the model, and its episode controls."""

    def __init__(self, config: McpServerConfig):
        if not config.name or not config.command:
            raise ConfigError(f"tools.mcp_servers: every server needs a name and a command, got name="
                              f"{config.name!r} command={config.command!r}")
        self.config = config
        self.connection = McpConnection(config)
        try:
            listed = self.connection.list_tools_sync()
        except Exception as error:
            self.connection.close()
            raise ConfigError(f"tools.mcp_servers[{config.name}]: {error}") from None
        self.control_tools = {tool.name for tool in listed if is_control_tool(tool)}
        offered = {tool.name: tool for tool in listed if tool.name not in self.control_tools}
        missing = [name for name in config.allowed_tools if name not in offered]
        if missing:
            raise ConfigError(f"tools.mcp_servers[{config.name}].allowed_tools names {missing}, which the server "
                              f"does not list; it lists: {', '.join(sorted(offered)) or 'no tools'}")
        chosen = config.allowed_tools or sorted(offered)
        self._tools = {name: McpTool(self.connection, offered[name]) for name in chosen}

    def tools(self) -> dict[str, McpTool]:
        return dict(self._tools)

    def episode_state(self, episode_id: str) -> Any:
        """The episode's state as the server's `episode_state` control tool reports it (None without one)."""
        if "episode_state" not in self.control_tools:
            return None
        result = self.connection.call_tool_sync("episode_state", {}, episode_id)
        if result.is_error:
            raise ToolFailure(f"MCP server {self.config.name!r}: episode_state failed: {result_text(result)}")
        return json.loads(result_text(result))

    def end_episode(self, episode_id: str) -> None:
        if "episode_end" in self.control_tools:
            self.connection.call_tool_sync("episode_end", {}, episode_id)

    def close(self) -> None:
        self.connection.close()


def build_mcp_sources(servers: list[McpServerConfig]) -> list[McpToolSource]:
    """One started source per configured server; names must be unique (closes what it started on error)."""
    names = [server.name for server in servers]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"tools.mcp_servers: server names must be unique, {duplicates} come twice")
    sources: list[McpToolSource] = []
    try:
        for server in servers:
            sources.append(McpToolSource(server))
    except Exception:
        for source in sources:
            source.close()
        raise
    return sources


__all__ = ["McpConnection", "McpServerDied", "McpTool", "McpToolSource", "build_mcp_sources", "result_text",
           "server_parameters"]
