"""Rollout actor faults: actors killed again and again mid-run are replaced and no question is lost.

Model-free stand-in actors (RolloutWorker's methods, a short sleep instead of a model) keep the test to
seconds; tests/rollouts/test_workers.py kills a real tiny-model actor once. Each kill hits an actor with
two one-question generate calls in flight; the manager must re-queue both, start a replacement that
loads the current weights, and keep delivering full batches.
"""

from __future__ import annotations

import time

import pytest
import ray
import torch

from data.types import Question
from rl.config import ExperimentConfig
from rollouts.manager import init_ray
from rl.app.rollout_setup import build_rollout_manager

QUESTIONS = [Question(id=f"q{index}", question=f"Question {index}?", answers=["a"]) for index in range(40)]
QUESTIONS_PER_STEP = 4
KILLS = 3


def make_slow_worker_class(generate_delay_s: float):
    """A Ray actor with RolloutWorker's methods and no model (built here so Ray pickles it by value)."""

    class SlowRolloutWorker:
        def __init__(self, config, setup):
            self.setup = setup
            self.loaded_version = setup.initial_version

        def generate(self, questions, group_size, version, seed):
            import time as time_module

            from data.trajectory import Group, Trajectory

            time_module.sleep(generate_delay_s)
            return [
                Group(
                    group_id=f"{question.id}-{seed}",
                    question=question,
                    policy_version=self.loaded_version,
                    worker_id=self.setup.worker_id,
                    trajectories=[
                        Trajectory(
                            question=question, prompt_ids=[1], reward=1.0, policy_version=self.loaded_version
                        )
                        for _ in range(group_size)
                    ],
                )
                for question in questions
            ]

        def update_weights(self, weights, version):
            self.loaded_version = version
            return 0.0

        def version(self):
            return self.loaded_version

    return ray.remote(SlowRolloutWorker)


@pytest.fixture(scope="module")
def ray_session():
    started_here = not ray.is_initialized()
    init_ray(num_cpus=2)
    yield
    if started_here:
        ray.shutdown()


def two_worker_config() -> ExperimentConfig:
    config = ExperimentConfig()
    config.rollout.num_workers = 2
    config.rollout.worker_num_cpus = 0.5
    config.rollout.group_size = 2
    config.rollout.questions_per_step = QUESTIONS_PER_STEP
    config.rollout.questions_per_worker_call = 1
    config.rollout.max_inflight_calls_per_worker = 2
    config.rollout.max_actor_replacements = KILLS
    config.async_.max_staleness = 0
    config.async_.max_buffered_groups = 16
    return config


def wait_until(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


# Batches may wait up to 300 s: on a loaded 2-core machine a replacement actor can take over a minute to import torch and
# start (a 120 s wait timed out at load 4-5); the assertions are about what is delivered, not how fast.
def test_repeated_actor_kills_lose_no_group_and_deliver_every_batch(ray_session):
    weights = {"layer.weight": torch.zeros(2, 2)}
    batches = []
    with build_rollout_manager(
        two_worker_config(), QUESTIONS, model_path="unused", actor_class=make_slow_worker_class(0.5)
    ) as manager:
        batches.append(manager.get_batch(QUESTIONS_PER_STEP, current_version=0, timeout=300))
        for version in range(1, KILLS + 1):
            manager.push_weights(weights, version=version)
            # the new version's 4 questions are in flight, 2 on each actor: kill one of them
            wait_until(
                lambda: manager.stats(reset_window=False)["async/inflight_groups"] == QUESTIONS_PER_STEP
            )
            ray.kill(manager.worker_handles()[version % 2])
            batches.append(manager.get_batch(QUESTIONS_PER_STEP, current_version=version, timeout=300))
        replacement_versions = ray.get([handle.version.remote() for handle in manager.worker_handles()])
        worker_ids = manager.worker_ids()
        stats = manager.stats()

    assert [len(batch) for batch in batches] == [QUESTIONS_PER_STEP] * (KILLS + 1)  # every batch delivered
    for version, batch in enumerate(batches):
        assert {group.policy_version for group in batch} == {version}
    question_ids = [group.question.id for batch in batches for group in batch]
    assert len(set(question_ids)) == QUESTIONS_PER_STEP * (KILLS + 1)  # re-queued once each, none skipped
    assert stats["rollout/actors_replaced"] == KILLS
    assert stats["rollout/requeued_questions"] == 2 * KILLS
    assert stats["rollout/groups_lost"] == 0
    assert stats["async/dropped_groups"] == 0
    assert replacement_versions == [KILLS, KILLS]  # replacements loaded the current weights
    assert sorted(worker_ids) == [3, 4]  # ids 0, 1 started; 2, 3, 4 replaced a killed actor in turn
