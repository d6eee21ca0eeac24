"""The agent loop: batched multi-turn rollouts where every tool call of a round runs concurrently.

For a list of questions, `run_episodes` samples `group_size` trajectories per question (one GRPO group
each) and plays them in lock-step rounds:

    generate (one batched engine call for every trajectory still running)
      → parse each turn with the protocol
      → run ALL tool calls of ALL searching trajectories of the round concurrently (the executor)
      → append the observations (or a corrective text after an invalid turn)
    … up to rollout.max_turns rounds, then one forced-answer round (the last observation carries the cue).

The loss mask is built at token level as tokens are appended: generated tokens go in with their
behaviour log-probs and mask 1, observation tokens (the observation text, as the protocol renders it
after the turn — through the chat template for chat-message protocols — tokenised on its own) with
mask 0, so nothing is ever recovered by re-tokenising the response. Nothing the model writes can crash
the loop: unparseable turns are invalid actions, failing tools are error observations, and contexts
are bounded by rollout.max_context_tokens (the trajectory is then cut and marked `truncated`).
With stateful tool sources (an MCP server that keeps one state per episode, e.g. the apps), each
trajectory records its episode's final state (`Trajectory.episode_states`, what the rewards verify) and
the episode is then ended on the server.

The loop is written once, as the coroutine `run_episodes_async`. Over a shared engine
(rollouts/batcher.py) a rollout actor runs several calls at once: their model turns are merged into
shared engine batches and one call's tool waits overlap the others' generation
(`rollout.continuous_batching`). `run_episodes` runs it from blocking code on a plain engine.

What is simplified on purpose: each round re-prefills the whole context (no KV cache kept across
rounds), and the round waits for the slowest tool call of the batch.

    groups = run_episodes(engine, build_protocol("tags"), executor, questions, group_size=8,
                          rollout_config=config.rollout, policy_version=engine.version, seed=0)
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from data.types import PARTITION_KEY, Question
from rollouts.config import RolloutConfig
from rollouts.batcher import DirectEngine, mix_seed
from rollouts.engine import GenerationOutput, InferenceEngine
from rollouts.protocols import AgentProtocol
from rollouts.tools import run_sync
from data.trajectory import Group, ToolCall, Trajectory, Turn

logger = logging.getLogger(__name__)


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
                       tool_names=protocol.tool_names(), policy_version=policy_version, group_id=group_id,
                       episode_id=f"{group_id}/{index}")
            for index in range(group_size)
        ]
        groups.append(Group(group_id=group_id, question=question, trajectories=trajectories,
                            policy_version=policy_version))
    return groups


def turn_budgets(trajectories: list[Trajectory], rollout_config: RolloutConfig) -> list[int]:
    """Each trajectory's token budget for its next model call (never beyond its context budget)."""
    return [min(rollout_config.max_new_tokens_per_turn, rollout_config.max_context_tokens - context_length(t))
            for t in trajectories]


def record_turns(tokenizer: Any, trajectories: list[Trajectory], outputs: list[GenerationOutput], budgets: list[int],
                 generate_s: float, policy_version: int | None, batch_rows: int) -> list[Turn]:
    """Append each output (cut at its trajectory's budget) with its log-probs; one Turn per trajectory."""
    turns = []
    for trajectory, output, budget in zip(trajectories, outputs, budgets):
        token_ids, logprobs = list(output.token_ids[:budget]), [float(lp) for lp in output.logprobs[:budget]]
        trajectory.append(token_ids, trainable=True, logprobs=logprobs)
        turn = Turn(text=decode(tokenizer, token_ids), generate_s=generate_s, policy_version=policy_version,
                    batch_rows=batch_rows)
        trajectory.turns.append(turn)
        trajectory.generate_s += generate_s
        turns.append(turn)
    return turns


async def generate_turns(engine: Any, trajectories: list[Trajectory], stop_token_ids: set[int],
                         rollout_config: RolloutConfig, temperature: float, seed: int | None,
                         stop_strings: tuple[str, ...] = ()) -> list[Turn]:
    """One model call for `trajectories`; appends the generated tokens and returns one Turn each.

    A turn ends on a stop token id or a stop string (rollouts/protocols.py); its tokens go in as generated.

    engine: an engine with `async generate(...) -> GenerateResult` (rollouts.batcher: DirectEngine, or
    CoalescingEngine, which may batch the call with other episodes'). Every trajectory gets at most its
    remaining context budget (the callers only pass trajectories with a budget >= 1); a completion cut at
    that budget is simply shorter.
    """
    budgets = turn_budgets(trajectories, rollout_config)
    started = time.perf_counter()
    result = await engine.generate([t.prompt_ids + t.response_ids for t in trajectories], max(budgets),
                                   stop_token_ids, temperature=temperature, top_p=rollout_config.top_p, seed=seed,
                                   stop_strings=stop_strings)
    return record_turns(engine.tokenizer, trajectories, result.outputs, budgets, time.perf_counter() - started,
                        result.policy_version, result.batch_rows)


