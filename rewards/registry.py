"""The reward registry: `REWARDS`, a `data.registry.Registry` of reward functions, and its decorator.

A reward is a plain callable `fn(trajectory, config) -> float | None`, registered under a name that
configs weight in `reward.weights`. `None` means "not applicable to this trajectory": the component is
left out of the weighted total instead of counting as zero.

    @register_reward("my_bonus")
    def my_bonus(trajectory: Trajectory, config: RewardConfig) -> float | None:
        return 1.0 if trajectory.final_answer else 0.0

Registering a name twice is an error (two modules silently fighting over one name is a bug that only
shows up as a wrong reward curve). Importing `rewards` registers every built-in reward.
"""

from __future__ import annotations

from typing import Callable

from data.registry import Registry
from data.trajectory import Trajectory
from rewards.config import RewardConfig

RewardFunction = Callable[[Trajectory, RewardConfig], "float | None"]


REWARDS: Registry[RewardFunction] = Registry("reward")


def register_reward(name: str) -> Callable[[RewardFunction], RewardFunction]:
    """Decorator: register `fn(trajectory, config) -> float | None` under `name` (duplicates refused)."""
    return REWARDS.register(name)


def get_reward(name: str) -> RewardFunction:
    return REWARDS[name]  # a miss names the registered rewards


def registered_reward_names() -> list[str]:
    """Sorted names of every registered reward (rl/app/registries.py checks `reward.weights` against it)."""
    import rewards  # noqa: F401  (importing the package registers the built-in rewards)

    return REWARDS.names()
