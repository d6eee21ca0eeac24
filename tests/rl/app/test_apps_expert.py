"""The scripted apps solver through the real agent loop, the function-call protocol and the apps MCP server:
its episodes pass their verifiers in both modes with the expected number of model calls, concurrent
episodes keep their own state, and a script that skips a write fails its verifier."""

from __future__ import annotations

import copy
import tarfile
from pathlib import Path

import pytest

from data.apps.server import server_arguments
from data.apps.world import generate_apps_world
from data.config import AppsWorldConfig, RetrieverConfig
from rl.app.apps_expert import play_apps_tasks, round_notes, solve_apps_tasks, solver_actions
from rollouts.config import McpServerConfig, RolloutConfig, ToolsConfig
from rollouts.protocols import build_protocol
from rollouts.tools import build_tools

QWEN2_TOKENIZER_ARCHIVE = Path(__file__).parents[2] / "fixtures" / "qwen2-tokenizer.tgz"  # tests/conftest.py's

WORLD_CONFIG = AppsWorldConfig(seed=7, num_train=30, num_validation=15, num_test=30)
ROLLOUT = RolloutConfig(protocol="function_call", max_turns=8, max_new_tokens_per_turn=512,
                        max_context_tokens=12000, max_observation_tokens=600)


@pytest.fixture(scope="module")
def world():
    return generate_apps_world(WORLD_CONFIG)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, qwen25_chat_template):
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("qwen2-tokenizer")
    with tarfile.open(QWEN2_TOKENIZER_ARCHIVE) as archive:
        archive.extractall(folder, filter="data")
    tokenizer = copy.copy(AutoTokenizer.from_pretrained(folder / "qwen2-tok", local_files_only=True))
    tokenizer.chat_template = qwen25_chat_template  # a template with native tool calls and tool messages
    return tokenizer


@pytest.fixture(scope="module")
def executor():
    server = McpServerConfig(name="apps", command="python", args=server_arguments(WORLD_CONFIG),
                             startup_timeout_s=180, timeout_s=30)
    executor = build_tools(ToolsConfig(enabled=[], mcp_servers=[server], max_calls_per_turn=8),
                           RetrieverConfig(), retriever=None)
    yield executor
    executor.close()


@pytest.fixture(scope="module")
def protocol(executor):
    return build_protocol("function_call", prompt_style="full", tool_schemas=executor.tool_schemas())


def all_test_and_validation(world):
    return world.splits["test"] + world.splits["validation"]


def one_task_per_family(world):
    tasks = {}
    for task in world.splits["test"] + world.splits["validation"]:
        tasks.setdefault(task.family, task)
    return list(tasks.values())


@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_the_solvers_episodes_pass_their_verifiers_with_the_expected_model_calls(mode, world, tokenizer, executor,
                                                                               protocol):
    tasks = one_task_per_family(world)
    assert {task.structure for task in tasks} == {"independent", "chain", "mixed"}
    episodes = solve_apps_tasks(tasks, [mode] * len(tasks), protocol, tokenizer, executor, world, ROLLOUT)
    for episode in episodes:
        task, trajectory = episode.task, episode.trajectory
        assert episode.verdict.success, (task.family, episode.verdict.problems)
        assert trajectory.final_answer == task.answers[0] and not trajectory.truncated
        expected_calls = task.min_rounds + 1 if mode == "parallel" else task.num_calls + 1
        assert trajectory.model_calls == expected_calls, task.family
        assert trajectory.tool_calls == task.num_calls
        assert all(call.error is None for turn in trajectory.turns for call in turn.calls), task.family
        assert {call.episode_id for turn in trajectory.turns for call in turn.calls} == {trajectory.episode_id}
    assert len({episode.trajectory.episode_id for episode in episodes}) == len(episodes)


