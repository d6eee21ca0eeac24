"""What the scripted expert writes in <think> before its answer (`sft.expert_think`), one style per name.

A tiny policy that has fetched the years of 2-4 entities must still compare them, and it has to do so
in the single token step that writes the winner's name, with the years spread over several
observations. The "compare" style writes that work out in the answer turn: the question's worked
comparison (data/worked_comparisons.py), short steps a 2-layer model can imitate, each next to the values
it needs (`Ann Lee 1987 , Bo Kay 1990 first Ann Lee 1987`; `Ann Lee 1987 after , Bo Kay 1975 before ; 1`).

The "notes" style writes the same answer thought, and before it, when the expert fetches one entity per
round, notes each year in the turn right after the passage that holds it: the search turn that follows an
entity's passage starts with `<think> Ann Lee 1987 </think>`. Copying a year from the passage just read is
local; the answer's comparison then finds every year but the last in the policy's own short notes instead of
in passages several observations back. (A fanned-out round gets no notes: its passages arrive together.)

The "side_by_side" style writes the answer turn's comparison with the two entries each step compares next
to each other and the winner's year before its name (data/worked_comparisons.py): `Ann Lee 1987 , Bo Kay 1990
vs Ann Lee 1987 first 1987 Ann Lee`. Its answer turns are longer (up to ~90 tokens for four people), so give
it a `rollout.max_new_tokens_per_turn` that holds them; demonstrations that do not fit are dropped.

The "verdict" style puts each step's two years next to each other and a one-token verdict before the winner
(`... vs Ann Lee 1987 : 1990 1987 first old Ann Lee 1987`, data/worked_comparisons.py); its answer turns are
longer still (up to ~120 tokens for four entities).

The "digits" style spells each step's two years digit by digit and compares them digit by digit before the
verdict (`... vs Ann Lee 1987 first : 1 9 9 0 , 1 9 8 7 ; = = > old Ann Lee 1987`, data/worked_comparisons.py);
its answer turns reach ~150 tokens for four entities.

The "echo" style is side_by_side with each entry's name again after its year (`Ann Lee 1987 Ann Lee , Bo Kay
1990 Bo Kay vs Ann Lee 1987 Ann Lee first 1987 Ann Lee`), so the winner's name is a copy of what followed its
year; its answer turns reach ~80 tokens for four entities on the quickstart's world.

Single-hop and chain questions get no thought (the answer is a value copied from the last passage;
each chain hop's query already carries the previous hop's answer). "none" (the default) writes no
thought at all, as before this option existed.

The thought is built from the question's gold metadata, so a question without it (e.g. a benchmark row)
gets no thought rather than a wrong one.

    answer_thought(question, "compare")  # "Ann Lee 1987 , Bo Kay 1990 first Ann Lee 1987" or ""
"""

from __future__ import annotations

from data.types import Question
from data.worked_comparisons import DRILL_FORMS, comparison_thought

EXPERT_THINK_STYLES = ("none", "compare", "notes", *DRILL_FORMS)


def answer_thought(question: Question, style: str) -> str:
    """The thought the expert writes before answering `question` in `style` ("" for none)."""
    if style not in EXPERT_THINK_STYLES:
        raise ValueError(f"sft.expert_think must be one of {EXPERT_THINK_STYLES}, got {style!r}")
    if style == "none" or question.structure != "parallel":
        return ""
    return comparison_thought(question, style if style in DRILL_FORMS else "compare")


def round_thoughts(question: Question, style: str, search_rounds: list[list[str]]) -> list[str]:
    """The thought each search round of `question` starts with ("" for none): in the "notes" style, when the
    rounds fetch one entity each, every round after the first notes the entity the previous round fetched
    and its year ("Ann Lee 1987"); otherwise none."""
    if style not in EXPERT_THINK_STYLES:
        raise ValueError(f"sft.expert_think must be one of {EXPERT_THINK_STYLES}, got {style!r}")
    no_thoughts = [""] * len(search_rounds)
    if style != "notes" or question.structure != "parallel" or not comparison_thought(question):
        return no_thoughts
    names, values = question.metadata["entities"], question.metadata["sub_answers"]
    if len(search_rounds) != len(names) or any(len(queries) != 1 for queries in search_rounds):
        return no_thoughts
    return [""] + [f"{name} {value}" for name, value in zip(names[:-1], values[:-1])]


__all__ = ["EXPERT_THINK_STYLES", "answer_thought", "round_thoughts"]
