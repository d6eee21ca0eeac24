"""One list of questions from several environments, each environment holding a given share of it.

`data.source: mixed` trains on the QA world and the apps world together. The rollout manager draws its
questions from one list (a seeded permutation per epoch, rollouts/data_cursor.py), so the mixture is made
here, before it: `mix_questions` returns the smallest list in which every question of every environment
occurs and each environment makes up its share, repeating the questions of the environment that has too
few (in shuffled passes: a question comes again only after all of its environment's did).

    questions = mix_questions({"qa": world.splits["train"], "apps": apps_questions}, {"qa": 0.5, "apps": 0.5}, seed=0)

What it simplifies on purpose: the share holds over the list, so over an epoch exactly and in each step's
batch on average (a batch is a random sample of the list, and the asynchronous manager admits groups in the
order they finish); a 90/10 mixture of 4000 QA questions and 1000 apps tasks is a list of 10,000.
"""

from __future__ import annotations

import math
import random

from data.types import Question


def share_counts(total: int, shares: dict[str, float]) -> dict[str, int]:
    """`total` split by `shares` (which sum to 1): floors, then the largest remainders get the rest."""
    exact = {name: round(total * share, 9) for name, share in shares.items()}  # 0.3 * 10 is 3, not 3.0000000000000004
    counts = {name: math.floor(value) for name, value in exact.items()}
    by_remainder = sorted(shares, key=lambda name: (counts[name] - exact[name], name))
    for name in by_remainder[: total - sum(counts.values())]:
        counts[name] += 1
    return counts


def repeated_passes(questions: list[Question], count: int, rng: random.Random) -> list[Question]:
    """`count` questions as shuffled passes over `questions` (each pass holds a question at most once)."""
    chosen: list[Question] = []
    while len(chosen) < count:
        order = list(questions)
        rng.shuffle(order)
        chosen.extend(order[: count - len(chosen)])
    return chosen


def mix_questions(questions_by_environment: dict[str, list[Question]], shares: dict[str, float],
                  seed: int = 0) -> list[Question]:
    """The environments' questions in one shuffled list where each environment makes up its share (module doc).

    shares: {environment: share in (0, 1]}, summing to 1, one per environment of questions_by_environment."""
    if set(shares) != set(questions_by_environment):
        raise ValueError(f"shares name the environments {sorted(shares)} but the questions come from "
                         f"{sorted(questions_by_environment)}")
    if not all(0 < share <= 1 for share in shares.values()) or abs(sum(shares.values()) - 1) > 1e-6:
        raise ValueError(f"the shares of a mixture must be in (0, 1] and sum to 1, got {shares}")
    for environment, questions in questions_by_environment.items():
        if not questions:
            raise ValueError(f"the {environment!r} environment has no training questions to mix")
    total = max(math.ceil(len(questions_by_environment[name]) / shares[name] - 1e-9) for name in shares)
    rng = random.Random(seed)
    mixed: list[Question] = []
    for environment, count in share_counts(total, shares).items():
        mixed.extend(repeated_passes(questions_by_environment[environment], count, rng))
    rng.shuffle(mixed)
    return mixed


__all__ = ["mix_questions", "repeated_passes", "share_counts"]
