"""Weighted totals, not-applicable components, NaN/exception containment, metrics, registry, config check."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest

from rewards import RewardBreakdown, get_reward, register_reward, registered_reward_names, score_trajectory
from rewards.compose import mean_metrics, score_group
from rewards.registry import REWARDS
from rl.config import ConfigError, load_config
from rewards.config import RewardConfig
from data.trajectory import Group

FAN_OUT = ["<search>age of A ## age of B</search>", "<answer>Paris</answer>"]
QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
DEFAULT_WEIGHTS = {"exact_match": 1.0, "format": 0.1, "efficiency": 0.3, "decomposition": 0.1}


@pytest.fixture
def extra_rewards(monkeypatch):
    """Register throw-away rewards for one test only."""

    def add(name, function):
        monkeypatch.setitem(REWARDS, name, function)

    return add


@pytest.mark.parametrize(
    "turns, expected_components, expected_total",
    [
        (
            FAN_OUT,
            {"exact_match": 1.0, "format": 1.0, "efficiency": 1.0, "decomposition": 1.0},
            1.0 + 0.1 + 0.3 + 0.1,
        ),
        (
            ["<search>a</search>", "<search>b</search>", "<answer>Paris</answer>"],
            {"exact_match": 1.0, "format": 1.0, "efficiency": 2 / 3, "decomposition": 0.0},
            1.0 + 0.1 + 0.2,
        ),
        (
            ["<search>a ## b</search>", "<answer>Lyon</answer>"],
            {"exact_match": 0.0, "format": 1.0, "efficiency": 0.0, "decomposition": 1.0},
            0.1 + 0.1,
        ),
        (["<<<garbage"], {"exact_match": 0.0, "format": 0.0, "efficiency": 0.0, "decomposition": 0.0}, 0.0),
    ],
)
def test_weighted_total(make_trajectory, turns, expected_components, expected_total):
    trajectory = make_trajectory(turns, structure="parallel")
    breakdown = score_trajectory(trajectory, RewardConfig(weights=dict(DEFAULT_WEIGHTS)))
    assert breakdown.components == pytest.approx(expected_components)
    assert breakdown.total == pytest.approx(expected_total)
    assert (breakdown.nonfinite, breakdown.errors) == ([], [])


def test_not_applicable_component_is_left_out(make_trajectory, extra_rewards):
    extra_rewards("test_not_applicable", lambda trajectory, config: None)
    config = RewardConfig(weights={"exact_match": 1.0, "test_not_applicable": 100.0})
    breakdown = score_trajectory(make_trajectory(FAN_OUT), config)
    assert breakdown.components == {"exact_match": 1.0}
    assert breakdown.total == 1.0


@pytest.mark.parametrize("bad_value", [math.nan, math.inf, -math.inf])
def test_nonfinite_component_counts_zero_and_is_flagged(make_trajectory, extra_rewards, bad_value):
    extra_rewards("test_bad_value", lambda trajectory, config: bad_value)
    breakdown = score_trajectory(
        make_trajectory(FAN_OUT), RewardConfig(weights={"exact_match": 1.0, "test_bad_value": 1.0})
    )
    assert breakdown.components["test_bad_value"] == 0.0
    assert breakdown.total == 1.0
    assert breakdown.nonfinite == ["test_bad_value"]


def test_raising_component_counts_zero_is_flagged_and_logged_once(make_trajectory, extra_rewards, caplog):
    def broken(trajectory, config):
        raise RuntimeError("boom")

    extra_rewards("test_broken", broken)
    config = RewardConfig(weights={"exact_match": 1.0, "test_broken": 1.0})
    with caplog.at_level(logging.WARNING, logger="rewards.compose"):
        first = score_trajectory(make_trajectory(FAN_OUT), config)
        second = score_trajectory(make_trajectory(FAN_OUT), config)
    assert (first.total, first.errors, second.errors) == (1.0, ["test_broken"], ["test_broken"])
    assert first.to_metrics()["reward/failed_components"] == 1.0
    assert [record.message.count("'test_broken' raised RuntimeError: boom") for record in caplog.records] == [
        1
    ]


def test_overflowing_total_is_zero_and_flagged(make_trajectory, extra_rewards):
    extra_rewards("test_huge", lambda trajectory, config: 1e308)
    breakdown = score_trajectory(make_trajectory(FAN_OUT), RewardConfig(weights={"test_huge": 10.0}))
    assert (breakdown.total, breakdown.nonfinite) == (0.0, ["total"])


def test_zero_weight_component_is_logged_but_not_trained_on(make_trajectory):
    breakdown = score_trajectory(
        make_trajectory(FAN_OUT), RewardConfig(weights={"exact_match": 1.0, "f1": 0.0})
    )
    assert breakdown.components == {"exact_match": 1.0, "f1": 1.0}
    assert breakdown.total == 1.0


def test_unknown_reward_name_raises_with_the_registered_names(make_trajectory):
    with pytest.raises(KeyError, match="decomposition, efficiency"):
        score_trajectory(make_trajectory(FAN_OUT), RewardConfig(weights={"exact_mach": 1.0}))


def test_to_metrics_keys_and_values():
    breakdown = RewardBreakdown(
        components={"exact_match": 1.0, "format": 0.0},
        weights={},
        total=1.0,
        counts={"model_calls": 2.0},
        nonfinite=["x"],
    )
    assert breakdown.to_metrics() == {
        "reward/total": 1.0,
        "reward/exact_match": 1.0,
        "reward/format": 0.0,
        "reward/stats/model_calls": 2.0,
        "reward/nonfinite_components": 1.0,
        "reward/failed_components": 0.0,
    }
    assert "eval/reward/total" in breakdown.to_metrics(prefix="eval/reward/")


def test_score_trajectory_counts(make_trajectory):
    breakdown = score_trajectory(make_trajectory(FAN_OUT), RewardConfig())
    assert breakdown.counts["model_calls"] == 2.0
    assert breakdown.counts["search_rounds"] == 1.0
    assert breakdown.counts["subqueries"] == 2.0
    assert breakdown.counts["subqueries_per_round"] == 2.0


def test_score_group_writes_rewards_back(make_trajectory):
    right, wrong = make_trajectory(FAN_OUT), make_trajectory(["<answer>Lyon</answer>"])
    group = Group(group_id="g", question=right.question, trajectories=[right, wrong], policy_version=0)
    config = RewardConfig(weights={"exact_match": 1.0, "format": 0.5})
    breakdowns = score_group(group, config)
    assert [b.total for b in breakdowns] == [1.5, 0.5]
    assert (right.reward, wrong.reward) == (1.5, 0.5)
    assert wrong.reward_components == {"exact_match": 0.0, "format": 1.0}
    untouched = make_trajectory(FAN_OUT)
    assert score_group([untouched], config, write_back=False)[0].total == 1.5 and untouched.reward == 0.0


def test_mean_metrics_averages_each_component_where_it_applied():
    breakdowns = [
        RewardBreakdown(components={"exact_match": 1.0, "f1": 0.5}, weights={}, total=1.0),
        RewardBreakdown(components={"exact_match": 0.0}, weights={}, total=0.0),
    ]
    metrics = mean_metrics(breakdowns)
    assert (metrics["reward/total"], metrics["reward/exact_match"], metrics["reward/f1"]) == (0.5, 0.5, 0.5)


def test_registry_refuses_duplicates_and_names_valid_choices():
    with pytest.raises(ValueError, match="'exact_match' is already registered"):
        register_reward("exact_match")(lambda trajectory, config: 0.0)
    with pytest.raises(KeyError, match="unknown reward 'nope'; registered: apps_decomposition, apps_efficiency, apps_success, decomposition"):
        get_reward("nope")
    assert {"exact_match", "format", "efficiency", "decomposition", "f1", "em_format"} <= set(
        registered_reward_names()
    )


def test_config_validation_uses_the_registry():
    from rl.app.registries import load_experiment

    assert load_experiment(QUICKSTART, []).reward.weights["decomposition"] == 0.1
    with pytest.raises(ConfigError, match=r"key 'reward.weights': unknown reward\(s\) \['bogus'\]; registered: .*'exact_match'"):
        load_experiment(QUICKSTART, ["reward.weights={bogus: 1.0}"])
    # the schema alone does not know the registry: it loads the unknown name as written
    assert load_config(QUICKSTART, ["reward.weights={bogus: 1.0}"]).reward.weights == {"bogus": 1.0}