def apply_tool_results(turns: list[Turn], results: list[list[ToolCall]] | None, error: Exception | None,
                       tools_s: float) -> None:
    """Fill each turn's calls from the executor's results; an executor failure becomes an error observation."""
    if error is None and results is not None:
        if len(results) != len(turns) or any(len(res) != len(turn.calls) for res, turn in zip(results, turns)):
            error = RuntimeError("the tool executor returned a different number of results than calls")
        else:
            for turn, calls in zip(turns, results):
                turn.calls = list(calls)
    if error is not None:  # a broken tool backend must not kill the rollout
        for turn in turns:
            for call in turn.calls:
                call.error = call.error or f"tool execution failed: {type(error).__name__}: {error}"
    for turn in turns:
        turn.tools_s = tools_s


async def run_tool_round_async(executor: Any, turns: list[Turn]) -> float:
    """Run every call of every turn concurrently; fills the calls in place; returns the wall time.

    Runs on the caller's event loop (executor.run_turns), so other episodes go on meanwhile. An executor
    failure becomes an error observation on each of its calls, never an exception.
    """
    started = time.perf_counter()
    results, failure = None, None
    try:
        results = await as_async_executor(executor).run_turns([turn.calls for turn in turns])
    except Exception as error:
        failure = error
    tools_s = time.perf_counter() - started
    apply_tool_results(turns, results, failure, tools_s)
    return tools_s


class SyncExecutorAdapter:
    """`async run_turns` for an executor that only has `run_turns_sync` (e.g. a test double)."""

    def __init__(self, executor: Any):
        self.executor = executor

    async def run_turns(self, turns: list[list[ToolCall]]) -> list[list[ToolCall]]:
        return self.executor.run_turns_sync(turns)


def as_async_executor(executor: Any) -> Any:
    """The executor itself if it has `async run_turns` (rollouts.tools.ToolExecutor), else an adapter."""
    return executor if hasattr(executor, "run_turns") else SyncExecutorAdapter(executor)


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
            partition = trajectory.question.metadata.get(PARTITION_KEY)
            for call in turn.calls:  # a stateful tool acts on this trajectory's own state; a question may confine
                call.episode_id = trajectory.episode_id  # its searches to one part of the corpus
                call.corpus_partition = partition
            searching.append((trajectory, turn))
        else:  # invalid, or a search when no searches are left
            turn.invalid = True
    return searching


def observe(protocol: AgentProtocol, tokenizer: Any, active: list[Trajectory], turns: list[Turn],
            rollout_config: RolloutConfig, round_index: int) -> list[Trajectory]:
    """Append each unfinished trajectory's observation (or a corrective text); returns those that continue."""
    if round_index == rollout_config.max_turns:  # that was the forced-answer round
        return []
    cue_next = round_index == rollout_config.max_turns - 1  # the next round is the forced-answer round
    continuing = []
    for trajectory, turn in zip(active, turns):
        if turn.answer is not None:
            continue
        bound_observations(turn.calls, tokenizer, rollout_config.max_observation_tokens)
        text = protocol.observation(turn, tokenizer, final=cue_next)
        if append_observation(trajectory, text, tokenizer, rollout_config.max_context_tokens):
            continuing.append(trajectory)
    return continuing


async def play_round(engine: Any, protocol: AgentProtocol, executor: Any, active: list[Trajectory],
                     rollout_config: RolloutConfig, round_index: int, temperature: float,
                     seed: int | None) -> list[Trajectory]:
    """One generate → tools → observe round; returns the trajectories that continue."""
    round_seed = None if seed is None else mix_seed(seed, round_index)
    turns = await generate_turns(engine, active, protocol.stop_token_ids(engine.tokenizer), rollout_config,
                                 temperature, round_seed, stop_strings=protocol.stop_strings)
    searching = act_on_turns(protocol, active, turns, round_index == rollout_config.max_turns)
    if searching:
        tools_s = await run_tool_round_async(executor, [turn for _, turn in searching])
        for trajectory, _ in searching:
            trajectory.tools_s += tools_s
    return observe(protocol, engine.tokenizer, active, turns, rollout_config, round_index)


