"""MCP servers as tools: the apps server keeps one state per episode, any stdio server plugs in by config
alone and its calls of a turn run concurrently, and failures (kill, timeout, bad arguments) become error
observations followed by a restart."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import sys
import time

import pytest

from data.apps.verify import verify_task
from data.apps.world import generate_apps_world
from data.config import AppsWorldConfig, RetrieverConfig
from data.apps.server import server_arguments
from data.errors import ConfigError
from data.trajectory import ToolCall
from rl.config import load_config
from rollouts.config import McpServerConfig, ToolsConfig
from rollouts.environment import build_environment
from rollouts.tools import build_tools

WORLD_CONFIG = AppsWorldConfig(seed=5, num_train=30, num_validation=15, num_test=15)

TINY_SERVER = textwrap.dedent('''
    """A tiny MCP server for the tests: a slow echo that reports when it ran, its pid, and a crash."""
    import os
    import time

    import anyio
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("tiny")


    @server.tool()
    async def slow_echo(text: str, delay_s: float) -> str:
        """Echo the text after delay_s seconds; reports start and end times."""
        started = time.time()
        await anyio.sleep(delay_s)
        return f"{text}|{started}|{time.time()}"


    @server.tool()
    def pid() -> str:
        """The server's process id."""
        return str(os.getpid())


    if __name__ == "__main__":
        server.run("stdio")
