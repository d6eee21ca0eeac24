"""Decomposition reward: does the model fan out where the lookups are independent, and only there?

Every search round of the episode is judged against the question's structure (no round is exempt,
so a model cannot fan out once and then fall back to one query per round unnoticed):

    | structure  | a round is well shaped when it issues | why                                            |
    |------------|---------------------------------------|------------------------------------------------|
    | parallel   | >= 2 sub-queries                      | independent lookups belong in one round        |
    | sequential | exactly 1 sub-query                   | hop k needs hop k-1's answer: merging guesses  |
    | single     | exactly 1 sub-query                   | one lookup; extra queries are noise            |

and, whatever the structure, none of its sub-queries repeats one the episode already issued, in that round
or an earlier one (case and whitespace folded): a lookup written twice fetches nothing new, and a round of
`A ## A ## B` for three entities would otherwise count as a fan-out while it leaves the third for a later
round.

    shape = well-shaped rounds / search rounds        (0.0 when the model never searched)

With `reward.gold_document_credit` and known `Question.supporting_doc_ids`, the reward is the mean of
`shape` and the recall of gold documents over everything the episode's searches retrieved
(`ToolCall.retrieved_doc_ids`), so fanning out with junk sub-queries earns at most half.
Simplified on purpose: sub-queries are compared as text, not with the gold sub-questions, so two
paraphrases of one lookup count as a fan-out; the gold-document term is what pushes back on that.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

from rewards.parsing import parse_trajectory, repeats_per_round
from rewards.registry import register_reward

_ROUND_IS_WELL_SHAPED: dict[str, Callable[[int], bool]] = {
    "parallel": lambda num_queries: num_queries >= 2,
    "sequential": lambda num_queries: num_queries == 1,
    "single": lambda num_queries: num_queries == 1,
}


def round_shape_score(query_rounds: Sequence[Sequence[str]], structure: str) -> float:
    """Share of search rounds whose number of sub-queries suits the structure and that repeat no lookup
    (the table above)."""
    if not query_rounds:
        return 0.0
    is_well_shaped = _ROUND_IS_WELL_SHAPED[structure]
    well_shaped = sum(1 for queries, repeats in zip(query_rounds, repeats_per_round(query_rounds))
                      if is_well_shaped(len(queries)) and not repeats)
    return well_shaped / len(query_rounds)


def gold_document_recall(retrieved_doc_ids: Iterable[str], supporting_doc_ids: Iterable[str]) -> float | None:
    """Fraction of the gold supporting documents that some search retrieved; None when none are known."""
    gold = set(supporting_doc_ids)
    if not gold:
        return None
    return len(gold & set(retrieved_doc_ids)) / len(gold)


def retrieved_doc_ids_of(trajectory) -> list[str]:
    return [
        doc_id
        for turn in trajectory.turns
        for call in turn.calls
        for doc_id in (call.retrieved_doc_ids or [])
    ]


@register_reward("decomposition")
def decomposition_reward(trajectory, config) -> float:
    question = trajectory.question
    shape = round_shape_score(parse_trajectory(trajectory).query_rounds, question.structure)
    recall = gold_document_recall(retrieved_doc_ids_of(trajectory), question.supporting_doc_ids)
    if not config.gold_document_credit or recall is None:
        return shape
    return (shape + recall) / 2