def still_running(active: list[Trajectory], rollout_config: RolloutConfig) -> list[Trajectory]:
    """The trajectories with context left; the others are marked truncated."""
    running = []
    for trajectory in active:
        if context_length(trajectory) < rollout_config.max_context_tokens:
            running.append(trajectory)
        else:
            trajectory.truncated = True
    return running


def finish_episodes(tokenizer: Any, groups: list[Group], elapsed_s: float) -> list[Group]:
    """Decode the responses, mark unanswered trajectories truncated, tag each with its oldest policy version."""
    for group in groups:
        for trajectory in group.trajectories:
            trajectory.response_text = decode(tokenizer, trajectory.response_ids)
            trajectory.truncated = trajectory.truncated or trajectory.final_answer is None
            versions = [turn.policy_version for turn in trajectory.turns if turn.policy_version is not None]
            if versions:
                trajectory.policy_version = min(versions)
        group.policy_version = min(trajectory.policy_version for trajectory in group.trajectories)
        group.generate_s = elapsed_s
    return groups


async def record_episode_state(executor: Any, trajectory: Trajectory) -> None:
    """The episode's final state from the executor's stateful sources, then the episode ends there. A failure
    is logged and leaves the state unrecorded (the verifier then sees the untouched base state)."""
    try:
        trajectory.episode_states = await asyncio.to_thread(executor.episode_state, trajectory.episode_id)
        await asyncio.to_thread(executor.end_episode, trajectory.episode_id)
    except Exception as error:  # a dead server must not end the rollout; the episode just fails verification
        logger.warning("episode %s: its final state could not be read (%s: %s)", trajectory.episode_id,
                       type(error).__name__, error)


async def record_episode_states(executor: Any, groups: list[Group]) -> None:
    """Every trajectory's final state, when the executor has tool sources that keep episode state (MCP)."""
    if not getattr(executor, "sources", None):
        return
    await asyncio.gather(*(record_episode_state(executor, trajectory)
                           for group in groups for trajectory in group.trajectories))


def sampling_temperature(rollout_config: RolloutConfig, greedy: bool, temperature: float | None) -> float:
    if greedy:
        return 0.0
    return rollout_config.temperature if temperature is None else temperature


def run_episodes(engine: InferenceEngine, protocol: AgentProtocol, executor: Any, questions: list[Question],
                 group_size: int, rollout_config: RolloutConfig, policy_version: int, seed: int | None = None,
                 greedy: bool = False, temperature: float | None = None) -> list[Group]:
    """Play `group_size` trajectories per question to an answer (or the turn/context limit); one Group each.

    The blocking form of run_episodes_async, on a plain InferenceEngine: every round is one engine call
    for all the trajectories still running. Trajectories keep `policy_version`.
    temperature: sampling temperature (default rollout.temperature; greedy=True means 0).
    executor: anything with `async run_turns` or `run_turns_sync(list[list[ToolCall]]) -> list[list[ToolCall]]`.
    """
    return run_sync(run_episodes_async(DirectEngine(engine), protocol, executor, questions, group_size,
                                       rollout_config, policy_version, seed=seed, greedy=greedy,
                                       temperature=temperature))


async def run_episodes_async(engine: Any, protocol: AgentProtocol, executor: Any, questions: list[Question],
                             group_size: int, rollout_config: RolloutConfig, policy_version: int,
                             seed: int | None = None, greedy: bool = False,
                             temperature: float | None = None) -> list[Group]:
    """run_episodes as a coroutine, so that many calls run at once on one event loop.

    engine: an engine with `async generate(...) -> GenerateResult`: rollouts.batcher.CoalescingEngine,
    which merges the model turns of concurrent calls into one batch, or DirectEngine. While this call
    waits for its tools, the others generate. When the engine reports the policy version of each turn
    (CoalescingEngine), a trajectory (and its group) is tagged with the oldest one, so the staleness
    bound holds for every token.
    """
    started = time.perf_counter()
    groups = start_groups(protocol, engine.tokenizer, questions, group_size, policy_version)
    active = [trajectory for group in groups for trajectory in group.trajectories]
    for round_index in range(rollout_config.max_turns + 1):
        active = still_running(active, rollout_config)
        if not active:
            break
        active = await play_round(engine, protocol, executor, active, rollout_config, round_index,
                                  sampling_temperature(rollout_config, greedy, temperature), seed)
    await record_episode_states(executor, groups)
    return finish_episodes(engine.tokenizer, groups, time.perf_counter() - started)


__all__ = ["run_episodes", "run_episodes_async", "start_groups", "generate_turns", "run_tool_round_async",
           "act_on_turns", "play_round", "as_async_executor"]
