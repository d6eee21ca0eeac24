"""Eval of apps episodes: `success` in every row, rows per dependency structure and per number of gold calls,
calls per round pooled over tool-calling rounds, and the table's success column (hand-built trajectories)."""

from __future__ import annotations

import pytest

from data.apps.verify import gold_end_state
from data.apps.world import apps_questions, load_apps_world, write_apps_world
from data.config import AppsWorldConfig
from rl.app.evaluate import format_table, summarize
from trajectory_builders import apps_trajectory, build_trajectory


@pytest.fixture(scope="module")
def world_and_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("apps_world")
    write_apps_world(folder, AppsWorldConfig(seed=7, num_train=20, num_validation=10, num_test=30))
    return load_apps_world(folder), folder


def first_task(world, structure, num_calls):
    return next(task for task in world.splits["test"] if task.structure == structure and task.num_calls == num_calls)


def test_apps_rows_report_success_by_structure_and_number_of_calls(world_and_dir):
    world, folder = world_and_dir
    independent = first_task(world, "independent", 3)
    chain = first_task(world, "chain", 2)
    questions = apps_questions([independent, chain, chain], folder)
    base = world.base_state
    trajectories = [
        # independent, 3 calls in one round, right: success, 1 round of 3 calls
        apps_trajectory(questions[0], independent.gold_rounds, independent.answers[0], gold_end_state(independent, base)),
        # chain done one call per turn, right
        apps_trajectory(questions[1], chain.gold_rounds, chain.answers[0], gold_end_state(chain, base)),
        # chain with its two calls grouped in one round and nothing written: the verifier rejects it
        apps_trajectory(questions[2], [[call for calls in chain.gold_rounds for call in calls]], chain.answers[0], base),
    ]
    rows = summarize(trajectories, "apps")["apps"]
    assert list(rows) == ["independent", "independent/3", "chain", "chain/2", "all"]
    assert rows["independent"]["success"] == 1.0 and rows["independent"]["subqueries_per_round"] == 3.0
    assert rows["independent"]["model_calls"] == 2.0 and rows["independent"]["tool_calls"] == 3.0
    assert rows["chain"]["n"] == 2 and rows["chain"]["success"] == 0.5
    assert rows["chain/2"]["success"] == 0.5
    # chain calls per round: (2 calls in 2 rounds + 2 calls in 1 round) / 3 rounds
    assert rows["chain"]["subqueries_per_round"] == pytest.approx(4 / 3)
    assert rows["all"]["success"] == pytest.approx(2 / 3) and rows["all"]["n"] == 3
    table = format_table({"apps": rows})
    assert "| success |" in table.splitlines()[0] and "| apps | chain | 2 |" in table


def test_qa_rows_have_no_success(world_and_dir):

    rows = summarize([build_trajectory(["<search>a</search>", "<answer>Paris</answer>"], structure="single")],
                     "world")["world"]
    assert "success" not in rows["single"] and "success" not in rows["all"]
    assert "success" not in format_table({"world": rows}).splitlines()[0]


def test_episode_rows_carry_the_gold_rounds_and_the_verifiers_verdict(world_and_dir, tmp_path):
    import json

    from rl.app.evaluate import write_episodes

    world, folder = world_and_dir
    chain = first_task(world, "chain", 2)
    (question,) = apps_questions([chain], folder)
    right = apps_trajectory(question, chain.gold_rounds, chain.answers[0], gold_end_state(chain, world.base_state))
    nothing_written = apps_trajectory(question, chain.gold_rounds, chain.answers[0], world.base_state)
    path = write_episodes([("apps", right, "ckpt"), ("apps", nothing_written, "ckpt")], tmp_path / "episodes.jsonl")
    good, bad = (json.loads(line) for line in path.read_text().splitlines())
    assert good["gold_rounds"] == chain.gold_rounds and good["id"] == chain.id
    assert good["verdict"] == {"state_ok": True, "answer_ok": True, "problems": []}
    assert good["figures"]["success"] == 1.0 and good["prediction"] == chain.answers[0]
    assert [[call["name"] for call in turn["calls"]] for turn in good["turns"] if turn["calls"]] == \
        [[call["name"] for call in calls] for calls in chain.gold_rounds]
    assert bad["verdict"]["state_ok"] is False and bad["verdict"]["problems"] and bad["figures"]["success"] == 0.0
