"""Efficiency reward: a correct answer in as few model calls as the question's structure allows.

The structure says how many sequential search rounds a perfect agent needs:

    parallel    1 round (all independent lookups fanned out at once)
    single      1 round
    sequential  n rounds for an n-hop chain, n = len(Question.sub_questions); unknown when a real-data
                chain comes without its sub-questions (HotpotQA bridge, MuSiQue rows): the reward is then
                not applicable (None, left out of the total) rather than a guess that would punish every
                hop beyond the first

and one more model call gives the answer, so `needed_calls = needed_rounds + 1`. The score is

    efficiency = needed_calls / max(needed_calls, model_calls)      if the answer is correct (exact match)
               = 0.0                                                 otherwise

so the minimum scores 1.0, every extra call (an extra search round, or a turn wasted on an invalid
action) lowers it (a parallel question answered after two one-query rounds: 2/3), and answering in
fewer calls than needed is not rewarded beyond 1.0. It counts model calls, not tool calls: fanning
out more sub-queries in one round is free here (decomposition judges it).

Only correct answers earn efficiency, on purpose: otherwise answering at once, without searching,
would be the cheapest way to collect it, and the policy would learn to guess fast and wrong.

`episode_counts` gives the raw numbers (model calls, search rounds, sub-queries, sub-queries per round,
sub-queries written twice) that the reward breakdown logs alongside the components.
"""

from __future__ import annotations

from rewards.correctness import answer_is_correct
from rewards.parsing import ParsedEpisode, parse_trajectory
from rewards.registry import register_reward


def needed_search_rounds(structure: str, num_sub_questions: int) -> int | None:
    """Sequential search rounds the structure needs: n for an n-hop chain (None when n is unknown), else 1."""
    if structure != "sequential":
        return 1
    return num_sub_questions if num_sub_questions > 0 else None


def efficiency_score(model_calls: int, needed_rounds: int) -> float:
    """needed_calls / max(needed_calls, model_calls), with needed_calls = needed_rounds + 1 (the answer)."""
    needed_calls = needed_rounds + 1
    return needed_calls / max(needed_calls, model_calls)


def episode_counts(episode: ParsedEpisode) -> dict[str, float]:
    """Raw behaviour counts of one episode, for logging."""
    return {
        "model_calls": float(episode.model_calls),
        "search_rounds": float(episode.search_rounds),
        "subqueries": float(episode.subqueries),
        "subqueries_per_round": float(episode.subqueries_per_round),
        "repeated_subqueries": float(episode.repeated_subqueries),
        "format_valid": float(episode.valid),
        "has_answer": float(episode.answer is not None),
    }


@register_reward("efficiency")
def efficiency_reward(trajectory, config) -> float | None:
    question = trajectory.question
    needed_rounds = needed_search_rounds(question.structure, len(question.sub_questions))
    if needed_rounds is None:  # a chain of unknown length: nothing to measure the calls against
        return None
    episode = parse_trajectory(trajectory)
    if not answer_is_correct(episode.answer, question.answers):
        return 0.0
    return efficiency_score(episode.model_calls, needed_rounds)
