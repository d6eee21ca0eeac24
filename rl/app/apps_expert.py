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

What it simplifies on purpose: the solver knows the gold arguments (as the QA expert knows the gold
sub-questions), so it never reads the observations; an instruction comes at most once per call (a scripted turn
is found by its prompt).

    episodes = solve_apps_tasks(tasks, ["parallel"] * len(tasks), protocol, tokenizer, executor,
                                world, rollout_config)
    [episode.verdict.success for episode in episodes]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from data.apps.tasks import AppTask
from data.apps.verify import Verdict, verify_task
from data.apps.world import AppsWorld
from data.trajectory import ToolCall, Trajectory
from rollouts.agent_loop import run_episodes
from rollouts.config import RolloutConfig
from rollouts.protocols import Action, AgentProtocol
from rollouts.scripted_engine import ScriptedEngine, TurnScripts

SOLVER_MODES = ("parallel", "sequential")


@dataclass
class SolvedEpisode:
    task: AppTask
    trajectory: Trajectory
    final_state: dict | None  # the episode's app state as the server reported it (None: no state source)
    verdict: Verdict


def solver_actions(task: AppTask, mode: str) -> list[Action]:
    """The model turns of the solver in `mode`: tool-call turns, then the answer."""
    if mode not in SOLVER_MODES:
        raise ValueError(f"solver mode {mode!r} is not one of {SOLVER_MODES}")
    rounds = task.gold_rounds if mode == "parallel" else [[call] for calls in task.gold_rounds for call in calls]
    turns = [Action(kind="search", calls=[ToolCall(call["name"], dict(call["arguments"])) for call in calls])
             for calls in rounds]
    return turns + [Action(kind="answer", answer=task.answers[0])]


def play_apps_tasks(tasks: list[AppTask], action_lists: list[list[Action]], protocol: AgentProtocol, tokenizer: Any,
                    executor: Any, world: AppsWorld, rollout_config: RolloutConfig,
                    source_name: str = "apps") -> list[SolvedEpisode]:
    """Play the given turns of each task (concurrently, one episode each) and verify each end state against the
    base state the task starts from (`world.state_of`: its training world's, or the base world's).

    executor: a rollouts.tools.ToolExecutor whose MCP source `source_name` serves the apps of `world`.
    """
    questions = [task.to_question() for task in tasks]
    prompts = [tuple(protocol.render_prompt(question, tokenizer)) for question in questions]
    if len(set(prompts)) < len(prompts):
        raise ValueError("play_apps_tasks: a task comes twice; play repeats in separate calls")
    scripts = TurnScripts({prompt: [protocol.action_token_ids(action, tokenizer) for action in actions]
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
                     world: AppsWorld, rollout_config: RolloutConfig, source_name: str = "apps") -> list[SolvedEpisode]:
    """The solver's episodes of `tasks`, one mode each, verified."""
    if len(modes) != len(tasks):
        raise ValueError(f"{len(tasks)} tasks but {len(modes)} modes")
    return play_apps_tasks(tasks, [solver_actions(task, mode) for task, mode in zip(tasks, modes)], protocol,
                           tokenizer, executor, world, rollout_config, source_name)


__all__ = ["SOLVER_MODES", "SolvedEpisode", "play_apps_tasks", "solve_apps_tasks", "solver_actions"]
