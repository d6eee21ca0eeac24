"""Scripted solver of apps tasks: plays each task's gold call graph through the real agent loop, over MCP.

For every task the solver writes the model turns a good agent would write, in the JSON function-call
protocol (`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, several per turn = parallel):

- mode "parallel": one turn per gold round with all of that round's calls, then the answer:
  `min_rounds + 1` model calls (the fewest possible);
- mode "sequential": one call per turn, the gold calls in round order, then the answer:
  `num_calls + 1` model calls (what a policy limited to one call per turn does).

The turns are played by a `ScriptedEngine` (rollouts/scripted_engine.py) inside `run_episodes`, so the
prompt, the tool rounds (the executor sends each call, with its trajectory's episode id, to the MCP
server), the observations and the token-level record are exactly what a model's episode produces. After
the episode the solver reads the episode's final app state from the server (`executor.episode_state`),
verifies it and the answer with the task's verifier (data/apps/verify.py), and ends the episode.

With `notes=True` (`sft.expert_think=notes`), every round after the first starts with a short note of what
the round takes from earlier results (`round_notes`): for each of its arguments not in the instruction that one
earlier call returned, that call's first argument and the value, `<think> SKU-9684 37 , SKU-4063 32 </think>`
before the calculator call of a stock total, `<think> /notes/order-3.txt o0005 </think>` before a cancellation.
The note sits where the value is needed, and each value follows the argument that fetched it, the pattern a
2-layer model's induction heads can look up (find the SKU in the results, copy what follows it); the call then
copies from the note next to it rather than from results several records back. Values that several results
hold (a meeting's common free hour) and long ones (a file's text) get no note.

What it simplifies on purpose: the solver knows the gold arguments (as the QA expert knows the gold
sub-questions), so it never reads the observations; an instruction comes at most once per call (a scripted turn
is found by its prompt).

    episodes = solve_apps_tasks(tasks, ["parallel"] * len(tasks), protocol, tokenizer, executor,
                                world, rollout_config)
    [episode.verdict.success for episode in episodes]
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterator

from data.apps.tasks import AppTask
from data.apps.verify import Verdict, replay_rounds, verify_task
from data.apps.world import AppsWorld
from data.trajectory import ToolCall, Trajectory
from rollouts.agent_loop import run_episodes
from rollouts.config import RolloutConfig
from rollouts.protocols import Action, AgentProtocol
from rollouts.scripted_engine import ScriptedEngine, TurnScripts

SOLVER_MODES = ("parallel", "sequential")
NOTE_MAX_CHARS = 40  # longer values (a file's text) are copied from the result itself, not noted


@dataclass
class SolvedEpisode:
    task: AppTask
    trajectory: Trajectory
    final_state: dict | None  # the episode's app state as the server reported it (None: no state source)
    verdict: Verdict


def _scalars(value: Any) -> Iterator[Any]:
    """The scalar values inside a JSON value."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _scalars(item)
    elif isinstance(value, list):
        for item in value:
            yield from _scalars(item)
    else:
        yield value


def _in_text(value: Any, text: str) -> bool:
    """Whether str(value) occurs in text as a whole word (so 5 is not found inside SKU-5747)."""
    return re.search(rf"(?<![\w-]){re.escape(str(value))}(?![\w-])", text) is not None


def _holds(held: Any, value: Any) -> bool:
    """Whether a result's scalar is the value, or a text with it as a word ("Order o0005 is no longer needed.")."""
    if json.dumps(held) == json.dumps(value):
        return True
    return isinstance(held, str) and isinstance(value, str) and _in_text(value, held)


def round_notes(task: AppTask, start_state: dict) -> list[str]:
    """The note each gold round starts with ("" for none; the first round has none): `<anchor> <value>` entries
    joined by " , ", one per argument value of the round that is short, absent from the instruction and returned
    by exactly one earlier call (as a value of its result, or a word of a text in it), whose first argument is
    the anchor."""
    _, results = replay_rounds(start_state, task.gold_rounds)
    notes = [""]
    for index in range(1, len(task.gold_rounds)):
        earlier = [(call, list(_scalars(result)))
                   for calls, round_results in zip(task.gold_rounds[:index], results[:index])
                   for call, result in zip(calls, round_results)]
        entries: list[str] = []
        for value in (value for call in task.gold_rounds[index] for value in _scalars(call["arguments"])):
            if len(str(value)) > NOTE_MAX_CHARS or _in_text(value, task.instruction):
                continue
            sources = [call for call, values in earlier if any(_holds(held, value) for held in values)]
            if len(sources) == 1 and sources[0]["arguments"]:
                entry = f"{next(iter(sources[0]['arguments'].values()))} {value}"
                if entry not in entries:
                    entries.append(entry)
        notes.append(" , ".join(entries))
    return notes


