"""Audit the steps of `digits` comparison thoughts in an episodes file: which part of a step goes wrong.

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

    python -m rl.app.thought_audit --episodes <run>/test_eps.jsonl   # written by fanout eval --episodes

prints the share of steps right at each decision and whole, over the comparison episodes whose last turn
thinks in this form.
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


def audit_episodes(path: str | Path) -> dict:
    """Per-check shares over the steps of every parallel episode's last-turn `digits` thought."""
    steps = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        try:
            episode = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not a JSON episode ({error})") from error
        if episode.get("structure") != "parallel" or not episode.get("turns"):
            continue
        match = THOUGHT.search(episode["turns"][-1]["text"])
        if match and " ; " in match.group(1):
            steps += digit_step_checks(match.group(1))
    if not steps:
        raise ValueError(f"{path}: no digits-form comparison steps (sft.expert_think=digits) in its episodes")
    shares = {check: round(sum(step[check] for step in steps) / len(steps), 3) for check in CHECKS}
    shares["whole"] = round(sum(all(step.values()) for step in steps) / len(steps), 3)
    return {"steps": len(steps), **shares}


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
