"""Score a trajectory: every weighted reward component, their weighted total, and logging metrics.

    breakdown = score_trajectory(trajectory, config.reward)
    breakdown.total                 # sum(weight * value) over the applicable components
    breakdown.to_metrics()          # {"reward/total": …, "reward/exact_match": …,
                                    #  "reward/stats/model_calls": …}

The sample's preset (rewards/presets.py: `reward.environment_presets` for its question's environment, else
`reward.preset`) is applied first. A component returning None is not applicable
and left out of the total; a weight of 0 still computes and logs the component (watch a signal
without training on it). Scoring never raises on model output: a NaN/inf value counts as 0 and is
flagged in `nonfinite`, and a component that raises counts as 0, is flagged in `errors` and logged
once per (reward, exception type) — one broken sample must not end a long run, and the
`reward/failed_components` metric keeps the failure visible.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Iterable

from rewards.efficiency import episode_counts
from rewards.parsing import parse_trajectory
from rewards.presets import config_for_question, resolve_preset
from rewards.registry import get_reward

logger = logging.getLogger(__name__)
_reported_failures: set[tuple[str, str]] = set()


@dataclass
class RewardBreakdown:
    """Each component's value, the weighted total, and the episode's raw behaviour counts."""

    components: dict[str, float]  # raw (unweighted) value of every applicable component
    weights: dict[str, float]  # weights the total was computed with (after the preset)
    total: float
    counts: dict[str, float] = field(default_factory=dict)  # model_calls, search_rounds, subqueries, …
    nonfinite: list[str] = field(default_factory=list)  # components that returned NaN/inf (scored 0)
    errors: list[str] = field(default_factory=list)  # components that raised (scored 0)

    def to_metrics(self, prefix: str = "reward/") -> dict[str, float]:
        """Flat slash-namespaced metrics: total, one key per component, stats/<count>, failure counts."""
        metrics = {f"{prefix}total": self.total}
        metrics.update({f"{prefix}{name}": value for name, value in self.components.items()})
        metrics.update({f"{prefix}stats/{name}": value for name, value in self.counts.items()})
        metrics[f"{prefix}nonfinite_components"] = float(len(self.nonfinite))
        metrics[f"{prefix}failed_components"] = float(len(self.errors))
        return metrics


def _report_failure(name: str, error: Exception) -> None:
    key = (name, type(error).__name__)
    if key not in _reported_failures:
        _reported_failures.add(key)
        logger.warning(
            "reward %r raised %s: %s; it scores 0 for such trajectories (reported once)",
            name,
            type(error).__name__,
            error,
            exc_info=error,
        )


def safe_reward_value(name: str, reward_function, trajectory, config) -> tuple[float | None, str]:
    """(value, flag): the component as a finite float or None (not applicable); flag is "", "nonfinite" or
    "error", and a flagged value is 0.0."""
    try:
        value = reward_function(trajectory, config)
        if value is None:
            return None, ""
        value = float(value)
    except Exception as error:  # noqa: BLE001  (a reward bug must not kill the run; it is flagged and logged)
        _report_failure(name, error)
        return 0.0, "error"
    if not math.isfinite(value):
        return 0.0, "nonfinite"
    return value, ""


def score_trajectory(trajectory, reward_config) -> RewardBreakdown:
    """Weighted sum of the applicable components named in `reward_config.weights` (after the sample's preset)."""
    config = resolve_preset(config_for_question(reward_config, trajectory.question))
    breakdown = RewardBreakdown(components={}, weights=dict(config.weights), total=0.0)
    for name in config.weights:
        # get_reward outside the guard: an unknown name is a config error and raises, listing the valid ones
        value, flag = safe_reward_value(name, get_reward(name), trajectory, config)
        if flag:
            (breakdown.errors if flag == "error" else breakdown.nonfinite).append(name)
        if value is not None:
            breakdown.components[name] = value
    total = sum(config.weights[name] * value for name, value in breakdown.components.items())
    if not math.isfinite(total):
        breakdown.nonfinite.append("total")
        total = 0.0
    breakdown.total = float(total)
    breakdown.counts = episode_counts(parse_trajectory(trajectory))
    return breakdown


def score_group(trajectories, reward_config, write_back: bool = True) -> list[RewardBreakdown]:
    """Score a Group (or any list of trajectories); by default also fill `reward`/`reward_components`."""
    members = getattr(trajectories, "trajectories", trajectories)
    breakdowns = [score_trajectory(trajectory, reward_config) for trajectory in members]
    if write_back:
        for trajectory, breakdown in zip(members, breakdowns):
            trajectory.reward = breakdown.total
            trajectory.reward_components = dict(breakdown.components)
    return breakdowns


def mean_metrics(breakdowns: Iterable[RewardBreakdown], prefix: str = "reward/") -> dict[str, float]:
    """Batch means of `to_metrics`; a component is averaged over the trajectories it applied to."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for breakdown in breakdowns:
        for key, value in breakdown.to_metrics(prefix).items():
            sums[key] = sums.get(key, 0.0) + value
            counts[key] = counts.get(key, 0) + 1
    return {key: sums[key] / counts[key] for key in sums}
