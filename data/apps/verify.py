"""Verification of an apps episode by what it leaves behind: the final app state and the final answer.

`verify_task(task, base_state, final_state, answer)` replays the task's gold rounds on a fresh copy of
the base state (the gold end state), then compares the episode's final state with it, and its answer
with the task's gold answers. It never looks at the calls the agent made: any sequence of calls that
leaves the same state (reads in any order, independent writes in any order) passes, and any stray
change (a wrong recipient, an extra order, a deleted file) fails.

States are compared in canonical form: every app collection as a multiset of records, ids of records
created during the episode dropped (ids come from counters, so two creations in swapped order get
swapped ids), attendee lists sorted, id counters ignored. The answer matches when, lowercased, with
whitespace collapsed and surrounding quotes and final punctuation stripped, it equals a gold answer.

What it simplifies on purpose: no partial credit (the verdict lists every difference, but passes only
when there is none); an answer is a short string, compared as text.

    verdict = verify_task(task, base_state, final_state, answer="10")
    verdict.success, verdict.state_ok, verdict.answer_ok, verdict.problems
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field

from data.apps.state import fresh_state
from data.apps.tasks import AppTask
from data.apps.tools import AppError, call_app_tool

COLLECTIONS = ("contacts", "events", "inbox", "sent", "files", "products", "orders")
ID_FIELDS = {"events": "id", "sent": "id", "orders": "id"}  # collections whose ids the tools create


@dataclass
class Verdict:
    state_ok: bool
    answer_ok: bool
    problems: list[str] = field(default_factory=list)  # what differs, one line each

    @property
    def success(self) -> bool:
        return self.state_ok and self.answer_ok


def replay_rounds(base_state: dict, rounds: list[list[dict]]) -> tuple[dict, list[list[object]]]:
    """Run the rounds' calls in order on a copy of base_state; (end state, results). Raises AppError if one fails."""
    state = fresh_state(base_state)
    results = []
    for round_index, calls in enumerate(rounds):
        round_results = []
        for call in calls:
            try:
                round_results.append(call_app_tool(state, call["name"], call["arguments"]))
            except AppError as error:
                raise AppError(f"round {round_index + 1}, call {call['name']}: {error}") from None
        results.append(round_results)
    return state, results


def gold_end_state(task: AppTask, base_state: dict) -> dict:
    return replay_rounds(base_state, task.gold_rounds)[0]


def _canonical_record(collection: str, record: dict, base_ids: set) -> str:
    record = dict(record)
    id_field = ID_FIELDS.get(collection)
    if id_field and record.get(id_field) not in base_ids:
        record.pop(id_field, None)
    if isinstance(record.get("attendees"), list):
        record["attendees"] = sorted(record["attendees"])
    return json.dumps(record, sort_keys=True)


def canonical_state(state: dict, base_state: dict) -> dict[str, Counter]:
    """{collection: multiset of canonical records}; ids the episode created are dropped."""
    canonical = {}
    for collection in COLLECTIONS:
        base_ids = set(base_state.get(collection, {}))
        canonical[collection] = Counter(_canonical_record(collection, record, base_ids)
                                        for record in state.get(collection, {}).values())
    return canonical


def changed_records(state: dict, other: dict, collection: str, base_ids: set) -> dict:
    """The records of `state[collection]` that `other` lacks or holds differently, plus every created one
    (ids not in the base state: their ids are not comparable). Equal records are skipped with a plain dict
    comparison, so a verification costs about one pass over the state, not a canonical form of every record."""
    records, other_records = state.get(collection, {}), other.get(collection, {})
    return {record_id: record for record_id, record in records.items()
            if record_id not in base_ids or other_records.get(record_id) != record}


def state_differences(final_state: dict, expected_state: dict, base_state: dict) -> list[str]:
    """One line per record that the final state lacks or has in excess, per collection (canonical forms)."""
    problems = []
    for collection in COLLECTIONS:
        base_ids = set(base_state.get(collection, {}))
        final_changed = changed_records(final_state, expected_state, collection, base_ids)
        expected_changed = changed_records(expected_state, final_state, collection, base_ids)
        if not final_changed and not expected_changed:
            continue
        final = canonical_state({collection: final_changed}, base_state)[collection]
        expected = canonical_state({collection: expected_changed}, base_state)[collection]
        for record in sorted((expected - final).elements()):
            problems.append(f"{collection}: missing {record}")
        for record in sorted((final - expected).elements()):
            problems.append(f"{collection}: unexpected {record}")
    return problems


def normalize_answer(text: str) -> str:
    text = re.sub(r"\s+", " ", str(text)).strip().lower()
    return text.strip("'\"`").rstrip(".!").strip()


def answer_matches(answer: str | None, golds: list[str]) -> bool:
    return answer is not None and normalize_answer(answer) in {normalize_answer(gold) for gold in golds}


def verify_task(task: AppTask, base_state: dict, final_state: dict, answer: str | None,
                expected_state: dict | None = None) -> Verdict:
    """The episode's verdict: its final state equals the gold end state, and its answer is a gold answer.

    expected_state: the task's gold end state when the caller has it already (gold_end_state; else replayed)."""
    if expected_state is None:
        expected_state = gold_end_state(task, base_state)
    problems = state_differences(final_state, expected_state, base_state)
    answer_ok = answer_matches(answer, task.answers)
    if not answer_ok:
        problems.append(f"answer: got {answer!r}, expected one of {task.answers}")
    return Verdict(state_ok=not any(not line.startswith("answer:") for line in problems), answer_ok=answer_ok,
                   problems=problems)


__all__ = ["Verdict", "answer_matches", "canonical_state", "gold_end_state", "replay_rounds", "state_differences",
           "verify_task"]
