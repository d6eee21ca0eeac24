"""Apps rewards on hand-built trajectories of a real generated task: verified success, efficiency against the
dependency depth, decomposition credit, the `apps` preset's totals, and QA trajectories left alone."""

from __future__ import annotations

import pytest

from data.apps.verify import gold_end_state
from data.apps.world import apps_questions, write_apps_world, load_apps_world
from data.config import AppsWorldConfig
from rewards import score_trajectory
from rewards.apps import apps_efficiency_score, decomposition_score, match_gold_rounds
from rewards.config import RewardConfig
from trajectory_builders import apps_trajectory, build_trajectory

APPS_PRESET = RewardConfig(preset="apps")
A, B, C = ({"name": name, "arguments": {"x": 1}} for name in ("a", "b", "c"))


def rounds_of(*rounds):
    return [[(call["name"], call["arguments"]) for call in calls] for calls in rounds]


@pytest.mark.parametrize("episode_rounds, expected", [
    (rounds_of([A, B], [C]), 1.0),
    (rounds_of([A], [B], [C]), 2 / 3),
    (rounds_of([A, B, C]), 1 / 3),
    (rounds_of([A, B]), 1 / 3),
    (rounds_of([C], [A, B]), 1 / 3),  # a-b grouped; c before what it needs
    ([], 0.0),
])
def test_decomposition_score_worked_cases(episode_rounds, expected):
    assert decomposition_score([[A, B], [C]], episode_rounds) == pytest.approx(expected)


def test_decomposition_needs_two_gold_calls_and_exact_arguments():
    assert decomposition_score([[A]], rounds_of([A])) is None
    wrong_b = {"name": "b", "arguments": {"x": 2}}
    assert match_gold_rounds([[A, B]], rounds_of([A, wrong_b])) == [0, None]
    assert decomposition_score([[A, B]], rounds_of([A, wrong_b])) == 0.0
    # a repeated call matches one gold call only
    assert match_gold_rounds([[A], [A]], rounds_of([A])) == [0, None]


@pytest.mark.parametrize("success, model_calls, min_rounds, expected", [
    (True, 4, 3, 1.0), (True, 6, 3, 4 / 6), (True, 2, 1, 1.0), (True, 5, 1, 2 / 5), (False, 4, 3, 0.0),
])
def test_apps_efficiency_score(success, model_calls, min_rounds, expected):
    assert apps_efficiency_score(success, model_calls, min_rounds) == pytest.approx(expected)


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("apps_world")
    write_apps_world(folder, AppsWorldConfig(seed=7, num_train=20, num_validation=10, num_test=45))
    return folder


@pytest.fixture(scope="module")
def meeting(world_dir):
    """(question, task, base state) of a schedule_meeting task: gold rounds of 2, 2 and 1 calls."""
    world = load_apps_world(world_dir)
    task = next(task for task in world.splits["test"] if task.family == "schedule_meeting"
                and [len(calls) for calls in task.gold_rounds] == [2, 2, 1])
    (question,) = apps_questions([task], world_dir)
    return question, task, world.base_state


def test_parallel_solution_earns_every_component(meeting):
    question, task, base_state = meeting
    trajectory = apps_trajectory(question, task.gold_rounds, task.answers[0], gold_end_state(task, base_state))
    breakdown = score_trajectory(trajectory, APPS_PRESET)
    assert breakdown.components == {"apps_success": 1.0, "format": 1.0, "apps_efficiency": 1.0,
                                    "apps_decomposition": 1.0}
    assert breakdown.total == pytest.approx(1.0 + 0.1 + 0.3 + 0.1)


