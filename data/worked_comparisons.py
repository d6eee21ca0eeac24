"""The worked comparison of a generated-world comparison or count question, from its gold metadata.

A parallel question of the world ("Who was born first, A or B?", "How many of A, B and C were born before
1980?") asks for a comparison of 2-4 years. Its worked comparison writes that work out as short steps, each
next to the values it needs:

- earliest / latest: each entity with its year, and after every entity but the first the best so far with
  its year ("first" or "last" names the direction), so every step compares two adjacent years and the last
  best is the answer: `Ann Lee 1987 , Bo Kay 1990 first Ann Lee 1987 , Cy Do 1975 first Cy Do 1975`
- counts: each entity with its year and whether it lies "before" or "after" the threshold, then the count:
  `Ann Lee 1987 after , Bo Kay 1975 before ; 1`

The "side_by_side" form of earliest / latest puts the two entries each step compares next to each other and
writes the winner's year before its name: `Ann Lee 1987 , Bo Kay 1990 vs Ann Lee 1987 first 1987 Ann Lee`.
Within a question every name has the same number of words, so both years sit at fixed distances from the
winner's year (a copy by position), the decision is spread over the year's digits instead of falling on one
name token, and the name follows from the year written. Counts keep the form above.

The "verdict" form of earliest / latest writes, after each step's two entries, their two years next to each
other and then one verdict token, "that" (the new entry wins) or "old" (the best so far stays), before the
winner: `Ann Lee 1987 , Bo Kay 1990 vs Ann Lee 1987 : 1990 1987 first old Ann Lee 1987`. The four year tokens
the decision reads then sit at the same distance from it whatever the names' lengths, the decision is one
token of two, and writing the winner is a copy of the entry the verdict points at.

The "digits" form spells each step's two years out digit by digit, writes how each digit pair compares up to
the first that differs ("=", "<": the new entry's digit is smaller, ">"), then the verdict and the winner as
`verdict` does: `Ann Lee 1987 , Bo Kay 1990 vs Ann Lee 1987 first : 1 9 9 0 , 1 9 8 7 ; = = > old Ann Lee 1987`.
Every token of it is then a copy from a fixed distance or an order between two of ten digits; the verdict
reads the last sign and the direction. Trained on drills alone (rl/app/comparison_probe.py), the reader's
2-layer model leaves `verdict`'s decision a coin flip and learns this form's (docs/RESULTS.md, "Reading").

The "echo" form is side_by_side with each entry's name written again after its year: `Ann Lee 1987 Ann Lee ,
Bo Kay 1990 Bo Kay vs Ann Lee 1987 Ann Lee first 1987 Ann Lee`. Writing the winner's name after its year is
then a copy of what followed that year before (what a copy-pretrained model does), where side_by_side needs
the name *before* the year, which the quickstart's warm-start writes right in half of its steps.

A comparison drill (`comparison_drill`, `drill_entries`; `sft.comparison_drills`) is such a thought on its own,
about a training comparison's names with years drawn anew, cut into pieces so that the SFT loss can fall on
each step's decision and winner only.

The scripted expert writes it in <think> before answering (`sft.expert_think`, rl/app/expert_thoughts.py)
and the `worked_comparison` reward (rewards/thoughts.py) scores a policy's thought against it. It is built
from the metadata data/world.py writes (`entities`, `sub_answers`, `template`), so it is only as right as
the world; a question without that metadata (e.g. a benchmark row) has none ("").

    comparison_thought(question)   # "Ann Lee 1987 , Bo Kay 1990 first Ann Lee 1987" or ""
    comparison_steps(text)         # ["Ann Lee 1987", "Bo Kay 1990 first Ann Lee 1987"]
"""

from __future__ import annotations

import random
import re

from data.types import Question

COUNT_THRESHOLD = re.compile(r"\b(before|after) (\d+)\?\s*$")  # the count templates' last words
STEP_SEPARATOR = re.compile(r"\s[,;]\s")


DRILL_FORMS = ("side_by_side", "verdict", "digits", "echo")  # the forms comparison_drill writes
THOUGHT_FORMS = ("compare", *DRILL_FORMS)
DRILL_LOSSES = ("decisions", "thought")  # where a drill's SFT loss falls (sft.drill_loss)


def comparison_thought(question: Question, form: str = "compare") -> str:
    """The worked comparison of a parallel comparison or count question in `form` (THOUGHT_FORMS); "" without
    the gold metadata."""
    if form not in THOUGHT_FORMS:
        raise ValueError(f"unknown worked-comparison form {form!r}; valid: {', '.join(THOUGHT_FORMS)}")
    metadata = question.metadata or {}
    names, values, template = metadata.get("entities"), metadata.get("sub_answers"), metadata.get("template", "")
    if not names or not values or len(names) != len(values) or not all(str(v).isdigit() for v in values):
        return ""
    years = [int(value) for value in values]
    kind = template.rsplit("_", 1)[-1]
    if kind in ("earliest", "latest"):
        if form in DRILL_FORMS:
            return "".join(text for text, _ in comparison_drill(names, years, kind == "earliest", form))
        return running_best_thought(names, years, earliest=kind == "earliest")
    if kind == "count":
        match = COUNT_THRESHOLD.search(question.question)
        return count_thought(names, years, match.group(1), int(match.group(2))) if match else ""
    return ""


def running_best(years: list[int], earliest: bool) -> list[tuple[int, int]]:
    """For each entity after the first: (the index of the best before it, the index of the best after it)."""
    best, steps = 0, []
    for index in range(1, len(years)):
        previous = best
        if (years[index] < years[best]) if earliest else (years[index] > years[best]):
            best = index
        steps.append((previous, best))
    return steps


