"""Numerical faults: a NaN/inf reward, log-prob or loss skips the step, logs it, and changes no parameter.

The trainer-level tests feed GRPOTrainer a batch with one poisoned value and compare every parameter
before and after. The loop-level test runs the real training loop (`rl.app.train`'s step loop, a real
RolloutManager with one model-free Ray actor, the DeepSpeed trainer on a tiny Qwen2) for three steps
where the actor's second batch carries a NaN reward: step 2 must be logged as skipped in
metrics.jsonl with the policy version unchanged, and the run must go on to train step 3.
"""

from __future__ import annotations

import math

import pytest
import ray
import torch
from tiny_models import tiny_qwen2

import rl.grpo.trainer as trainer_module
from data.types import Question
from rl.config import ExperimentConfig, LoggingConfig
from rl.app.metrics import MetricsLogger, read_metrics
from rl.grpo.trainer import GRPOTrainer
from rollouts.manager import init_ray
from rl.app.rollout_setup import build_rollout_manager
from data.trajectory import Group, Trajectory

VOCAB_SIZE = 64
QUESTION = Question(id="q", question="Who?", answers=["x"])


def tiny_model():
    return tiny_qwen2(vocab_size=VOCAB_SIZE, num_hidden_layers=1, tie_word_embeddings=False)


def trainer_config(zero_stage: int = 0) -> ExperimentConfig:
    config = ExperimentConfig()
    config.deepspeed.zero_stage = zero_stage
    config.rollout.questions_per_step, config.rollout.group_size = 1, 4
    config.rollout.max_context_tokens = 16
    config.grpo.learning_rate = 1e-2
    config.grpo.total_steps = 3
    config.checkpoint.every_steps = 0
    return config


def one_group_batch(question: Question, group_id: str, rewards: list[float], version: int = 0) -> list[Group]:
    """A batch of one GRPO group: prompt [1, 2, 3], 3 response tokens of behaviour log-prob -2 each."""
    trajectories = []
    for member, reward in enumerate(rewards):
        trajectory = Trajectory(
            question=question, prompt_ids=[1, 2, 3], group_id=group_id, reward=reward, policy_version=version
        )
        trajectory.append([4 + member, 5, 6], True, [-2.0, -2.0, -2.0])
        trajectories.append(trajectory)
    return [Group(group_id, question, trajectories, policy_version=version)]


def parameters(trainer: GRPOTrainer) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().clone() for name, parameter in trainer.module.named_parameters()}


def unchanged(trainer: GRPOTrainer, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(before[name], parameter) for name, parameter in trainer.module.named_parameters())


@pytest.fixture(scope="module")
def trainer() -> GRPOTrainer:
    torch.set_num_threads(1)
    return GRPOTrainer(trainer_config(), model=tiny_model())


@pytest.mark.parametrize("bad_reward", [math.nan, math.inf, -math.inf])
def test_a_nonfinite_reward_skips_the_step_and_changes_nothing(trainer, bad_reward):
    before, version = parameters(trainer), trainer.version
    metrics = trainer.step(one_group_batch(QUESTION, "g", [0.0, 1.0, bad_reward, 0.5]))
    assert metrics["loss/skipped_nonfinite"] == 1.0
    assert trainer.version == version and unchanged(trainer, before)


def test_a_nonfinite_behaviour_logprob_skips_the_step_and_changes_nothing(trainer):
    batch = one_group_batch(QUESTION, "g", [0.0, 1.0, 0.0, 1.0])
    batch[0].trajectories[1].behaviour_logprobs[-1] = math.nan
    before, version = parameters(trainer), trainer.version
    metrics = trainer.step(batch)
    assert metrics["loss/skipped_nonfinite"] == 1.0
    assert trainer.version == version and unchanged(trainer, before)


