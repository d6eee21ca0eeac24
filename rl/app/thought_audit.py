"""Audit the steps of comparison thoughts in an episodes file: which part of a step goes wrong.

A `digits` step (data/worked_comparisons.py, `sft.expert_think=digits`) reads

    , Bo Kay 1990 vs Ann Lee 1987 first : 1 9 9 0 , 1 9 8 7 ; = = > old Ann Lee 1987

and makes four decisions in a row. Each is checked against what the step itself wrote before it, so a
mistake is counted once, where it is made:
- `spelt`: the two digit strings are the two entries' years as the expert spells them (`digit_strings`: one
  width, leading zeros);
- `signs`: the signs compare the digits as spelt, up to the first pair that differs;
- `verdict`: `that` (the new entry wins) exactly when the last sign points the question's way (`<` for
  first, `>` for last);
- `winner`: the entry written after the verdict is the one it names, name and year.

A `side_by_side` step (or an `echo` one, each entry's name again after its year)

    , Bo Kay 1990 vs Ann Lee 1987 first 1987 Ann Lee

makes two: `year`, the winner's year is the one of the two entries' years the question's direction picks,
and `name`, the name after it is the name of the entry that holds that year (whichever year was written).

    python -m rl.app.thought_audit --episodes <run>/test_eps.jsonl   # written by fanout eval --episodes

prints the form, the share of steps right at each decision and whole, over the comparison episodes whose last
turn thinks in a form it knows (`digits` when its steps hold " ; ", else side_by_side or echo).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from pathlib import Path

from data.worked_comparisons import digit_signs, digit_strings

CHECKS = ("spelt", "signs", "verdict", "winner")
SIDE_BY_SIDE_CHECKS = ("year", "name")
ENTRY = re.compile(r"(.+?) (\d+)(?: (.+))?")  # "Ann Lee 1987", or with echo "Ann Lee 1987 Ann Lee"
DECISION = re.compile(r"(.+) (first|last) (\d+) (.+?)")  # "Ann Lee 1987 first 1987 Ann Lee"
THOUGHT = re.compile(r"<think>(.*?)</think>", re.S)
WINNING_SIGN = {"first": "<", "last": ">"}


def digit_step_checks(thought: str) -> list[dict[str, bool]]:
    """The four checks (CHECKS) of every step of a `digits` thought; steps that do not parse are skipped."""
    parts = thought.strip().split(" vs ")
    steps = []
    for previous, part in zip(parts, parts[1:]):
        try:
            new_entry = previous.rsplit(" , ", 1)[-1].strip()
            head, rest = part.split(" : ", 1)
            old_entry, word = head.rsplit(" ", 1)
            spelt, decision = rest.split(" ; ", 1)
            new_digits, old_digits = ("".join(side.split()) for side in spelt.split(" , "))
            tokens = decision.split()
            signs = list(itertools.takewhile(lambda token: token in ("=", "<", ">"), tokens))
            verdict = tokens[len(signs)]
            winner = " ".join(tokens[len(signs) + 1:]).split(" , ")[0]
            new_year, old_year = new_entry.rsplit(" ", 1)[1], old_entry.rsplit(" ", 1)[1]
        except (ValueError, IndexError):
            continue
        if word not in WINNING_SIGN or verdict not in ("that", "old"):
            continue
        steps.append({
            "spelt": new_year.isdigit() and old_year.isdigit()
            and (new_digits, old_digits) == digit_strings(int(new_year), int(old_year)),
            "signs": signs == digit_signs(new_digits, old_digits),
            "verdict": (verdict == "that") == (signs[-1:] == [WINNING_SIGN[word]]),
            "winner": winner == (new_entry if verdict == "that" else old_entry),
        })
    return steps


def side_by_side_step_checks(thought: str) -> list[dict[str, bool]]:
    """The two checks (SIDE_BY_SIDE_CHECKS) of every step of a `side_by_side` or `echo` thought whose entries
    hold different years; steps that do not parse are skipped."""
    parts = thought.strip().split(" vs ")
    steps = []
    for previous, part in zip(parts, parts[1:]):
        new = ENTRY.fullmatch(previous.rsplit(" , ", 1)[-1].strip())
        decided = DECISION.fullmatch(part.split(" , ", 1)[0].strip())
        old = ENTRY.fullmatch(decided.group(1)) if decided else None
        if not (new and old) or new.group(2) == old.group(2):
            continue
        years = {int(new.group(2)): new.group(1), int(old.group(2)): old.group(1)}
        picked = (min if decided.group(2) == "first" else max)(years)
        written = int(decided.group(3))
        named = written in years and decided.group(4) == years[written]
        steps.append({"year": written == picked, "name": named})
    return steps


def audit_episodes(path: str | Path) -> dict:
    """Per-check shares over the steps of every parallel episode's last-turn comparison thought: `digits`
    steps when any step holds " ; " (after its spelt years), else side_by_side or echo steps."""
    thoughts = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        try:
            episode = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not a JSON episode ({error})") from error
        if episode.get("structure") != "parallel" or not episode.get("turns"):
            continue
        match = THOUGHT.search(episode["turns"][-1]["text"] or "")
        if match:
            thoughts.append(match.group(1))
    digits = [thought for thought in thoughts if " vs " in thought and " ; " in thought]  # counts: no " vs "
    form, checks, step_checks = (("digits", CHECKS, digit_step_checks) if digits
                                 else ("side_by_side", SIDE_BY_SIDE_CHECKS, side_by_side_step_checks))
    steps = [step for thought in (digits or thoughts) for step in step_checks(thought)]
    if not steps:
        raise ValueError(f"{path}: no comparison steps (sft.expert_think digits, side_by_side or echo) in "
                         "its episodes")
    shares = {check: round(sum(step[check] for step in steps) / len(steps), 3) for check in checks}
    shares["whole"] = round(sum(all(step.values()) for step in steps) / len(steps), 3)
    return {"form": form, "steps": len(steps), **shares}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", required=True, help="an episodes file (fanout eval --episodes)")
    args = parser.parse_args(argv)
    try:
        result = audit_episodes(args.episodes)
    except (OSError, ValueError) as error:
        sys.exit(f"thought_audit: {error}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
