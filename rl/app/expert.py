"""Scripted expert: demonstration trajectories for the SFT warm-start, tokenised exactly as rollouts are.

The expert knows each question's gold sub-questions and writes the turns a good agent would write:

- mode "parallel" (fan-out, parallel questions only): ONE search turn with every sub-question
  (`<search> q1 ## q2 </search>`), then the answer: 2 model calls.
- mode "sequential": one sub-question per search turn, then the answer: n + 1 model calls. Sequential
  (bridge) questions always use it; their later gold sub-questions already contain the earlier hops'
  answers, i.e. the query the agent writes after reading the previous result.
- single questions: one search, then the answer (both modes are the same).

The answer is the first gold answer. Turns carry no <think> block: the tiny model's per-turn budget is
small, and reasoning text the expert would have to invent teaches nothing the search results don't.

Observations come from the real tools (the retriever behind the tool executor), so the model learns to
read real BM25 results. The trajectory is built with the agent loop's own helpers, in the loop's order:
prompt ids from `protocol.render_prompt`, each model turn's text (`protocol.render_action`) tokenised on
its own, each observation cut to `rollout.max_observation_tokens`, rendered by the protocol (with the
forced-answer cue where the loop puts it) and tokenised on its own. So the sequence is token for token
what `rollouts.agent_loop.run_episodes` records when a model generates the expert's turns.

What it simplifies on purpose: the expert never errs, so the data shows no recovery from a bad search;
a demonstration that would not fit the loop's limits (context, per-turn token budget, turn count) is
dropped and counted, never truncated.

    dataset = write_expert_dataset(world.splits["train"], protocol, tokenizer, executor, config.rollout,
                                   num_trajectories=4000, parallel_fraction=0.3, seed=0)
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from datasets import Dataset

from data.types import Question
from rollouts.config import RolloutConfig
from rollouts.agent_loop import append_observation, bound_observations, decode, encode, run_tool_round
from rollouts.protocols import Action, AgentProtocol, search_calls
from data.trajectory import Trajectory, Turn

logger = logging.getLogger(__name__)

EXPERT_MODES = ("parallel", "sequential")


class ExpertError(ValueError):
    """A question the expert cannot demonstrate in the asked mode."""


@dataclass
class ExpertPlan:
    """The model turns the expert writes for one question: search rounds (queries each), then the answer."""

    search_rounds: list[list[str]]
    answer: str

    @property
    def model_calls(self) -> int:
        return len(self.search_rounds) + 1


def expert_queries(question: Question) -> list[str]:
    """The gold sub-questions, or the question itself when it has none (e.g. single-hop benchmark rows)."""
    queries = [query.strip() for query in question.sub_questions if query.strip()]
    return queries or [question.question.strip()]


def expert_plan(question: Question, mode: str) -> ExpertPlan:
    """The search rounds and answer of the expert in `mode` ("parallel" fans out, "sequential" does not)."""
    if mode not in EXPERT_MODES:
        raise ExpertError(f"expert mode {mode!r} is not one of {EXPERT_MODES}")
    queries = expert_queries(question)
    if mode == "parallel" and question.structure == "sequential" and len(queries) > 1:
        raise ExpertError(
            f"question {question.id!r} is sequential (each hop needs the previous answer), so it cannot be "
            "answered in one fanned-out round; use mode 'sequential'"
        )
    rounds = [queries] if mode == "parallel" else [[query] for query in queries]
    return ExpertPlan(search_rounds=rounds, answer=question.answers[0].strip())


def plan_actions(plan: ExpertPlan) -> list[Action]:
    return [Action(kind="search", calls=search_calls(queries)) for queries in plan.search_rounds] + [
        Action(kind="answer", answer=plan.answer)
    ]


def expert_trajectories(
    questions: list[Question],
    modes: list[str],
    protocol: AgentProtocol,
    tokenizer: Any,
    executor: Any,
    rollout_config: RolloutConfig | None = None,
) -> list[Trajectory | None]:
    """Expert trajectories for `questions` (one mode each), built round by round like the agent loop.

    All tool calls of a round run in one executor call (concurrently, as in rollouts). An entry is None
    when the demonstration does not fit the loop's limits (see `expert_trajectory`).
    executor: anything with run_turns_sync(list[list[ToolCall]]) -> list[list[ToolCall]] (rollouts.tools).
    """
    rollout_config = rollout_config or RolloutConfig()
    if len(modes) != len(questions):
        raise ValueError(f"{len(questions)} questions but {len(modes)} modes")
    plans = [expert_plan(question, mode) for question, mode in zip(questions, modes)]
    scripts = [plan_actions(plan) for plan in plans]
    trajectories: list[Trajectory | None] = [
        Trajectory(question=question, prompt_ids=protocol.render_prompt(question, tokenizer), protocol=protocol.name)
        for question in questions
    ]
    # More search rounds than rollout.max_turns: the loop would force an answer before the expert is done.
    active = [index for index, plan in enumerate(plans) if len(plan.search_rounds) <= rollout_config.max_turns]
    for index in set(range(len(questions))) - set(active):
        trajectories[index] = None
    round_index = 0
    while active:
        active = _play_expert_round(trajectories, scripts, active, round_index, protocol, tokenizer, executor,
                                    rollout_config)
        round_index += 1
    for trajectory in trajectories:
        if trajectory is not None:
            trajectory.response_text = decode(tokenizer, trajectory.response_ids)
    return trajectories


def _play_expert_round(trajectories: list[Trajectory | None], scripts: list[list[Action]], active: list[int],
                       round_index: int, protocol: AgentProtocol, tokenizer: Any, executor: Any,
                       rollout_config: RolloutConfig) -> list[int]:
    """Append round `round_index` of every active script; returns the indices that continue."""
    searching: list[tuple[int, Turn]] = []
    for index in active:
        trajectory = trajectories[index]
        turn_text = protocol.render_action(scripts[index][round_index])
        turn_ids = encode(tokenizer, turn_text)
        room = rollout_config.max_context_tokens - len(trajectory.prompt_ids) - len(trajectory.response_ids)
        if len(turn_ids) > min(rollout_config.max_new_tokens_per_turn, room):
            trajectories[index] = None  # the model could not write this turn inside the loop's budget
            continue
        trajectory.append(turn_ids, trainable=True, logprobs=[0.0] * len(turn_ids))
        turn = Turn(text=decode(tokenizer, turn_ids))
        trajectory.turns.append(turn)
        action = protocol.parse(turn.text)
        if action.kind == "answer":
            turn.answer = trajectory.final_answer = action.answer
        else:
            turn.calls = action.calls
            searching.append((index, turn))
    if not searching:
        return []
    run_tool_round(executor, [turn for _, turn in searching])
    cue_forced_answer = round_index == rollout_config.max_turns - 1
    continuing = []
    for index, turn in searching:
        bound_observations(turn.calls, tokenizer, rollout_config.max_observation_tokens)
        observation = protocol.render_observation(turn.calls, final=cue_forced_answer)
        if append_observation(trajectories[index], observation, tokenizer, rollout_config.max_context_tokens):
            continuing.append(index)
        else:
            trajectories[index] = None  # the context filled up before the answer
    return continuing


def expert_trajectory(
    question: Question,
    protocol: AgentProtocol,
    tokenizer: Any,
    executor: Any,
    mode: str,
    rollout_config: RolloutConfig | None = None,
) -> tuple[list[int], list[int]]:
    """(input_ids, completion_mask) of one expert demonstration: prompt + interleaved turns/observations.

    completion_mask is 1 on the tokens of the model turns (stop tags included) and 0 on the prompt and
    observations. Raises ExpertError if the demonstration does not fit the loop's limits.
    """
    (trajectory,) = expert_trajectories([question], [mode], protocol, tokenizer, executor, rollout_config)
    if trajectory is None:
        raise ExpertError(
            f"question {question.id!r}: the expert demonstration does not fit rollout.max_context_tokens / "
            "rollout.max_new_tokens_per_turn / rollout.max_turns"
        )
    return trajectory_to_example(trajectory)


def trajectory_to_example(trajectory: Trajectory) -> tuple[list[int], list[int]]:
    input_ids = list(trajectory.prompt_ids) + list(trajectory.response_ids)
    completion_mask = [0] * len(trajectory.prompt_ids) + list(trajectory.loss_mask)
    return input_ids, completion_mask


def choose_modes(questions: list[Question], parallel_fraction: float, rng: random.Random) -> list[str]:
    """Fan-out for a `parallel_fraction` share of the parallel questions; one sub-query per turn otherwise."""
    if not 0.0 <= parallel_fraction <= 1.0:
        raise ValueError(f"sft.parallel_fraction must be in [0, 1], got {parallel_fraction}")
    return [
        "parallel" if question.structure == "parallel" and rng.random() < parallel_fraction else "sequential"
        for question in questions
    ]


def sample_questions(questions: list[Question], num_trajectories: int, rng: random.Random) -> list[Question]:
    """`num_trajectories` questions: shuffled passes over `questions` (a question repeats only after all did)."""
    if not questions:
        raise ValueError("no questions to write expert trajectories for (empty training split?)")
    chosen: list[Question] = []
    while len(chosen) < num_trajectories:
        order = list(questions)
        rng.shuffle(order)
        chosen.extend(order[: num_trajectories - len(chosen)])
    return chosen


def write_expert_dataset(
    questions: list[Question],
    protocol: AgentProtocol,
    tokenizer: Any,
    executor: Any,
    rollout_config: RolloutConfig | None = None,
    num_trajectories: int = 0,
    parallel_fraction: float = 0.3,
    seed: int = 0,
    batch_size: int = 256,
) -> Dataset:
    """A seeded mixture of expert demonstrations as a `datasets.Dataset`.

    Columns: input_ids, completion_mask (TRL's pre-tokenised format with a completion mask), and for
    inspection question_id, structure, mode, model_calls. num_trajectories=0 means one per question.
    Only a `parallel_fraction` share of the parallel questions gets the fanned-out demonstration, so the
    warm-started policy mostly searches one sub-query per turn and RL has both behaviours to choose from.
    """
    rng = random.Random(seed)
    chosen = sample_questions(questions, num_trajectories or len(questions), rng)
    modes = choose_modes(chosen, parallel_fraction, rng)
    columns: dict[str, list] = {name: [] for name in ("input_ids", "completion_mask", "question_id", "structure",
                                                      "mode", "model_calls")}
    dropped = 0
    for start in range(0, len(chosen), batch_size):
        batch_questions, batch_modes = chosen[start:start + batch_size], modes[start:start + batch_size]
        trajectories = expert_trajectories(batch_questions, batch_modes, protocol, tokenizer, executor, rollout_config)
        for question, mode, trajectory in zip(batch_questions, batch_modes, trajectories):
            if trajectory is None:
                dropped += 1
                continue
            input_ids, completion_mask = trajectory_to_example(trajectory)
            columns["input_ids"].append(input_ids)
            columns["completion_mask"].append(completion_mask)
            columns["question_id"].append(question.id)
            columns["structure"].append(question.structure)
            columns["mode"].append(mode)
            columns["model_calls"].append(trajectory.model_calls)
    if not columns["input_ids"]:
        raise ExpertError(f"all {len(chosen)} expert demonstrations exceed the rollout limits (rollout."
                          "max_context_tokens / max_new_tokens_per_turn / max_turns); raise them")
    if dropped:
        logger.warning("expert: dropped %d of %d demonstrations that exceed the rollout limits", dropped, len(chosen))
    logger.info("expert: %d demonstrations, modes %s", len(columns["input_ids"]), dict(Counter(columns["mode"])))
    return Dataset.from_dict(columns)


__all__ = [
    "EXPERT_MODES",
    "ExpertError",
    "ExpertPlan",
    "choose_modes",
    "expert_plan",
    "expert_queries",
    "expert_trajectories",
    "expert_trajectory",
    "sample_questions",
    "trajectory_to_example",
    "write_expert_dataset",
]