def test_an_infinite_loss_is_never_applied_and_the_next_step_is(trainer, monkeypatch):
    real_policy_loss = trainer_module.policy_loss

    def infinite_loss(*args, **kwargs):
        loss, metrics = real_policy_loss(*args, **kwargs)
        return loss * math.inf, metrics

    monkeypatch.setattr(trainer_module, "policy_loss", infinite_loss)
    before, version = parameters(trainer), trainer.version
    metrics = trainer.step(one_group_batch(QUESTION, "g", [0.0, 1.0, 0.0, 1.0]))
    assert metrics["loss/skipped_nonfinite"] == 1.0
    assert trainer.version == version and unchanged(trainer, before)
    monkeypatch.setattr(trainer_module, "policy_loss", real_policy_loss)
    metrics = trainer.step(one_group_batch(QUESTION, "g", [0.0, 1.0, 0.0, 1.0]))
    assert metrics["loss/skipped_nonfinite"] == 0.0 and trainer.version == version + 1
    assert not unchanged(trainer, before)
    assert all(bool(torch.isfinite(parameter).all()) for parameter in trainer.module.parameters())


# ------------------------------------------------------------------ through the training loop


def make_actor_with_a_nan_second_batch():
    """A model-free rollout actor whose second generate call returns a group with a NaN reward."""

    class NanOnSecondCall:
        def __init__(self, config_dict: dict, setup):
            self.setup, self.loaded_version, self.calls = setup, setup.initial_version, 0

        def generate(self, questions, group_size, version, seed):
            import math as math_module

            from data.trajectory import Group, Trajectory

            self.calls += 1
            groups = []
            for question in questions:
                group_id = f"{question.id}-{self.calls}"
                trajectories = []
                for member in range(
                    group_size
                ):  # as one_group_batch (a module function does not pickle)
                    reward = math_module.nan if self.calls == 2 and member == 0 else float(member % 2)
                    trajectory = Trajectory(
                        question=question,
                        prompt_ids=[1, 2, 3],
                        group_id=group_id,
                        reward=reward,
                        policy_version=self.loaded_version,
                    )
                    trajectory.append([4 + member, 5, 6], True, [-2.0, -2.0, -2.0])
                    trajectories.append(trajectory)
                groups.append(
                    Group(
                        group_id=group_id,
                        question=question,
                        trajectories=trajectories,
                        policy_version=self.loaded_version,
                        worker_id=self.setup.worker_id,
                    )
                )
            return groups

        def update_weights(self, weights, version):
            self.loaded_version = version
            return 0.0

    return ray.remote(NanOnSecondCall)


def test_a_nan_batch_in_the_training_loop_is_logged_as_skipped_and_the_run_goes_on(tmp_path):
    from rl.app.train import _loop

    torch.set_num_threads(1)
    started_here = not ray.is_initialized()
    init_ray(num_cpus=2)
    config = trainer_config()
    config.rollout.num_workers, config.rollout.worker_num_cpus = 1, 0.5
    config.rollout.questions_per_worker_call = 1
    config.async_.max_staleness = 0
    config.logging.progress_bar = False
    questions = [Question(id=f"q{index}", question=f"Question {index}?", answers=["x"]) for index in range(8)]
    trainer = GRPOTrainer(config, model=tiny_model())
    try:
        with build_rollout_manager(
            config, questions, model_path="unused", actor_class=make_actor_with_a_nan_second_batch()
        ) as manager:
            with MetricsLogger(tmp_path, LoggingConfig(wandb_mode="disabled")) as metrics_logger:
                _loop(config, trainer, manager, metrics_logger, tmp_path, start_step=0)
    finally:
        if started_here:
            ray.shutdown()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert [row["loss/skipped_nonfinite"] for row in rows] == [0.0, 1.0, 0.0]
    assert [row["async/policy_version"] for row in rows] == [1, 1, 2]
    assert rows[1]["reward/total"] is None  # the NaN is logged as null, keeping the file strict JSON
    assert trainer.version == 2
