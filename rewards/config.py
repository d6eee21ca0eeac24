"""The rewards package's config section (`reward`): which rewards, with which weights.

`rl.config.ExperimentConfig` composes it with the other packages' sections.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RewardConfig:
    # Named preset that sets the weights/scores below ("", "parallelsearch", "searchr1", "apps").
    preset: str = ""
    # {registered reward name: weight}; the total is the weighted sum of applicable components.
    weights: dict[str, float] = field(
        default_factory=lambda: {"exact_match": 1.0, "format": 0.1, "efficiency": 0.3, "decomposition": 0.1}
    )
    format_score_wrong_valid: float = 0.1  # Search-R1 graded format score: wrong answer, valid format
    format_score_correct_invalid: float = 0.8  # correct answer, invalid format
    gold_document_credit: bool = True  # decomposition credits sub-queries that retrieve gold documents
    # {environment: preset}: a sample of a listed environment (its question's metadata "environment"; "qa" when
    # it names none) is scored with that preset instead of reward.preset / reward.weights, e.g. {apps: apps}
    # in a data.source=mixed run (QA samples keep the run's weights)
    environment_presets: dict[str, str] = field(default_factory=dict)