''')


@pytest.fixture(scope="module")
def apps_world():
    return generate_apps_world(WORLD_CONFIG)


@pytest.fixture(scope="module")
def apps_executor():
    server = McpServerConfig(name="apps", command="python", args=server_arguments(WORLD_CONFIG), timeout_s=20,
                             startup_timeout_s=180)
    executor = build_tools(ToolsConfig(enabled=[], mcp_servers=[server], max_calls_per_turn=8), RetrieverConfig(),
                           retriever=None)
    yield executor
    executor.close()


@pytest.fixture(scope="module")
def tiny_server_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("mcp") / "tiny_server.py"
    path.write_text(TINY_SERVER)
    return path


def tiny_environment(path, **server_fields):
    """The tiny server plugged in by configuration alone, through the experiment config and build_environment."""
    fields = ", ".join(f"{key}: {value}" for key, value in {"name": "tiny", "command": "python",
                                                            "args": f"[{path}]", "startup_timeout_s": 180,
                                                            **server_fields}.items())
    config = load_config(None, ["tools.enabled=[]", f"tools.mcp_servers=[{{{fields}}}]",
                                "rollout.protocol=function_call", "tools.max_calls_per_turn=8"])
    return build_environment(config.rollout, config.tools, config.retriever)


def calls_of(episode_id: str, rounds_calls: list[dict]) -> list[ToolCall]:
    return [ToolCall(call["name"], dict(call["arguments"]), episode_id=episode_id) for call in rounds_calls]


def test_the_apps_server_lists_its_tools_with_schemas_and_keeps_control_tools_from_the_model(apps_executor):
    assert len(apps_executor.tools) == 20 and "episode_state" not in apps_executor.tools
    schema = next(s for s in apps_executor.tool_schemas() if s["function"]["name"] == "calendar_create_event")
    assert schema["function"]["parameters"]["required"] == ["title", "day", "hour", "attendees"]


def test_two_concurrent_episodes_on_one_server_keep_separate_state(apps_executor, apps_world):
    first, second = apps_executor.run_turns_sync([
        [ToolCall("files_write", {"path": "/mine.txt", "content": "episode a"}, episode_id="a")],
        [ToolCall("files_write", {"path": "/mine.txt", "content": "episode b"}, episode_id="b"),
         ToolCall("files_delete", {"path": "/docs/budget-agenda.txt"}, episode_id="b")],
    ])
    assert [call.error for call in first + second] == [None, None, None]
    reads = apps_executor.run_turns_sync([[ToolCall("files_read", {"path": "/mine.txt"}, episode_id="a")],
                                          [ToolCall("files_read", {"path": "/mine.txt"}, episode_id="b")],
                                          [ToolCall("files_read", {"path": "/mine.txt"}, episode_id="c")]])
    assert [turn[0].observation for turn in reads[:2]] == ["episode a", "episode b"]
    assert reads[2][0].error == "no file '/mine.txt'"  # a third episode starts from the base state
    state_a = apps_executor.episode_state("a")["apps"]
    assert "/docs/budget-agenda.txt" in state_a["files"]
    assert "/docs/budget-agenda.txt" not in apps_executor.episode_state("b")["apps"]["files"]
    apps_executor.end_episode("a")
    assert "apps" not in apps_executor.episode_state("a")  # forgotten: no state until its next call


def test_gold_rounds_played_concurrently_in_episodes_pass_their_verifiers(apps_executor, apps_world):
    tasks = [next(task for task in apps_world.splits["test"] if task.structure == structure)
             for structure in ("independent", "chain", "mixed")]
    for round_index in range(max(task.min_rounds for task in tasks)):
        turns = [calls_of(task.id, task.gold_rounds[round_index]) for task in tasks
                 if round_index < task.min_rounds]
        for turn in apps_executor.run_turns_sync(turns):
            assert all(call.error is None for call in turn), [call.observation for call in turn]
    for task in tasks:
        final_state = apps_executor.episode_state(task.id)["apps"]
        assert verify_task(task, apps_world.base_state, final_state, task.answers[0]).success, task.id
        assert not verify_task(task, apps_world.base_state, apps_world.base_state, task.answers[0]).state_ok or \
            task.family in ("stock_total", "busiest_person")


def test_app_refusals_and_bad_arguments_are_error_observations(apps_executor):
    refused, bad, unknown = apps_executor.run_turn_sync([
        ToolCall("shop_get_order", {"order_id": "o9999"}, episode_id="x"),
        ToolCall("calendar_free_hours", {"email": "a@b", "day": "monday"}, episode_id="x"),
        ToolCall("calendar_teleport", {}, episode_id="x"),
    ])
    assert refused.error == "no order 'o9999'" and refused.observation == "Error: no order 'o9999'"
    assert bad.error.startswith("bad arguments for calendar_free_hours: 'monday' is not of type 'integer'")
    assert unknown.error.startswith("unknown tool 'calendar_teleport'")


def test_an_external_server_plugged_in_by_config_runs_a_turns_calls_concurrently(tiny_server_path):
    environment = tiny_environment(tiny_server_path)
    try:
        assert set(environment.executor.tools) == {"slow_echo", "pid"}
        assert {schema["function"]["name"] for schema in environment.protocol.tool_schemas} == {"slow_echo", "pid"}
        delay_s, k = 0.5, 4
        started = time.perf_counter()
        calls = environment.executor.run_turn_sync(
            [ToolCall("slow_echo", {"text": f"call {i}", "delay_s": delay_s}) for i in range(k)])
        elapsed_s = time.perf_counter() - started
        records = [call.observation.split("|") for call in calls]
        assert [record[0] for record in records] == [f"call {i}" for i in range(k)]
        starts, ends = [float(record[1]) for record in records], [float(record[2]) for record in records]
        assert max(starts) < min(ends)  # every call started before any finished: they overlapped
        assert elapsed_s < 2 * delay_s < k * delay_s
    finally:
        environment.executor.close()


def test_a_killed_server_gives_error_observations_then_restarts(tiny_server_path):
    environment = tiny_environment(tiny_server_path)
    executor = environment.executor
    try:
        (first,) = executor.run_turn_sync([ToolCall("pid", {})])
        os.kill(int(first.observation), signal.SIGKILL)
        time.sleep(0.3)
        dead = executor.run_turn_sync([ToolCall("pid", {}) for _ in range(3)])
        # the call that meets the dead server is an error observation; a call issued after that meets the
        # restarted server
        assert dead[0].error.startswith("pid failed: McpServerDied: MCP server 'tiny' exited during pid")
        assert dead[0].observation == f"Error: {dead[0].error}"
        assert all(("exited" in call.error) if call.error else call.observation != first.observation
                   for call in dead)
        (after,) = executor.run_turn_sync([ToolCall("pid", {})])
        assert after.error is None and after.observation.isdigit() and after.observation != first.observation
        assert executor.sources[0].connection.restarts == 1
    finally:
        executor.close()


def test_a_call_past_the_servers_timeout_is_an_error_and_the_server_stays_usable(tiny_server_path):
    environment = tiny_environment(tiny_server_path, timeout_s=0.5)
    try:
        slow, quick = environment.executor.run_turn_sync([ToolCall("slow_echo", {"text": "x", "delay_s": 5}),
                                                          ToolCall("slow_echo", {"text": "y", "delay_s": 0})])
        assert slow.error == "slow_echo timed out after 0.5 s" and slow.latency_s < 2
        assert quick.error is None and quick.observation.startswith("y|")
        (again,) = environment.executor.run_turn_sync([ToolCall("pid", {})])
        assert again.error is None and environment.executor.sources[0].connection.restarts == 0
    finally:
        environment.executor.close()


def test_allowed_tools_filter_and_unknown_names_fail_naming_the_server(tiny_server_path):
    environment = tiny_environment(tiny_server_path, allowed_tools="[pid]")
    try:
        assert list(environment.executor.tools) == ["pid"]
        (refused,) = environment.executor.run_turn_sync([ToolCall("slow_echo", {"text": "x", "delay_s": 0})])
        assert refused.error.startswith("unknown tool 'slow_echo'; available tools: pid")
    finally:
        environment.executor.close()
    with pytest.raises(ConfigError, match=r"tools.mcp_servers\[tiny\].allowed_tools names \['teleport'\]"):
        tiny_environment(tiny_server_path, allowed_tools="[teleport]")


def test_a_server_that_cannot_start_is_a_config_error_naming_it(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("raise SystemExit(3)\n")
    server = McpServerConfig(name="broken", command="python", args=[str(broken)], startup_timeout_s=20)
    with pytest.raises(ConfigError, match=r"tools.mcp_servers\[broken\]: MCP server 'broken' could not start"):
        build_tools(ToolsConfig(enabled=[], mcp_servers=[server]), RetrieverConfig(), retriever=None)


def test_a_server_starts_when_this_processs_stderr_has_no_file_descriptor(tiny_server_path, monkeypatch):
    import io

    from rollouts.mcp_tools import server_error_stream

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a notebook's or a capturing runner's stderr
    assert server_error_stream() is sys.__stderr__
    environment = tiny_environment(tiny_server_path)
    try:
        (call,) = environment.executor.run_turn_sync([ToolCall("pid", {})])
        assert call.error is None and call.observation.isdigit()
    finally:
        environment.executor.close()
