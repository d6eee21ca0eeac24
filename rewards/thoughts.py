"""The `worked_comparison` reward: credit for each step of a comparison the answer's thought writes right.

A parallel question of the generated world asks to compare 2-4 years (who was born first, how many were
founded before 1900). Exact match gives one bit for the whole comparison, and a 2-2-4 way guess earns it
as often as a comparison does. This reward credits the work instead: the answer turn's `<think>` is split
into steps (at " , " and " ; ") and compared, position by position, with the question's worked comparison
(data/worked_comparisons.py, what `sft.expert_think=compare` demonstrates):

    worked comparison   Ann Lee 1987 , Bo Kay 1990 first Ann Lee 1987 , Cy Do 1975 first Cy Do 1975
    the thought         Ann Lee 1987 , Bo Kay 1987 first Ann Lee 1987 , Cy Do 1975 first Cy Do 1975
    reward              2 / 3   (the second step miscopied Bo Kay's year)

Each step is one year copied from a passage and, after the first, one comparison of two years, so a
policy earns it step by step by reading its observations and comparing what it read. The score is
the share of steps matched (0.0 when the episode gave no answer, or answered without a thought), and None
(not applicable: left out of the total) for a question without a worked comparison: single-hop and chain
questions, benchmark rows without the world's metadata, and apps tasks.

Simplified on purpose: the steps are matched as text at their positions, so a thought that lists the
entities in another order scores only the steps that happen to line up; the expert's order is the
question's, which is what the warm-start teaches.
"""

from __future__ import annotations

from data.worked_comparisons import comparison_steps, comparison_thought
from rewards.parsing import first_block, last_block, model_turn_texts
from rewards.registry import register_reward


def answer_turn_thought(trajectory) -> str | None:
    """The `<think>` of the last turn with a complete `<answer>`; None without such a turn or a thought."""
    answering = [text for text in model_turn_texts(trajectory) if last_block(text, "answer") is not None]
    return first_block(answering[-1], "think") if answering else None


def worked_comparison_score(thought: str | None, worked: str) -> float:
    """Share of `worked`'s steps that `thought` writes at the same position (0.0 for no thought)."""
    gold = comparison_steps(worked)
    if not gold:
        raise ValueError("a worked comparison needs at least one step")
    written = comparison_steps(thought or "")
    return sum(step == gold_step for step, gold_step in zip(written, gold)) / len(gold)


@register_reward("worked_comparison")
def worked_comparison_reward(trajectory, config) -> float | None:
    worked = comparison_thought(trajectory.question)
    if not worked:
        return None
    return worked_comparison_score(answer_turn_thought(trajectory), worked)