def test_round_notes_pair_each_value_a_round_reads_with_the_argument_that_fetched_it(world):
    state, tasks = world.base_state, all_test_and_validation(world)
    stock = next(task for task in tasks if task.family == "stock_total")
    skus = [call["arguments"]["sku"] for call in stock.gold_rounds[0]]
    assert round_notes(stock, state) == ["", " , ".join(f"{sku} {state['products'][sku]['stock']}" for sku in skus)]
    cancel = next(task for task in tasks if task.family == "cancel_from_note")
    path, order_id = cancel.gold_rounds[0][0]["arguments"]["path"], cancel.gold_rounds[1][0]["arguments"]["order_id"]
    assert round_notes(cancel, state) == ["", f"{path} {order_id}"]
    meeting = next(task for task in tasks if task.family == "schedule_meeting")
    names = [call["arguments"]["text"] for call in meeting.gold_rounds[0]]
    emails = [call["arguments"]["email"] for call in meeting.gold_rounds[1]]
    by_name = " , ".join(f"{name} {email}" for name, email in zip(names, emails))
    hour = meeting.gold_rounds[2][0]["arguments"]["hour"]
    # the common free hour is in every person's free hours: no single source, no note; the day is in the instruction
    assert round_notes(meeting, state) == ["", by_name, by_name] and f" {hour}" not in by_name
    reply = next(task for task in tasks if task.family == "reply_to_sender")
    # the reply's address is in two results (the contact and their message); the body is in the instruction
    assert round_notes(reply, state)[2] == ""


def test_the_solver_with_notes_writes_them_before_the_rounds_and_still_passes(world, tokenizer, executor, protocol):
    tasks = one_task_per_family(world)
    for mode in ("parallel", "sequential"):
        episodes = solve_apps_tasks(tasks, [mode] * len(tasks), protocol, tokenizer, executor, world, ROLLOUT,
                                    notes=True)
        for episode in episodes:
            assert episode.verdict.success, (mode, episode.task.family, episode.verdict.problems)
            written = "".join(turn.text for turn in episode.trajectory.turns)
            notes = [note for note in round_notes(episode.task, world.base_state) if note]
            assert [note for note in notes if f"<think> {note} </think>" in written] == notes
        stock = next(episode for episode in episodes if episode.task.family == "stock_total")
        assert stock.trajectory.turns[-2].text.startswith("<think> SKU-") and \
            stock.trajectory.turns[-2].calls[0].name == "calculator_sum"


def test_a_script_that_skips_the_final_write_fails_its_verifier(world, tokenizer, executor, protocol):
    task = next(task for task in world.splits["test"] if task.family == "schedule_meeting")
    actions = solver_actions(task, "parallel")
    skipped = actions[:-2] + actions[-1:]  # the lookups and the answer, but no calendar_create_event
    (episode,) = play_apps_tasks([task], [skipped], protocol, tokenizer, executor, world, ROLLOUT)
    assert episode.verdict.answer_ok and not episode.verdict.state_ok
    assert episode.verdict.problems[0].startswith("events: missing")
    assert episode.final_state is not None and episode.final_state["events"] == world.base_state["events"]


def test_training_world_tasks_play_on_their_own_world_over_the_served_world_dir(tmp_path, tokenizer, protocol):
    from data.apps.world import load_apps_world, write_apps_world
    from rl.app.apps_env import apps_server_config

    config = AppsWorldConfig(seed=7, num_train=80, num_validation=15, num_test=30, train_worlds=1)
    world = load_apps_world(write_apps_world(tmp_path, config))
    tasks = list({task.family: task for task in world.splits["train"] if task.world == "w1"}.values())
    server = apps_server_config(tmp_path)
    server.timeout_s = 30
    world_executor = build_tools(ToolsConfig(enabled=[], mcp_servers=[server], max_calls_per_turn=8),
                                 RetrieverConfig(), retriever=None)
    try:
        episodes = solve_apps_tasks(tasks, ["parallel"] * len(tasks), protocol, tokenizer, world_executor,
                                    world, ROLLOUT)
    finally:
        world_executor.close()
    assert len(tasks) == 10
    for episode in episodes:  # each episode ran on world w1: its end state and answer are w1's
        assert episode.verdict.success, (episode.task.family, episode.verdict.problems)
        assert all(call.error is None for turn in episode.trajectory.turns for call in turn.calls)
        assert episode.final_state["contacts"] == world.world_states["w1"]["contacts"] != world.base_state["contacts"]


def test_the_apps_solver_takes_notes_or_none_and_refuses_the_comparison_styles_by_name():
    from rl.config import ConfigError, load_config

    assert load_config("configs/apps_quickstart.yaml", ["sft.expert_think=notes"]).sft.expert_think == "notes"
    with pytest.raises(ConfigError, match="sft.expert_think.*'compare'.*apps solver"):
        load_config("configs/apps_quickstart.yaml", ["sft.expert_think=compare"])
