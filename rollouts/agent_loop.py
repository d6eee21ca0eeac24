"""The agent loop: batched multi-turn rollouts where every tool call of a round runs concurrently.

For a list of questions, `run_episodes` samples `group_size` trajectories per question (one GRPO group
each) and plays them in lock-step rounds:

    generate (one batched engine call for every trajectory still running)
      → parse each turn with the protocol
      → run ALL tool calls of ALL searching trajectories of the round concurrently (the executor)
      → append the observations (or a corrective text after an invalid turn)
    … up to rollout.max_turns rounds, then one forced-answer round (the last observation carries the cue).

The loss mask is built at token level as tokens are appended: generated tokens go in with their
behaviour log-probs and mask 1, observation tokens (the observation text tokenised on its own) with
mask 0, so nothing is ever recovered by re-tokenising the response. Nothing the model writes can crash
the loop: unparseable turns are invalid actions, failing tools are error observations, and contexts
are bounded by rollout.max_context_tokens (the trajectory is then cut and marked `truncated`).

What is simplified on purpose: each round re-prefills the whole context (no KV cache kept across
rounds), and the round waits for the slowest tool call of the batch.

    groups = run_episodes(engine, build_protocol("tags"), executor, questions, group_size=8,
                          rollout_config=config.rollout, policy_version=engine.version, seed=0)
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from data.types import Question
from rl.config import RolloutConfig
from rollouts.engine import InferenceEngine
from rollouts.protocols import AgentProtocol
from rollouts.trajectory import Group, ToolCall, Trajectory, Turn


def decode(tokenizer: Any, token_ids: list[int]) -> str:
    return tokenizer.decode(token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def context_length(trajectory: Trajectory) -> int:
    return len(trajectory.prompt_ids) + len(trajectory.response_ids)


def start_groups(protocol: AgentProtocol, tokenizer: Any, questions: list[Question], group_size: int,
                 policy_version: int) -> list[Group]:
    """One group of `group_size` empty trajectories per question, sharing the prompt and a fresh group id."""
    groups = []
    for question in questions:
        group_id = f"{question.id}:{uuid.uuid4().hex[:12]}"
        prompt_ids = protocol.render_prompt(question, tokenizer)
        trajectories = [
            Trajectory(question=question, prompt_ids=list(prompt_ids), protocol=protocol.name,
                       policy_version=policy_version, group_id=group_id)
            for _ in range(group_size)
        ]
        groups.append(Group(group_id=group_id, question=question, trajectories=trajectories,
                            policy_version=policy_version))
    return groups


def generate_turns(engine: InferenceEngine, trajectories: list[Trajectory], stop_token_ids: set[int],
                   rollout_config: RolloutConfig, temperature: float, seed: int | None) -> list[Turn]:
    """One batched model call for `trajectories`; appends the generated tokens and returns one Turn each.

    Every trajectory gets at most its remaining context budget (the callers only pass trajectories with
    a budget >= 1); a completion cut at that budget is simply shorter.
    """
    budgets = [min(rollout_config.max_new_tokens_per_turn, rollout_config.max_context_tokens - context_length(t))
               for t in trajectories]
    started = time.perf_counter()
    outputs = engine.generate([t.prompt_ids + t.response_ids for t in trajectories], max(budgets), stop_token_ids,
                              temperature=temperature, top_p=rollout_config.top_p, seed=seed)
    generate_s = time.perf_counter() - started
    turns = []
    for trajectory, output, budget in zip(trajectories, outputs, budgets):
        token_ids, logprobs = list(output.token_ids[:budget]), [float(lp) for lp in output.logprobs[:budget]]
        trajectory.append(token_ids, trainable=True, logprobs=logprobs)
        turn = Turn(text=decode(engine.tokenizer, token_ids), generate_s=generate_s)
        trajectory.turns.append(turn)
        trajectory.generate_s += generate_s
        turns.append(turn)
    return turns


def run_tool_round(executor: Any, turns: list[Turn]) -> float:
    """Run every call of every turn concurrently; fills the calls in place; returns the wall time.

    An executor failure becomes an error observation on each of its calls, never an exception.
    """
    started = time.perf_counter()
    try:
        results = executor.run_turns_sync([turn.calls for turn in turns])
        if len(results) != len(turns) or any(len(res) != len(turn.calls) for res, turn in zip(results, turns)):
            raise RuntimeError("the tool executor returned a different number of results than calls")
        for turn, calls in zip(turns, results):
            turn.calls = list(calls)
    except Exception as error:  # a broken tool backend must not kill the rollout
        for turn in turns:
            for call in turn.calls:
                call.error = call.error or f"tool execution failed: {type(error).__name__}: {error}"
    tools_s = time.perf_counter() - started
    for turn in turns:
        turn.tools_s = tools_s
    return tools_s


def bound_observations(calls: list[ToolCall], tokenizer: Any, max_observation_tokens: int) -> None:
    """Cut each call's observation to max_observation_tokens tokens (what the model is shown)."""
    for call in calls:
        observation_ids = encode(tokenizer, call.observation)
        if len(observation_ids) > max_observation_tokens:
            call.observation = decode(tokenizer, observation_ids[:max_observation_tokens])


