"""The apps MCP server, in process through the `mcp` SDK's Client: its tool list, one state per episode,
control tools, and refusals as error results."""

from __future__ import annotations

import asyncio
import json

from mcp import Client

from data.apps.server import build_server, parse_arguments, server_arguments
from data.apps.state import generate_base_state
from data.apps.tools import APP_TOOLS
from data.config import AppsWorldConfig
from data.mcp_meta import CONTROL_META_KEY, EPISODE_META_KEY, PARTITION_META_KEY

CONFIG = AppsWorldConfig(seed=2)


def run_with_client(body, **server_options):
    base_state = generate_base_state(CONFIG)
    server = build_server(base_state, **server_options)

    async def main():
        async with Client(server) as client:
            return await body(client, base_state)

    return asyncio.run(main())


def call(client, name, arguments, episode):
    return client.call_tool(name, arguments, meta={EPISODE_META_KEY: episode})


def text(result) -> str:
    return result.content[0].text


def test_the_server_lists_every_app_tool_with_its_schema_and_flags_the_control_tools():
    async def body(client, base_state):
        return (await client.list_tools()).tools

    tools = {tool.name: tool for tool in run_with_client(body)}
    assert set(tools) == set(APP_TOOLS) | {"episode_state", "episode_end"}
    assert tools["mail_send"].input_schema == APP_TOOLS["mail_send"].parameters
    assert [name for name, tool in tools.items() if (tool.meta or {}).get(CONTROL_META_KEY)] == [
        "episode_state", "episode_end"]


def test_each_episode_gets_its_own_state_and_episode_end_forgets_it():
    async def body(client, base_state):
        sku = next(sku for sku, product in base_state["products"].items() if product["stock"] >= 1)
        stock = base_state["products"][sku]["stock"]
        email = next(iter(base_state["contacts"].values()))["email"]
        placed = await asyncio.gather(*(call(client, "shop_place_order", {"sku": sku, "quantity": 1, "ship_to": email},
                                             episode) for episode in ("a", "b")))
        seen = [json.loads(text(await call(client, "shop_get_product", {"sku": sku}, episode)))["stock"]
                for episode in ("a", "b", "c")]
        state_a = json.loads(text(await call(client, "episode_state", {}, "a")))
        ended = json.loads(text(await call(client, "episode_end", {}, "a")))
        after_end = json.loads(text(await call(client, "shop_get_product", {"sku": sku}, "a")))["stock"]
        first_new_id = f"o{len(base_state['orders']) + 1:04d}"
        return stock, [json.loads(text(result)) for result in placed], seen, state_a, ended, after_end, first_new_id

    stock, placed, seen, state_a, ended, after_end, first_new_id = run_with_client(body)
    assert [order["id"] for order in placed] == [first_new_id] * 2  # the same first new id in each episode
    assert seen == [stock - 1, stock - 1, stock]  # each episode saw only its own order
    assert state_a["orders"][first_new_id]["quantity"] == 1
    assert ended == {"ended": True} and after_end == stock


def test_refusals_and_bad_arguments_are_error_results_not_protocol_errors():
    async def body(client, base_state):
        return [await call(client, "files_read", {"path": "/nope.txt"}, "a"),
                await call(client, "calendar_free_hours", {"email": "x", "day": 0}, "a"),
                await call(client, "calendar_teleport", {}, "a")]

    missing, bad, unknown = run_with_client(body)
    assert missing.is_error and text(missing) == "no file '/nope.txt'"
    assert bad.is_error and text(bad).startswith("bad arguments for calendar_free_hours: 0 is less than the minimum")
    assert unknown.is_error and text(unknown).startswith("unknown tool 'calendar_teleport'")


def test_the_latency_delays_calls_without_serialising_them():
    async def body(client, base_state):
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.gather(*(call(client, "files_list", {"folder": "/docs"}, f"e{i}") for i in range(4)))
        return loop.time() - started

    elapsed_s = run_with_client(body, latency_s=0.3)
    assert 0.3 <= elapsed_s < 0.9


def test_the_command_line_names_the_world_it_serves():
    arguments = parse_arguments(server_arguments(CONFIG, latency_ms=50)[2:])
    assert (arguments.seed, arguments.num_people, arguments.latency_ms) == (2, CONFIG.num_people, 50.0)


def test_an_episode_starts_from_the_training_world_its_partition_names():
    world_state = generate_base_state(CONFIG, world_index=1)

    async def body(client, base_state):
        def contact(episode, partition=None):
            meta = {EPISODE_META_KEY: episode} | ({PARTITION_META_KEY: partition} if partition else {})
            return client.call_tool("contacts_search", {"text": "@"}, meta=meta)

        in_world, in_base, unknown = await asyncio.gather(contact("a", "w1"), contact("b"), contact("c", "w9"))
        later = await contact("a")  # the episode keeps the state its first call started it from
        untouched = json.loads(text(await call(client, "episode_state", {}, "never-called")))
        return [json.loads(text(result)) for result in (in_world, in_base, later)], unknown, untouched

    (in_world, in_base, later), unknown, untouched = asyncio.run(_with_worlds(body, {"w1": world_state}))
    names = {contact["name"] for contact in world_state["contacts"].values()}
    assert {contact["name"] for contact in in_world} <= names and {contact["name"] for contact in later} <= names
    assert in_world and not {contact["name"] for contact in in_base} & names  # re-drawn names, none shared
    assert unknown.is_error and text(unknown) == "this server holds no apps world 'w9' (it holds w1)"
    assert untouched is None  # an episode that made no call has no state yet


async def _with_worlds(body, world_states):
    base_state = generate_base_state(CONFIG)
    async with Client(build_server(base_state, world_states=world_states)) as client:
        return await body(client, base_state)