def test_one_call_per_turn_solution_loses_efficiency_and_the_grouping_credit(meeting):
    question, task, base_state = meeting
    sequential = [[call] for calls in task.gold_rounds for call in calls]  # 5 tool turns + the answer
    trajectory = apps_trajectory(question, sequential, task.answers[0], gold_end_state(task, base_state))
    breakdown = score_trajectory(trajectory, APPS_PRESET)
    # 10 gold pairs: the 2 same-round pairs are split (no credit), the 8 cross-round pairs are in order
    assert breakdown.components["apps_decomposition"] == pytest.approx(8 / 10)
    assert breakdown.components["apps_efficiency"] == pytest.approx(4 / 6)  # (3 rounds + answer) / 6 calls
    assert breakdown.total == pytest.approx(1.0 + 0.1 + 0.3 * 4 / 6 + 0.1 * 0.8)


def test_a_wrong_end_state_or_answer_is_no_success_and_no_efficiency(meeting):
    question, task, base_state = meeting
    booked_nothing = apps_trajectory(question, task.gold_rounds[:2], task.answers[0], final_state=base_state)
    breakdown = score_trajectory(booked_nothing, APPS_PRESET)
    assert breakdown.components["apps_success"] == 0.0 and breakdown.components["apps_efficiency"] == 0.0
    # the 4 pairs with the missing create call earn nothing; the other 6 are right
    assert breakdown.components["apps_decomposition"] == pytest.approx(6 / 10)
    wrong_answer = apps_trajectory(question, task.gold_rounds, "17", gold_end_state(task, base_state))
    assert score_trajectory(wrong_answer, APPS_PRESET).components["apps_success"] == 0.0
    # no recorded state: the episode never reached the server, so the apps are as they started (nothing booked)
    unrecorded = apps_trajectory(question, task.gold_rounds, task.answers[0], final_state=None)
    assert score_trajectory(unrecorded, APPS_PRESET).components["apps_success"] == 0.0


def test_apps_rewards_do_not_apply_to_qa_trajectories():
    qa = build_trajectory(["<search>a</search>", "<answer>Paris</answer>"], structure="single")
    breakdown = score_trajectory(qa, APPS_PRESET)
    assert set(breakdown.components) == {"format"}
    assert breakdown.total == pytest.approx(0.1)


MIXED = RewardConfig(weights={"exact_match": 1.0, "format": 0.1, "efficiency": 0.3, "decomposition": 0.1},
                     environment_presets={"apps": "apps"})


def test_one_mixed_config_scores_each_sample_in_its_environment(meeting):
    """reward.environment_presets routes an apps task's sample to the apps preset; a QA sample keeps the weights."""
    question, task, base_state = meeting
    apps = apps_trajectory(question, task.gold_rounds, task.answers[0], gold_end_state(task, base_state))
    apps_breakdown = score_trajectory(apps, MIXED)
    assert apps_breakdown.components == score_trajectory(apps, APPS_PRESET).components
    assert apps_breakdown.weights == {"apps_success": 1.0, "format": 0.1, "apps_efficiency": 0.3,
                                      "apps_decomposition": 0.1}
    assert apps_breakdown.total == pytest.approx(1.5)
    qa = build_trajectory(["<search>a</search>", "<answer>Paris</answer>"], structure="single")
    qa_breakdown = score_trajectory(qa, MIXED)
    assert qa_breakdown.weights == MIXED.weights
    assert set(qa_breakdown.components) == {"exact_match", "format", "efficiency", "decomposition"}
    assert qa_breakdown.components["exact_match"] == 1.0
    assert qa_breakdown.total == pytest.approx(score_trajectory(qa, RewardConfig(weights=MIXED.weights)).total)


def test_an_environment_preset_for_qa_replaces_the_weights_of_qa_samples_only(meeting):
    question, task, base_state = meeting
    routed = RewardConfig(preset="apps", environment_presets={"qa": "searchr1"})
    qa = build_trajectory(["<search>a</search>", "<answer>Paris</answer>"], structure="single")
    assert score_trajectory(qa, routed).weights == {"em_format": 1.0}
    apps = apps_trajectory(question, task.gold_rounds, task.answers[0], gold_end_state(task, base_state))
    assert set(score_trajectory(apps, routed).weights) == {"apps_success", "format", "apps_efficiency",
                                                           "apps_decomposition"}