def append_observation(trajectory: Trajectory, text: str, tokenizer: Any, max_context_tokens: int) -> bool:
    """Append injected text (mask 0); returns False (and marks `truncated`) when the context is full."""
    observation_ids = encode(tokenizer, text)
    room = max_context_tokens - context_length(trajectory)
    trajectory.append(observation_ids[:max(room, 0)], trainable=False)
    if len(observation_ids) >= room:
        trajectory.truncated = True
        return False
    return True


def act_on_turns(protocol: AgentProtocol, trajectories: list[Trajectory], turns: list[Turn],
                 forced_answer_round: bool) -> list[tuple[Trajectory, Turn]]:
    """Parse each turn; record answers and invalid turns; returns the (trajectory, turn) pairs that search."""
    searching = []
    for trajectory, turn in zip(trajectories, turns):
        action = protocol.parse(turn.text)
        if action.kind == "answer":
            turn.answer = trajectory.final_answer = action.answer
        elif action.kind == "search" and not forced_answer_round:
            turn.calls = action.calls
            searching.append((trajectory, turn))
        else:  # invalid, or a search when no searches are left
            turn.invalid = True
    return searching


def play_round(engine: InferenceEngine, protocol: AgentProtocol, executor: Any, active: list[Trajectory],
               rollout_config: RolloutConfig, round_index: int, temperature: float, seed: int | None) -> list[Trajectory]:
    """One generate → tools → observe round; returns the trajectories that continue."""
    tokenizer = engine.tokenizer
    forced_answer_round = round_index == rollout_config.max_turns
    cue_next = round_index == rollout_config.max_turns - 1  # the next round is the forced-answer round
    round_seed = None if seed is None else seed + round_index
    turns = generate_turns(engine, active, protocol.stop_token_ids(tokenizer), rollout_config, temperature, round_seed)
    searching = act_on_turns(protocol, active, turns, forced_answer_round)
    if searching:
        tools_s = run_tool_round(executor, [turn for _, turn in searching])
        for trajectory, _ in searching:
            trajectory.tools_s += tools_s
    if forced_answer_round:
        return []
    continuing = []
    for trajectory, turn in zip(active, turns):
        if turn.answer is not None:
            continue
        if turn.calls:
            bound_observations(turn.calls, tokenizer, rollout_config.max_observation_tokens)
            text = protocol.render_observation(turn.calls, final=cue_next)
        else:
            text = protocol.corrective_observation(final=cue_next)
        if append_observation(trajectory, text, tokenizer, rollout_config.max_context_tokens):
            continuing.append(trajectory)
    return continuing


def run_episodes(engine: InferenceEngine, protocol: AgentProtocol, executor: Any, questions: list[Question],
                 group_size: int, rollout_config: RolloutConfig, policy_version: int, seed: int | None = None,
                 greedy: bool = False, temperature: float | None = None) -> list[Group]:
    """Play `group_size` trajectories per question to an answer (or the turn/context limit); one Group each.

    temperature: sampling temperature (default rollout.temperature; greedy=True means 0).
    executor: anything with run_turns_sync(list[list[ToolCall]]) -> list[list[ToolCall]].
    """
    started = time.perf_counter()
    tokenizer = engine.tokenizer
    groups = start_groups(protocol, tokenizer, questions, group_size, policy_version)
    trajectories = [trajectory for group in groups for trajectory in group.trajectories]
    sampling_temperature = 0.0 if greedy else (rollout_config.temperature if temperature is None else temperature)
    active = trajectories
    for round_index in range(rollout_config.max_turns + 1):
        has_room = [context_length(t) < rollout_config.max_context_tokens for t in active]
        for trajectory, room in zip(active, has_room):
            trajectory.truncated = trajectory.truncated or not room
        active = [trajectory for trajectory, room in zip(active, has_room) if room]
        if not active:
            break
        active = play_round(engine, protocol, executor, active, rollout_config, round_index, sampling_temperature, seed)
    elapsed_s = time.perf_counter() - started
    for trajectory in trajectories:
        trajectory.response_text = decode(tokenizer, trajectory.response_ids)
        trajectory.truncated = trajectory.truncated or trajectory.final_answer is None
    for group in groups:
        group.generate_s = elapsed_s
    return groups


__all__ = ["run_episodes", "start_groups", "generate_turns", "run_tool_round", "act_on_turns", "play_round"]
