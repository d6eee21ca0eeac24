"""Format rewards: is the whole episode well formed, and Search-R1's graded answer-and-format score.

`format` is 1.0 when every model turn follows the protocol grammar (rewards/parsing.py: think?, then
one action; tool calls in every turn but the last, one final answer at the end, nothing but
whitespace outside the tags) and 0.0 otherwise.

`em_format` is the graded score of Search-R1's `qa_em_format` reward (correctness and format in one
number, so format alone is never worth as much as a correct answer):

    | answer (exact match) | episode format | score                                   |
    |----------------------|----------------|-----------------------------------------|
    | correct              | valid          | 1.0                                     |
    | correct              | invalid        | reward.format_score_correct_invalid     |
    | wrong or missing     | valid          | reward.format_score_wrong_valid         |
    | wrong or missing     | invalid        | 0.0                                     |

Simplified on purpose: Search-R1 also has a `final_format_score` for a wrong answer inside an invalid
episode and an (unused) retrieval bonus; both are 0 here. The protocol is the trajectory's own
(`Trajectory.protocol`), so one config scores tags and function-call rollouts alike.
"""

from __future__ import annotations

from rewards.correctness import answer_is_correct
from rewards.parsing import parse_trajectory
from rewards.registry import register_reward


def graded_format_score(
    correct: bool, valid: bool, score_correct_invalid: float, score_wrong_valid: float
) -> float:
    """Search-R1's four cases (table in the module docstring)."""
    if correct:
        return 1.0 if valid else score_correct_invalid
    return score_wrong_valid if valid else 0.0


@register_reward("format")
def format_reward(trajectory, config) -> float:
    return 1.0 if parse_trajectory(trajectory).valid else 0.0


@register_reward("em_format")
def em_format_reward(trajectory, config) -> float:
    episode = parse_trajectory(trajectory)
    correct = answer_is_correct(episode.answer, trajectory.question.answers)
    return graded_format_score(
        correct, episode.valid, config.format_score_correct_invalid, config.format_score_wrong_valid
    )
