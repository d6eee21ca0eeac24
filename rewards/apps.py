"""Rewards of the apps environment: verified success, efficiency against the dependency depth, decomposition.

An apps trajectory's question carries its task (`metadata["app_task"]`: instruction, gold answers, gold
call rounds) and the base state its episode started from (`metadata["apps_base_state_path"]`,
data/apps/world.py); the agent loop records the episode's final state (`Trajectory.episode_states["apps"]`).
Every reward here is None (not applicable, left out of the total) for a trajectory without a task, so one
config scores QA and apps trajectories side by side.

    apps_success        1.0 when the verifier (data/apps/verify.py) accepts the final state AND the answer,
                        else 0.0. It judges what the episode left behind, never the calls it made.
    apps_efficiency     success × needed_calls / max(needed_calls, model_calls), needed_calls = min_rounds + 1
                        (min_rounds = len(gold_rounds), the task's dependency depth, plus the answer turn).
                        A 3-round task solved in 4 model calls scores 1.0, in 6 calls 4/6; failing scores 0.
    apps_decomposition  share of the task's gold call pairs whose rounds the episode got right:
                        - two gold calls of one gold round are independent: credit when the episode made
                          them in the same round (grouped);
                        - two gold calls of different gold rounds: the later one is taken to depend on the
                          earlier one: credit when the episode made it in a strictly later round (not grouped).
                        An episode's call counts as a gold call when its name and arguments equal it (first
                        unmatched one, in round order); pairs with an unmatched gold call earn nothing.
                        Over the calls the loop sent (`Turn.calls`). None for a task of one call.

Worked decomposition cases (gold rounds [[a, b], [c]], pairs: a-b same round, a-c and b-c ordered):
    rounds [[a, b], [c]]       3/3 = 1.0
    rounds [[a], [b], [c]]     a-b split, a-c and b-c ordered           = 2/3
    rounds [[a, b, c]]         a-b grouped, c grouped with what it needs = 1/3
    rounds [[a, b]] (no c)     a-b grouped; c unmatched                  = 1/3

What it simplifies on purpose: dependency is read from the gold rounds (a call of round 3 is taken to need
every call of rounds 1-2, while in a mixed task it may need only one of them), and a call matches only with
exactly the gold arguments (a correct but differently spelled argument earns no decomposition credit; the
success verdict still accepts any calls that leave the right state).
"""

from __future__ import annotations

import json
from itertools import combinations

from data.apps.tasks import AppTask
from data.apps.verify import Verdict, gold_end_state, verify_task
from data.apps.world import APPS_SOURCE_NAME, base_state_of
from rewards.parsing import parse_trajectory
from rewards.registry import register_reward


def app_task_of(trajectory) -> AppTask | None:
    """The apps task of the trajectory's question (None for a question of another environment)."""
    row = trajectory.question.metadata.get("app_task")
    return AppTask.from_row(row) if row else None


MAX_CACHED_GOLD_STATES = 2048
_gold_end_states: dict[tuple[int, str, str], dict] = {}


def cached_gold_end_state(task: AppTask, base_state: dict) -> dict:
    """The task's gold end state, replayed once per process (a group's trajectories share their task)."""
    key = (id(base_state), task.id, json.dumps(task.gold_rounds, sort_keys=True))
    if key not in _gold_end_states:
        if len(_gold_end_states) >= MAX_CACHED_GOLD_STATES:
            _gold_end_states.clear()
        _gold_end_states[key] = gold_end_state(task, base_state)
    return _gold_end_states[key]


def verify_trajectory(trajectory, task: AppTask | None = None) -> Verdict | None:
    """The verifier's verdict on the episode's recorded final state and answer (None: not an apps trajectory).

    An episode with no recorded state never reached the apps server, so its state is the base state."""
    task = task or app_task_of(trajectory)
    if task is None:
        return None
    base_state = base_state_of(trajectory.question)
    final_state = trajectory.episode_states.get(APPS_SOURCE_NAME, base_state)
    return verify_task(task, base_state, final_state, trajectory.final_answer,
                       expected_state=cached_gold_end_state(task, base_state))


def apps_efficiency_score(success: bool, model_calls: int, min_rounds: int) -> float:
    """needed_calls / max(needed_calls, model_calls) with needed_calls = min_rounds + 1, if success; else 0."""
    if not success:
        return 0.0
    needed_calls = min_rounds + 1
    return needed_calls / max(needed_calls, model_calls)


def call_key(name: str, arguments: dict) -> str:
    return json.dumps({"name": name, "arguments": arguments}, sort_keys=True)


def match_gold_rounds(gold_rounds: list[list[dict]], episode_rounds: list[list[tuple[str, dict]]]) -> list[int | None]:
    """For each gold call (flattened in round order): the index of the episode round that made it, or None.

    episode_rounds: the (name, arguments) of each tool-calling round's calls; each episode call matches once."""
    available: dict[str, list[int]] = {}
    for round_index, calls in enumerate(episode_rounds):
        for name, arguments in calls:
            available.setdefault(call_key(name, arguments), []).append(round_index)
    matched = []
    for calls in gold_rounds:
        for call in calls:
            rounds = available.get(call_key(call["name"], call["arguments"]))
            matched.append(rounds.pop(0) if rounds else None)
    return matched


def decomposition_score(gold_rounds: list[list[dict]], episode_rounds: list[list[tuple[str, dict]]]) -> float | None:
    """Share of gold call pairs the episode's rounds respect (module docstring); None with fewer than 2 calls."""
    gold_round_of = [index for index, calls in enumerate(gold_rounds) for _ in calls]
    episode_round_of = match_gold_rounds(gold_rounds, episode_rounds)
    pairs = list(combinations(range(len(gold_round_of)), 2))
    if not pairs:
        return None
    credited = 0
    for first, second in pairs:  # first < second, so gold_round_of[first] <= gold_round_of[second]
        round_first, round_second = episode_round_of[first], episode_round_of[second]
        if round_first is None or round_second is None:
            continue
        if gold_round_of[first] == gold_round_of[second]:
            credited += round_first == round_second
        else:
            credited += round_first < round_second
    return credited / len(pairs)


def episode_call_rounds(trajectory) -> list[list[tuple[str, dict]]]:
    """The (name, arguments) of the calls of each turn that made calls, in order."""
    return [[(call.name, call.arguments) for call in turn.calls] for turn in trajectory.turns if turn.calls]


@register_reward("apps_success")
def apps_success_reward(trajectory, config) -> float | None:
    verdict = verify_trajectory(trajectory)
    return None if verdict is None else float(verdict.success)


@register_reward("apps_efficiency")
def apps_efficiency_reward(trajectory, config) -> float | None:
    task = app_task_of(trajectory)
    if task is None:
        return None
    success = verify_trajectory(trajectory, task).success
    return apps_efficiency_score(success, parse_trajectory(trajectory).model_calls, task.min_rounds)


@register_reward("apps_decomposition")
def apps_decomposition_reward(trajectory, config) -> float | None:
    task = app_task_of(trajectory)
    if task is None:
        return None
    return decomposition_score(task.gold_rounds, episode_call_rounds(trajectory))


__all__ = ["app_task_of", "apps_efficiency_score", "decomposition_score", "episode_call_rounds",
           "match_gold_rounds", "verify_trajectory"]
