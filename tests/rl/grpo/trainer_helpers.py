"""Shared builders for the trainer and checkpoint tests: a tiny Qwen2, configs, synthetic groups."""

from __future__ import annotations

import torch
import transformers
from tiny_models import tiny_qwen2

from data.types import Question
from rl.config import ExperimentConfig
from data.trajectory import Group, Trajectory

VOCAB_SIZE = 64
QUESTION = Question(id="q", question="Who?", answers=["x"])


def tiny_model(seed: int = 0) -> transformers.Qwen2ForCausalLM:
    return tiny_qwen2(vocab_size=VOCAB_SIZE, seed=seed)


def trainer_config(zero_stage: int = 0, **grpo_overrides) -> ExperimentConfig:
    config = ExperimentConfig()
    config.deepspeed.zero_stage = zero_stage
    config.rollout.questions_per_step = 2
    config.rollout.group_size = 4
    config.rollout.max_context_tokens = 32
    config.grpo.learning_rate = 1e-2
    config.grpo.minibatches_per_step = 2
    for key, value in grpo_overrides.items():
        setattr(config.grpo, key, value)
    return config


def synthetic_groups(
    seed: int = 1,
    num_groups: int = 2,
    group_size: int = 4,
    policy_version: int = 0,
    vocab_size: int = VOCAB_SIZE,
) -> list[Group]:
    """Groups with rewards alternating 0/1; the middle response tokens are a masked tool observation."""
    generator = torch.Generator().manual_seed(seed)
    groups = []
    for group in range(num_groups):
        trajectories = []
        for member in range(group_size):
            prompt_length = 3 + member % 3
            prompt = torch.randint(1, vocab_size, (prompt_length,), generator=generator).tolist()
            trajectory = Trajectory(
                question=QUESTION,
                prompt_ids=prompt,
                group_id=f"group-{group}",
                policy_version=policy_version,
                reward=float(member % 2),
            )
            behaviour = (-3.0 - torch.rand(6, generator=generator)).tolist()
            trajectory.append(
                torch.randint(1, vocab_size, (2,), generator=generator).tolist(), True, behaviour[:2]
            )
            trajectory.append(torch.randint(1, vocab_size, (2,), generator=generator).tolist(), False)
            trajectory.append(
                torch.randint(1, vocab_size, (2 + member % 2,), generator=generator).tolist(),
                True,
                behaviour[2 : 4 + member % 2],
            )
            trajectories.append(trajectory)
        groups.append(Group(f"group-{group}", QUESTION, trajectories, policy_version=policy_version))
    return groups


def trajectories_of(groups: list[Group]) -> list[Trajectory]:
    """The groups' trajectories in batch order (group after group), as the trainer collates them."""
    return [trajectory for group in groups for trajectory in group.trajectories]


def parameters(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().clone() for name, parameter in module.named_parameters()}