def solver_actions(task: AppTask, mode: str, notes: list[str] | None = None) -> list[tuple[Action, str]]:
    """The model turns of the solver in `mode`, each with the thought it starts with: tool-call turns, then the
    answer. `notes` (round_notes) go on each round's first turn; None: no thoughts."""
    if mode not in SOLVER_MODES:
        raise ValueError(f"solver mode {mode!r} is not one of {SOLVER_MODES}")
    notes = notes or [""] * len(task.gold_rounds)
    rounds = ([(calls, note) for calls, note in zip(task.gold_rounds, notes)] if mode == "parallel" else
              [([call], note if position == 0 else "") for calls, note in zip(task.gold_rounds, notes)
               for position, call in enumerate(calls)])
    turns = [(Action(kind="search", calls=[ToolCall(call["name"], dict(call["arguments"])) for call in calls]), note)
             for calls, note in rounds]
    return turns + [(Action(kind="answer", answer=task.answers[0]), "")]


def play_apps_tasks(tasks: list[AppTask], action_lists: list[list[tuple[Action, str]]], protocol: AgentProtocol,
                    tokenizer: Any, executor: Any, world: AppsWorld, rollout_config: RolloutConfig,
                    source_name: str = "apps") -> list[SolvedEpisode]:
    """Play the given turns of each task ((action, thought) pairs; concurrently, one episode each) and verify each
    end state against the base state the task starts from (`world.state_of`: its training world's, or the base
    world's).

    executor: a rollouts.tools.ToolExecutor whose MCP source `source_name` serves the apps of `world`.
    """
    questions = [task.to_question() for task in tasks]
    prompts = [tuple(protocol.render_prompt(question, tokenizer)) for question in questions]
    if len(set(prompts)) < len(prompts):
        raise ValueError("play_apps_tasks: a task comes twice; play repeats in separate calls")
    scripts = TurnScripts({prompt: [protocol.action_token_ids(action, tokenizer, thought)
                                    for action, thought in actions]
                           for prompt, actions in zip(prompts, action_lists)})
    groups = run_episodes(ScriptedEngine(tokenizer, scripts), protocol, executor, questions, group_size=1,
                          rollout_config=rollout_config, policy_version=0, greedy=True)
    episodes = []
    for task, group in zip(tasks, groups):
        (trajectory,) = group.trajectories
        final_state = trajectory.episode_states.get(source_name)
        start_state = world.state_of(task)
        verdict = verify_task(task, start_state, final_state if final_state is not None else start_state,
                              trajectory.final_answer)
        episodes.append(SolvedEpisode(task=task, trajectory=trajectory, final_state=final_state, verdict=verdict))
    return episodes


def solve_apps_tasks(tasks: list[AppTask], modes: list[str], protocol: AgentProtocol, tokenizer: Any, executor: Any,
                     world: AppsWorld, rollout_config: RolloutConfig, source_name: str = "apps",
                     notes: bool = False) -> list[SolvedEpisode]:
    """The solver's episodes of `tasks`, one mode each, verified; with `notes`, each round after the first starts
    with its round_notes."""
    if len(modes) != len(tasks):
        raise ValueError(f"{len(tasks)} tasks but {len(modes)} modes")
    actions = [solver_actions(task, mode, round_notes(task, world.state_of(task)) if notes else None)
               for task, mode in zip(tasks, modes)]
    return play_apps_tasks(tasks, actions, protocol, tokenizer, executor, world, rollout_config, source_name)


__all__ = ["SOLVER_MODES", "SolvedEpisode", "play_apps_tasks", "round_notes", "solve_apps_tasks", "solver_actions"]
