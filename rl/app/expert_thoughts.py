"""What the scripted expert writes in <think> before its answer (`sft.expert_think`), one style per name.

A tiny policy that has fetched the years of 2-4 entities must still compare them, and it has to do so
in the single token step that writes the winner's name, with the years spread over several
observations. The "compare" style writes that work out in the answer turn, as short steps a 2-layer
model can imitate, each next to the values it needs:

- earliest / latest ("Who was born first, A or B?"): each entity with its year, and after every entity
  but the first the best so far with its year ("first" or "last" names the direction), so every step
  compares two adjacent years and the last best is the answer:
  `Ann Lee 1987 , Bo Kay 1990 first Ann Lee 1987 , Cy Do 1975 first Cy Do 1975`
- counts ("How many of A, B and C were born before 1980?"): each entity with its year and whether it lies
  "before" or "after" the threshold, then the count: `Ann Lee 1987 after , Bo Kay 1975 before ; 1`

The "notes" style writes the same answer thought, and before it, when the expert fetches one entity per
round, notes each year in the turn right after the passage that holds it: the search turn that follows an
entity's passage starts with `<think> Ann Lee 1987 </think>`. Copying a year from the passage just read is
local; the answer's comparison then finds every year but the last in the policy's own short notes instead of
in passages several observations back. (A fanned-out round gets no notes: its passages arrive together.)

Single-hop and chain questions get no thought (the answer is a value copied from the last passage;
each chain hop's query already carries the previous hop's answer). "none" (the default) writes no
thought at all, as before this option existed.

The thought is built from the question's gold metadata (`entities`, `sub_answers`, `template`, as
data/world.py writes them), so it is only as right as the world; a question without that metadata
(e.g. a benchmark row) gets no thought rather than a wrong one.

    comparison_thought(question)  # "Ann Lee 1987 , Bo Kay 1990 first Ann Lee 1987" or ""
"""

from __future__ import annotations

import re

from data.types import Question

EXPERT_THINK_STYLES = ("none", "compare", "notes")
COUNT_THRESHOLD = re.compile(r"\b(before|after) (\d+)\?\s*$")  # the count templates' last words


def answer_thought(question: Question, style: str) -> str:
    """The thought the expert writes before answering `question` in `style` ("" for none)."""
    if style not in EXPERT_THINK_STYLES:
        raise ValueError(f"sft.expert_think must be one of {EXPERT_THINK_STYLES}, got {style!r}")
    if style == "none" or question.structure != "parallel":
        return ""
    return comparison_thought(question)


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


def comparison_thought(question: Question) -> str:
    """The "compare" thought of a parallel comparison or count question; "" without the gold metadata."""
    metadata = question.metadata or {}
    names, values, template = metadata.get("entities"), metadata.get("sub_answers"), metadata.get("template", "")
    if not names or not values or len(names) != len(values) or not all(str(v).isdigit() for v in values):
        return ""
    years = [int(value) for value in values]
    form = template.rsplit("_", 1)[-1]
    if form in ("earliest", "latest"):
        return running_best_thought(names, years, earliest=form == "earliest")
    if form == "count":
        match = COUNT_THRESHOLD.search(question.question)
        return count_thought(names, years, match.group(1), int(match.group(2))) if match else ""
    return ""


def running_best_thought(names: list[str], years: list[int], earliest: bool) -> str:
    """Each entity and its year, then after each but the first the best so far: `A 1987 , B 1990 first A 1987`."""
    word = "first" if earliest else "last"
    best = 0
    steps = [f"{names[0]} {years[0]}"]
    for index in range(1, len(names)):
        if (years[index] < years[best]) if earliest else (years[index] > years[best]):
            best = index
        steps.append(f"{names[index]} {years[index]} {word} {names[best]} {years[best]}")
    return " , ".join(steps)


def count_thought(names: list[str], years: list[int], direction: str, threshold: int) -> str:
    """Each entity, its year and its side of the threshold, then the count: `A 1987 after , B 1975 before ; 1`."""
    sides = ["before" if year < threshold else "after" for year in years]
    count = sum(side == direction for side in sides)
    return " , ".join(f"{name} {year} {side}" for name, year, side in zip(names, years, sides)) + f" ; {count}"


__all__ = ["EXPERT_THINK_STYLES", "answer_thought", "comparison_thought", "count_thought", "round_thoughts",
           "running_best_thought"]
