"""The train loop's metrics: each key has one owner, merged without one source overwriting another.

`rl.app.train._loop` runs here with a stand-in trainer and rollout manager (no model, no Ray), so the
test sees exactly which source each logged value came from: staleness and weight-sync time are the
manager's, the policy version is the trainer's. (The real trainer's metrics are checked in
tests/rl/grpo/test_trainer.py, the real run in tests/rl/app/test_train_e2e.py.)
"""

from __future__ import annotations

import pytest

from data.trajectory import Group, Trajectory
from data.types import Question
from rl.app.train import _loop, merge_owned_metrics
from rl.config import ExperimentConfig

QUESTION = Question(id="q", question="Who?", answers=["x"], structure="single")
CONTRACT_KEYS = ("reward/total", "reward/exact_match", "rollout/model_calls", "async/staleness_mean",
                 "perf/samples_per_s")


def _groups(num_groups: int) -> list[Group]:
    groups = []
    for index in range(num_groups):
        trajectories = [
            Trajectory(question=QUESTION, prompt_ids=[1], reward=float(member % 2),
                       reward_components={"exact_match": float(member % 2)})
            for member in range(2)
        ]
        groups.append(Group(f"g{index}", QUESTION, trajectories, policy_version=0))
    return groups


class StandInTrainer:
    """Reports what GRPOTrainer.step reports about versions: the policy version, never staleness."""

    def __init__(self, extra_metrics: dict[str, float] | None = None):
        self.version, self.trained, self.extra_metrics = 0, [], extra_metrics or {}

    def step(self, groups):
        self.trained.append(groups)
        self.version += 1
        return {"loss/policy": -0.5, "async/policy_version": float(self.version), **self.extra_metrics}

    def export_weights(self, kind="full", main_process_only=False):
        return {}


class StandInManager:
    """Serves fixed groups; its stats own staleness and the weight-sync time."""

    def __init__(self):
        self.pushed_versions = []

    def get_batch(self, num_groups, current_version):
        return _groups(num_groups)

    def push_weights(self, state_dict, version):
        self.pushed_versions.append(version)
        return 99.0  # seconds blocked: reported through stats(), not by the caller

    def stats(self):
        return {"async/staleness_mean": 0.5, "async/staleness_max": 1.0, "perf/weight_sync_s": 0.25}


class RowsLogger:
    def __init__(self):
        self.rows = []

    def log(self, step, metrics):
        self.rows.append({"step": step, **metrics})


def _config(total_steps: int = 2) -> ExperimentConfig:
    config = ExperimentConfig()
    config.grpo.total_steps = total_steps
    config.rollout.questions_per_step = 2
    config.checkpoint.every_steps = 0
    config.logging.progress_bar = False
    return config


def test_each_step_metric_comes_from_its_one_owner(tmp_path):
    trainer, manager, logger = StandInTrainer(), StandInManager(), RowsLogger()
    _loop(_config(), trainer, manager, logger, tmp_path, start_step=0)
    assert [len(groups) for groups in trainer.trained] == [2, 2]  # the manager's groups, as returned
    assert manager.pushed_versions == [1, 2]
    assert [row["async/policy_version"] for row in logger.rows] == [1.0, 2.0]  # the trainer's
    for row in logger.rows:
        assert row["async/staleness_mean"] == 0.5 and row["async/staleness_max"] == 1.0  # the manager's
        assert row["perf/weight_sync_s"] == 0.25  # the manager's stats, not push_weights' return value
        assert row["reward/total"] == 0.5 and row["reward/exact_match"] == 0.5  # the trained groups'
        assert row["perf/samples_per_s"] > 0  # the loop's
        assert row["perf/world_size"] == 1.0  # the loop's: one process, no launcher
        for key in CONTRACT_KEYS:
            assert key in row, key


@pytest.mark.parametrize("duplicate", ["async/staleness_mean", "perf/weight_sync_s", "perf/step_s"])
def test_the_loop_refuses_a_metric_reported_by_two_owners(tmp_path, duplicate):
    trainer = StandInTrainer(extra_metrics={duplicate: 0.0})
    with pytest.raises(ValueError, match=rf"{duplicate}' is reported by both the trainer and the"):
        _loop(_config(total_steps=1), trainer, StandInManager(), RowsLogger(), tmp_path, start_step=0)


class StandInEvaluator:
    """Due every second step; records which policy version it was handed."""

    def __init__(self):
        self.evaluated = []

    def is_due(self, step):
        return step % 2 == 0

    def evaluate(self, model_path, weights, version):
        self.evaluated.append((model_path, version))
        return {"eval/validation/world/all/em": 0.25 * version, "perf/eval_s": 1.5}


def test_the_periodic_evaluation_joins_the_rows_of_the_steps_it_is_due(tmp_path):
    trainer, evaluator, logger = StandInTrainer(), StandInEvaluator(), RowsLogger()
    _loop(_config(total_steps=5), trainer, StandInManager(), logger, tmp_path, start_step=0,
          periodic_evaluator=evaluator, model_path=tmp_path / "sft")
    assert evaluator.evaluated == [(tmp_path / "sft", 2), (tmp_path / "sft", 4)]  # the weights of that step
    assert [row.get("eval/validation/world/all/em") for row in logger.rows] == [None, 0.5, None, 1.0, None]
    assert all(row["reward/total"] == 0.5 for row in logger.rows)  # the step's own metrics are still there


def test_merge_owned_metrics_keeps_every_key_and_names_both_owners_of_a_clash():
    merged = merge_owned_metrics({"a": {"x/one": 1.0}, "b": {"x/two": 2.0}})
    assert merged == {"x/one": 1.0, "x/two": 2.0}
    with pytest.raises(ValueError, match=r"'x/one' is reported by both a and c"):
        merge_owned_metrics({"a": {"x/one": 1.0}, "b": {}, "c": {"x/one": 3.0}})


def test_repeated_calls_counts_a_call_written_again_in_its_round_or_later():
    from data.trajectory import ToolCall, Turn
    from rl.app.train import repeated_calls, rollout_metrics

    def search(query):
        return ToolCall(name="search", arguments={"query": query})

    a_born, b_born = "When was A born?", "When was B born?"
    repeating = Trajectory(question=QUESTION, prompt_ids=[1], turns=[
        Turn(text="", calls=[search(a_born), search("when was  a born?"), search(b_born)]),
        Turn(text="", calls=[search(b_born), ToolCall(name="lookup", arguments={"query": b_born})]),
        Turn(text="", answer="A")])
    distinct = Trajectory(question=QUESTION, prompt_ids=[1], turns=[
        Turn(text="", calls=[search(a_born), search(b_born)]), Turn(text="", answer="A")])
    assert repeated_calls(repeating) == 2  # the folded repeat of A and B again; the other tool's call is new
    assert repeated_calls(distinct) == 0
    metrics = rollout_metrics([Group("g", QUESTION, [repeating, distinct], policy_version=0)])
    assert metrics["rollout/repeated_calls"] == pytest.approx(1.0)
