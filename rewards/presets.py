"""Named reward presets: `parallelsearch` and `searchr1` reproduce published scoring; `apps` scores the apps
environment (rewards/apps.py: verified success 1.0, format 0.1, efficiency against the dependency depth 0.3,
decomposition 0.1).

`reward.preset` picks one; it then replaces `reward.weights` and the two graded format scores (other
reward fields, e.g. `gold_document_credit`, are kept). `reward.preset: ""` uses the config as written.
`reward.environment_presets` routes by environment: `{apps: apps}` scores the samples of apps tasks with the
apps preset while every other sample keeps `reward.preset` / `reward.weights` (a `data.source: mixed` run);
`config_for_question` picks a sample's config, then `resolve_preset` applies its preset.

searchr1 — Search-R1's `qa_em_format` reward (v0.3 scripts: structure_format_score 0.2):
    total = em_format, with correct+invalid 0.8 and wrong+valid 0.2 (table in rewards/format.py).
    Search-R1's final_format_score (0.1 for a wrong answer in an invalid episode) is 0 here.

parallelsearch — ParallelSearch's released reward (Tree-Shu-Zhao/ParallelSearch, `qa_em_format` with
structure_format_score 0.1, final_format_score 0.0, count_score λs = 0.35, comp_score λd = 0.15, α = 3):

    total = em_format (correct+invalid 0.9, wrong+valid 0.1, wrong+invalid 0)
          + λd · decomposition term + λs · search-count term

    ours        theirs      decomposition term                    search-count term (n = search rounds)
    ----------  ----------  ------------------------------------  -------------------------------------
    parallel    comparison  α = 3 if some round fans out          1 - |n - 1|          (best: one round)
                            (>= 2 sub-queries), else 0
    sequential  bridge      1 if no round fans out, else 0        1 - |min(n, 2) - 2|  (best: >= 2 rounds)
    single      na          1 if no round fans out, else 0        1 - |n - 1|          (best: one round)

    Worked cases (totals):
    parallel, correct, valid, one round of 2 sub-queries      1 + 0.15·3 + 0.35·1        = 1.80 (the maximum)
    parallel, correct, valid, two rounds of 1 sub-query       1 + 0      + 0.35·0        = 1.00
    parallel, wrong,   valid, one round of 2 sub-queries      0.1 + 0.45 + 0.35          = 0.90
    sequential, correct, valid, two rounds of 1 sub-query     1 + 0.15   + 0.35          = 1.50
    sequential, correct, valid, one round of 1 sub-query      1 + 0.15   + 0             = 1.15
    single, correct, valid, one round of 1 sub-query          1 + 0.15   + 0.35          = 1.50
    malformed text, no tags (parallel / sequential / single)  0 + {0, 0.15, 0.15} + 0.35·{0, -1, 0}
                                                                                         = 0.00 / -0.20 / 0.15

The search-count term is not clipped (four rounds on a parallel question: 1 - 3 = -2, i.e. -0.70), as
released. "Fans out" looks at every round, as in ParallelSearch's function-call version; the older tag
version looked only at the first search. Search rounds are read from the model's text.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from data.registry import Registry
from data.types import question_environment
from rewards.parsing import parse_trajectory
from rewards.registry import register_reward

PARALLELSEARCH_ALPHA = 3.0  # multiplier of the decomposition term when a parallel question is fanned out
PARALLELSEARCH_LAMBDA_DECOMPOSITION = 0.15
PARALLELSEARCH_LAMBDA_SEARCH_COUNT = 0.35
PARALLELSEARCH_FORMAT_SCORE = 0.1  # their structure_format_score


@dataclass(frozen=True)
class RewardPreset:
    """What a preset sets in RewardConfig."""

    weights: dict[str, float] = field(default_factory=dict)
    format_score_correct_invalid: float = 0.8
    format_score_wrong_valid: float = 0.1


PRESETS: Registry[RewardPreset] = Registry("reward preset")


def parallelsearch_decomposition_term(structure: str, queries_per_round: list[int]) -> float:
    fanned_out = any(num_queries >= 2 for num_queries in queries_per_round)
    if structure == "parallel":
        return PARALLELSEARCH_ALPHA if fanned_out else 0.0
    return 0.0 if fanned_out else 1.0


def parallelsearch_search_count_term(structure: str, search_rounds: int) -> float:
    if structure == "sequential":
        return 1.0 - abs(min(search_rounds, 2) - 2)
    return 1.0 - abs(search_rounds - 1)


@register_reward("parallelsearch_decomposition")
def parallelsearch_decomposition_reward(trajectory, config) -> float:
    episode = parse_trajectory(trajectory)
    return parallelsearch_decomposition_term(trajectory.question.structure, episode.queries_per_round)


@register_reward("parallelsearch_search_count")
def parallelsearch_search_count_reward(trajectory, config) -> float:
    return parallelsearch_search_count_term(
        trajectory.question.structure, parse_trajectory(trajectory).search_rounds
    )


PRESETS.add(
    "searchr1",
    RewardPreset(weights={"em_format": 1.0}, format_score_correct_invalid=0.8, format_score_wrong_valid=0.2),
)
PRESETS.add(
    "parallelsearch",
    RewardPreset(
        weights={
            "em_format": 1.0,
            "parallelsearch_decomposition": PARALLELSEARCH_LAMBDA_DECOMPOSITION,
            "parallelsearch_search_count": PARALLELSEARCH_LAMBDA_SEARCH_COUNT,
        },
        format_score_correct_invalid=1.0 - PARALLELSEARCH_FORMAT_SCORE,
        format_score_wrong_valid=PARALLELSEARCH_FORMAT_SCORE,
    ),
)

PRESETS.add(
    "apps",
    RewardPreset(weights={"apps_success": 1.0, "format": 0.1, "apps_efficiency": 0.3, "apps_decomposition": 0.1}),
)


def config_for_question(config, question):
    """The RewardConfig a question's samples are scored with: `config` with the preset that
    `config.environment_presets` names for the question's environment, else `config` itself."""
    preset = config.environment_presets.get(question_environment(question), "")
    return dataclasses.replace(config, preset=preset) if preset else config


def resolve_preset(config):
    """The RewardConfig to score with: `config` itself, or a copy with the preset's weights and scores."""
    if not config.preset:
        return config
    preset = PRESETS[config.preset]
    return dataclasses.replace(
        config,
        weights=dict(preset.weights),
        format_score_correct_invalid=preset.format_score_correct_invalid,
        format_score_wrong_valid=preset.format_score_wrong_valid,
    )
