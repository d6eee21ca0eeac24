"""Rewards: correctness, format, decomposition, efficiency, presets, composition, TRL adapter.

    from rewards import exact_match, f1_score, score_trajectory
    breakdown = score_trajectory(trajectory, config.reward)   # RewardBreakdown(components, total, …)

Importing the package registers every built-in reward: exact_match, f1, substring_exact_match,
format, em_format, decomposition, efficiency, parallelsearch_decomposition,
parallelsearch_search_count, worked_comparison, and the apps environment's apps_success, apps_efficiency,
apps_decomposition.
"""

from rewards.registry import get_reward, register_reward, registered_reward_names  # noqa: I001  (first: no cycles)
from rewards.correctness import exact_match, f1_score, normalize_answer, substring_exact_match
from rewards.format import graded_format_score
from rewards import apps, decomposition, efficiency, thoughts  # noqa: F401  (registers the rewards)
from rewards.presets import PRESETS, config_for_question, resolve_preset
from rewards.compose import RewardBreakdown, mean_metrics, score_group, score_trajectory
from rewards.parsing import ParsedEpisode, parse_trajectory
from rewards.trl_adapter import from_trl, to_trl

__all__ = [
    "exact_match",
    "f1_score",
    "substring_exact_match",
    "normalize_answer",
    "graded_format_score",
    "score_trajectory",
    "score_group",
    "mean_metrics",
    "RewardBreakdown",
    "register_reward",
    "get_reward",
    "registered_reward_names",
    "PRESETS",
    "resolve_preset",
    "config_for_question",
    "parse_trajectory",
    "ParsedEpisode",
    "from_trl",
    "to_trl",
]
