"""The apps' MCP server: the 20 app tools over stdio, built with the `mcp` SDK, one app state per episode.

    python -m data.apps.server --seed 0                    # what tools.mcp_servers starts (docs/APPS.md)
    python -m data.apps.server --world-dir apps_world/     # the base states of a written world

It is a low-level `mcp.server.lowlevel.Server` (the tools' JSON schemas are declared in
data/apps/tools.py, not derived from Python signatures). `tools/list` returns the app tools plus two
control tools that a client keeps from the model (their `_meta` carries `"fanout-rl/control": true`):
`episode_state` (the episode's state as JSON) and `episode_end` (drop it).

Every call names its episode in the request's `_meta` as `"fanout-rl/episode": "<id>"`. The server keeps
one state per episode, created on the episode's first call as a copy of the base state, so concurrent
episodes never see each other's changes. A call without that key acts on the shared episode "". A written
world with training worlds (AppsWorldConfig.train_worlds) has one base state each: a call whose `_meta`
names `"fanout-rl/partition": "w1"` starts its episode from world w1's state (the partition of an episode's
first call decides). `episode_state` of an episode that made no call reports null: it has no state yet.
Calls run one at a time on the server's event loop (a tool is a few dictionary operations), so each
call is atomic; `--latency-ms` adds an awaited delay before each call, which models a remote API and
lets concurrent calls overlap. Arguments are validated against the tool's schema; a bad argument or a
refused request (AppError) comes back as a tool result with `isError: true` and the reason.

What it simplifies on purpose: episode states live in memory, at most `--max-episodes` of them (the
least recently used is dropped first); a restart of the server forgets every episode.
"""

from __future__ import annotations

import argparse
import json
from collections import OrderedDict
from pathlib import Path

import anyio
from mcp import types
from mcp.server.lowlevel.server import Server
from mcp.server.stdio import stdio_server

from data.apps.state import fresh_state, generate_base_state
from data.apps.tools import APP_TOOLS, AppError, call_app_tool
from data.apps.world import BASE_STATE_FILE, read_world_states
from data.config import AppsWorldConfig
from data.mcp_meta import CONTROL_META_KEY, EPISODE_META_KEY, PARTITION_META_KEY

EMPTY_OBJECT_SCHEMA = {"type": "object", "properties": {}, "additionalProperties": False}


class EpisodeStates:
    """episode id -> that episode's app state, created on first use from the base state of its world (the base
    world, or a training world named by its partition), LRU-bounded."""

    def __init__(self, base_state: dict, max_episodes: int = 4096, world_states: dict[str, dict] | None = None):
        self.base_state = base_state
        self.world_states = dict(world_states or {})
        self.max_episodes = max_episodes
        self.states: OrderedDict[str, dict] = OrderedDict()

    def start_state(self, partition: str) -> dict:
        if not partition:
            return self.base_state
        if partition not in self.world_states:
            raise AppError(f"this server holds no apps world {partition!r} (it holds "
                           f"{', '.join(sorted(self.world_states)) or 'only the base world'})")
        return self.world_states[partition]

    def peek(self, episode_id: str) -> dict | None:
        """The episode's state, None when it has made no call yet."""
        return self.states.get(episode_id)

    def get(self, episode_id: str, partition: str = "") -> dict:
        if episode_id not in self.states:
            self.states[episode_id] = fresh_state(self.start_state(partition))
            while len(self.states) > self.max_episodes:
                self.states.popitem(last=False)
        self.states.move_to_end(episode_id)
        return self.states[episode_id]

    def end(self, episode_id: str) -> bool:
        return self.states.pop(episode_id, None) is not None


def text_result(value: object, is_error: bool = False) -> types.CallToolResult:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=is_error)


def tool_list() -> list[types.Tool]:
    tools = [types.Tool(name=tool.name, description=tool.description, input_schema=tool.parameters)
             for tool in (APP_TOOLS[name] for name in APP_TOOLS.names())]
    control = {"episode_state": "The calling episode's app state as JSON (for the framework's verifier).",
               "episode_end": "Forget the calling episode's app state."}
    tools += [types.Tool(name=name, description=description, input_schema=EMPTY_OBJECT_SCHEMA,
                         meta={CONTROL_META_KEY: True}) for name, description in control.items()]
    return tools


def build_server(base_state: dict, latency_s: float = 0.0, max_episodes: int = 4096,
                 world_states: dict[str, dict] | None = None) -> Server:
    """The MCP server of the apps over `base_state` and the training worlds' states (not yet running)."""
    episodes = EpisodeStates(base_state, max_episodes, world_states)
    tools = tool_list()

    async def list_tools(context, params) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def call_tool(context, params: types.CallToolRequestParams) -> types.CallToolResult:
        meta = params.meta or {}
        episode_id, partition = str(meta.get(EPISODE_META_KEY, "")), str(meta.get(PARTITION_META_KEY) or "")
        if params.name == "episode_state":
            return text_result(episodes.peek(episode_id))  # null: no call yet
        if params.name == "episode_end":
            return text_result({"ended": episodes.end(episode_id)})
        if latency_s > 0:
            await anyio.sleep(latency_s)
        try:
            return text_result(call_app_tool(episodes.get(episode_id, partition), params.name, params.arguments or {}))
        except AppError as error:
            return text_result(str(error), is_error=True)

    server = Server("fanout-apps", on_list_tools=list_tools, on_call_tool=call_tool)
    server.episodes = episodes  # for in-process tests
    return server


async def serve_stdio(server: Server) -> None:
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m data.apps.server", description=__doc__.split("\n")[0])
    defaults = AppsWorldConfig()
    parser.add_argument("--seed", type=int, default=defaults.seed, help="apps world seed (AppsWorldConfig.seed)")
    parser.add_argument("--num-people", type=int, default=defaults.num_people)
    parser.add_argument("--num-products", type=int, default=defaults.num_products)
    parser.add_argument("--num-days", type=int, default=defaults.num_days)
    parser.add_argument("--world-dir", default="",
                        help="serve the base states of a written world instead (base_state.json, base_state-w<k>.json)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="awaited delay before every app tool call")
    parser.add_argument("--max-episodes", type=int, default=4096, help="episode states kept (least recent dropped)")
    return parser.parse_args(argv)


def states_from_arguments(arguments: argparse.Namespace) -> tuple[dict, dict[str, dict]]:
    """(the base world's state, {training world: its state}) the server serves."""
    if arguments.world_dir:
        folder = Path(arguments.world_dir)
        return json.loads((folder / BASE_STATE_FILE).read_text()), read_world_states(folder)
    return generate_base_state(AppsWorldConfig(seed=arguments.seed, num_people=arguments.num_people,
                                               num_products=arguments.num_products, num_days=arguments.num_days)), {}


def server_arguments(config: AppsWorldConfig, latency_ms: float = 0.0) -> list[str]:
    """The `args` of a tools.mcp_servers entry (command: python) that serves the base state of `config`."""
    arguments = ["-m", "data.apps.server", "--seed", str(config.seed), "--num-people", str(config.num_people),
                 "--num-products", str(config.num_products), "--num-days", str(config.num_days)]
    return arguments + (["--latency-ms", f"{latency_ms:g}"] if latency_ms else [])


def main(argv: list[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    base_state, world_states = states_from_arguments(arguments)
    server = build_server(base_state, latency_s=arguments.latency_ms / 1000, max_episodes=arguments.max_episodes,
                          world_states=world_states)
    anyio.run(serve_stdio, server)


if __name__ == "__main__":
    main()


__all__ = ["EpisodeStates", "build_server", "server_arguments"]
