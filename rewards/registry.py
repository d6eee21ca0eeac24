"""Name registries for rewards (and, reused by rewards/parsing.py, agent protocols and presets).

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

from typing import TYPE_CHECKING, Callable, Generic, TypeVar

if TYPE_CHECKING:
    from rl.config import RewardConfig
    from rollouts.trajectory import Trajectory

RewardFunction = Callable[["Trajectory", "RewardConfig"], "float | None"]

Entry = TypeVar("Entry")


class NamedRegistry(Generic[Entry]):
    """A dict of name -> entry that refuses duplicates and names the valid choices on a miss."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, entry: Entry) -> Entry:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty string name, got {name!r}")
        if name in self._entries:
            existing = self._entries[name]
            where = getattr(existing, "__module__", type(existing).__module__)
            raise ValueError(f"{self.kind} {name!r} is already registered (by {where}); pick another name")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[Entry], Entry]:
        """Decorator form of `add`."""

        def decorator(entry: Entry) -> Entry:
            return self.add(name, entry)

        return decorator

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


REWARDS: NamedRegistry[RewardFunction] = NamedRegistry("reward")


def register_reward(name: str) -> Callable[[RewardFunction], RewardFunction]:
    """Decorator: register `fn(trajectory, config) -> float | None` under `name` (duplicates refused)."""
    return REWARDS.register(name)


def get_reward(name: str) -> RewardFunction:
    return REWARDS.get(name)


def registered_reward_names() -> list[str]:
    """Sorted names of every registered reward (rl/config.py validates `reward.weights` against it)."""
    import rewards  # noqa: F401  (importing the package registers the built-in rewards)

    return REWARDS.names()