def running_best_thought(names: list[str], years: list[int], earliest: bool) -> str:
    """Each entity and its year, then after each but the first the best so far: `A 1987 , B 1990 first A 1987`."""
    word = "first" if earliest else "last"
    return " , ".join([f"{names[0]} {years[0]}"] + [
        f"{names[index]} {years[index]} {word} {names[best]} {years[best]}"
        for index, (_, best) in enumerate(running_best(years, earliest), start=1)])


def side_by_side_thought(names: list[str], years: list[int], earliest: bool) -> str:
    """Each entity and its year, then after each but the first that entry against the best so far and the new
    best, year first: `A 1987 , B 1990 vs A 1987 first 1987 A`."""
    return "".join(text for text, _ in comparison_drill(names, years, earliest, "side_by_side"))


def verdict_thought(names: list[str], years: list[int], earliest: bool) -> str:
    """Each entity and its year, then after each but the first that entry against the best so far, the two
    years side by side, the verdict ("that": the new entry wins, "old": the best so far stays) and the new
    best: `A 1987 , B 1990 vs A 1987 : 1990 1987 first old A 1987`."""
    return "".join(text for text, _ in comparison_drill(names, years, earliest, "verdict"))



def comparison_drill(names: list[str], years: list[int], earliest: bool, form: str) -> list[tuple[str, bool]]:
    """The worked comparison in `form` (DRILL_FORMS) as (text, is_decision) pieces that join into its thought
    (the one place these forms are written): each step's decision and winner (side_by_side and echo: `1987 A`;
    verdict: `old A 1987`; digits: `= = > old A 1987`) is a decision piece, everything else is context. Every
    piece but the first starts with a space, so the pieces tokenise as the whole thought does."""
    if form not in DRILL_FORMS:
        raise ValueError(f"comparison drills are written in {', '.join(DRILL_FORMS)}, not {form!r}")
    word = "first" if earliest else "last"

    def entry(index: int) -> str:
        return f"{names[index]} {years[index]}" + (f" {names[index]}" if form == "echo" else "")

    pieces = [(entry(0), False)]
    for index, (previous, best) in enumerate(running_best(years, earliest), start=1):
        entries = f" , {entry(index)} vs {entry(previous)}"
        if form in ("side_by_side", "echo"):
            pieces += [(f"{entries} {word}", False), (f" {years[best]} {names[best]}", True)]
        elif form == "digits":
            new, old = digit_strings(years[index], years[previous])
            pieces += [(f"{entries} {word} : {' '.join(new)} , {' '.join(old)} ;", False),
                       (f" {' '.join(digit_signs(new, old))} {'that' if best == index else 'old'} "
                        f"{names[best]} {years[best]}", True)]
        else:
            pieces += [(f"{entries} : {years[index]} {years[previous]} {word}", False),
                       (f" {'that' if best == index else 'old'} {names[best]} {years[best]}", True)]
    return pieces


def digit_strings(new: int, old: int) -> tuple[str, str]:
    """The two years as digit strings of one length (leading zeros)."""
    width = max(len(str(new)), len(str(old)))
    return str(new).zfill(width), str(old).zfill(width)


def digit_signs(new: str, old: str) -> list[str]:
    """How each digit of `new` compares with `old`'s, up to and including the first that differs."""
    signs = []
    for new_digit, old_digit in zip(new, old):
        signs.append("=" if new_digit == old_digit else "<" if new_digit < old_digit else ">")
        if new_digit != old_digit:
            break
    return signs


def drill_pool(questions: list[Question]) -> list[Question]:
    """The questions a drill can take its names from: earliest / latest comparisons with the world's metadata
    (a benchmark or files row has none)."""
    return [question for question in questions if comparison_thought(question)
            and (question.metadata.get("template", "").endswith(("earliest", "latest")))]


def drill_entries(questions: list[Question], count: int,
                  rng: random.Random) -> list[tuple[list[str], list[int], bool]]:
    """`count` comparisons to drill: each takes the names of a random earliest / latest question among
    `questions` (drill_pool) and draws their years anew from every year those questions hold (all different,
    so every step has one winner), in a random direction."""
    pool = drill_pool(questions)
    if not pool:
        raise ValueError("comparison drills need earliest / latest comparison questions with their metadata")
    years = sorted({int(value) for question in pool for value in question.metadata["sub_answers"]})
    drills = []
    for _ in range(count):
        names = list(rng.choice(pool).metadata["entities"])
        drills.append((names, rng.sample(years, len(names)), rng.random() < 0.5))
    return drills


def count_thought(names: list[str], years: list[int], direction: str, threshold: int) -> str:
    """Each entity, its year and its side of the threshold, then the count: `A 1987 after , B 1975 before ; 1`."""
    sides = ["before" if year < threshold else "after" for year in years]
    count = sum(side == direction for side in sides)
    return " , ".join(f"{name} {year} {side}" for name, year, side in zip(names, years, sides)) + f" ; {count}"


def comparison_steps(text: str) -> list[str]:
    """The steps of a worked comparison (split at " , " and " ; "), whitespace collapsed."""
    return [" ".join(step.split()) for step in STEP_SEPARATOR.split(f" {text.strip()} ") if step.strip()]


__all__ = ["COUNT_THRESHOLD", "DRILL_FORMS", "DRILL_LOSSES", "THOUGHT_FORMS", "comparison_drill",
           "comparison_steps", "comparison_thought", "count_thought", "digit_signs", "digit_strings",
           "drill_entries", "drill_pool", "running_best", "running_best_thought", "side_by_side_thought",
           "verdict_thought"]
