"""Benchmark: rollout throughput with 1 vs 2 Ray actors, and what fanning out saves per question.

    fanout bench rollouts            # warm-started tiny model, 100 ms tool latency
    fanout bench rollouts --quick    # untrained micro model, 10 ms latency (test-suite setting)

Part 1, actors. `RolloutManager` with `rollout.num_workers` = 1, then 2 (one CPU and one torch thread
per actor), on the SFT warm-started tiny model of the benchmark assets (rl/bench/common.py), real BM25
search behind `tools.latency_s`, the trainer idle: the driver only takes batches (`get_batch` at policy
version 0 with a staleness bound wide enough that nothing is dropped). The first batch is a warm-up
(actor start-up: model load, BM25 index); then trajectories/s and generated tokens/s are measured over
the next batches (the manager's count of groups finished in that window, so groups generated ahead
during the warm-up do not count). actors_ratio = trajectories/s with 2 actors ÷ with 1.

Part 2, fan-out. On the parallel questions of the world (independent sub-queries), the scripted
expert's two behaviours are played through the real agent loop (`rollouts.agent_loop.run_episodes`)
with real tools and latency: "fan-out" (every sub-query in one `<search>` turn, run concurrently) and
"one query per turn". A `ScriptedEngine` emits the expert's turns and, to charge a realistic generation
cost, decodes them token by token through the tiny model with a KV cache (teacher forcing, same
per-token work as sampling). Each question is played on its own, so the wall time is that question's
latency. Figures: model calls and wall seconds per question for each behaviour, and their ratios.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from rl.bench.common import (
    BenchAssets,
    bench_config,
    generated_tokens,
    load_average,
    prepare_assets,
    print_table,
    ratio,
    timer,
)
from rollouts.engine import GenerationOutput, InferenceEngine

# ----------------------------------------------------------------------------------------------
# Part 1: rollout throughput of N actors (also used by the scaling suite)
# ----------------------------------------------------------------------------------------------


@dataclass
class ThroughputResult:
    num_workers: int
    groups_per_s: float  # groups the actors finished per second in the measured window
    trajectories_per_group: int
    tokens_per_group: float  # mean generated tokens of the groups the driver received
    seconds: float
    warmup_s: float

    @property
    def trajectories_per_s(self) -> float:
        return self.groups_per_s * self.trajectories_per_group

    @property
    def tokens_per_s(self) -> float:
        return self.groups_per_s * self.tokens_per_group


def throughput_overrides() -> list[str]:
    """A staleness bound and buffer wide enough that an idle trainer never throttles the actors."""
    return [
        "async.max_staleness=1000",
        "async.max_buffered_groups=64",
        "rollout.max_inflight_calls_per_worker=2",
        "rollout.worker_num_cpus=1",
        "rollout.torch_threads_per_worker=1",
    ]


def measure_actor_throughput(
    assets: BenchAssets, config, num_workers: int, measured_batches: int, min_seconds: float = 0.0
) -> ThroughputResult:
    """Groups, trajectories and generated tokens per second from `num_workers` rollout actors, trainer idle.

    The rate is the manager's own count of groups finished inside the measured window (after a warm-up
    batch; the driver keeps taking batches until `measured_batches` batches' worth were finished and at
    least `min_seconds` passed), so groups generated ahead during the warm-up do not inflate it; tokens
    per group come from the groups the driver took in that window.
    """
    from rollouts.manager import init_ray
    from rl.app.rollout_setup import build_rollout_manager

    init_ray()
    config.rollout.num_workers = num_workers
    batch_groups = config.rollout.questions_per_step
    with build_rollout_manager(
        config, assets.train_questions, model_path=str(assets.model_path), corpus_path=assets.corpus_path
    ) as manager:
        with timer() as warmup:
            manager.get_batch(batch_groups, current_version=0, timeout=1800)

        def groups_finished() -> float:
            return manager.stats(reset_window=False)["rollout/groups_generated"]

        finished_before, received = groups_finished(), []
        window_start = time.perf_counter()
        while (
            groups_finished() - finished_before < measured_batches * batch_groups
            or time.perf_counter() - window_start < min_seconds
        ):
            received += manager.get_batch(batch_groups, current_version=0, timeout=1800)
        measured_s = time.perf_counter() - window_start
        groups_per_s = (groups_finished() - finished_before) / measured_s
    return ThroughputResult(
        num_workers,
        groups_per_s,
        config.rollout.group_size,
        generated_tokens(received) / len(received),
        measured_s,
        warmup["s"],
    )


def actor_rows(results: list[ThroughputResult]) -> list[tuple]:
    base = results[0].trajectories_per_s
    return [
        (
            result.num_workers,
            f"{result.seconds:.1f}",
            f"{result.trajectories_per_s:.2f}",
            f"{result.tokens_per_s:.0f}",
            f"{result.tokens_per_group / result.trajectories_per_group:.0f}",
            f"{result.trajectories_per_s / base:.2f}x",
            f"{result.warmup_s:.1f}",
        )
        for result in results
    ]


ACTOR_HEADER = [
    "actors",
    "measured (s)",
    "trajectories/s",
    "tokens/s",
    "tokens/trajectory",
    "vs 1 actor",
    "warm-up (s)",
]

# ----------------------------------------------------------------------------------------------
# Part 2: fan-out vs one query per turn, through the agent loop
# ----------------------------------------------------------------------------------------------


class ScriptedEngine(InferenceEngine):
    """Emits pre-written turns (by prompt and round) and pays the model's decode cost for them.

    scripts: {prompt token ids: [turn token ids per round]}. A context is matched to its script by its
    prompt prefix; the round is the number of turns already emitted for that prompt. With `model`, the
    turn is decoded token by token through it (prefill + one cached forward per token) and the log-probs
    are the model's; without, log-probs are 0.
    """

    def __init__(self, tokenizer: Any, scripts: dict[tuple[int, ...], list[list[int]]], model: Any = None):
        super().__init__(tokenizer)
        self.scripts = scripts
        self.model = model.eval() if model is not None else None
        self.rounds_played: dict[tuple[int, ...], int] = {}

    @classmethod
    def from_pretrained(cls, model_path, rollout_config, dtype="float32", device="cpu"):
        raise NotImplementedError("ScriptedEngine is built from scripts, not loaded from a model folder")

    def load_weights(self, state_dict_or_ref: Any, version: int) -> None:
        self._version = int(version)

    def _script_for(self, context_ids: list[int]) -> tuple[tuple[int, ...], list[list[int]]]:
        for prompt, turns in self.scripts.items():
            if tuple(context_ids[: len(prompt)]) == prompt:
                return prompt, turns
        raise KeyError("ScriptedEngine: a context matches no scripted prompt")

    @torch.inference_mode()
    def _forced_logprobs(self, context_ids: list[int], forced_ids: list[int]) -> list[float]:
        from transformers import DynamicCache

        from rollouts.engine_hf import cache_argument_name

        cache = DynamicCache()
        cache_kwargs = {cache_argument_name(self.model): cache}
        logits = self.model(
            input_ids=torch.tensor([context_ids]), use_cache=True, logits_to_keep=1, **cache_kwargs
        ).logits[:, -1, :]
        logprobs = []
        for token_id in forced_ids:
            logprobs.append(float(torch.log_softmax(logits.float(), dim=-1)[0, token_id]))
            logits = self.model(
                input_ids=torch.tensor([[token_id]]), use_cache=True, **cache_kwargs
            ).logits[:, -1, :]
        return logprobs

    def generate(
        self, batch_prompt_ids, max_new_tokens, stop_token_ids, temperature=1.0, top_p=1.0, seed=None,
        stop_strings=(),
    ):
        outputs = []
        for context_ids in batch_prompt_ids:
            prompt, turns = self._script_for(context_ids)
            round_index = self.rounds_played.get(prompt, 0)
            self.rounds_played[prompt] = round_index + 1
            turn_ids = turns[min(round_index, len(turns) - 1)][:max_new_tokens]
            logprobs = (
                self._forced_logprobs(context_ids, turn_ids)
                if self.model is not None
                else [0.0] * len(turn_ids)
            )
            finish_reason = "stop" if turn_ids and turn_ids[-1] in stop_token_ids else "length"
            outputs.append(GenerationOutput(list(turn_ids), logprobs, finish_reason))
        return outputs


def expert_scripts(
    questions: list, mode: str, protocol: Any, tokenizer: Any
) -> dict[tuple[int, ...], list[list[int]]]:
    from rl.app.expert import expert_plan, plan_actions
    from rollouts.agent_loop import encode

    scripts = {}
    for question in questions:
        actions = plan_actions(expert_plan(question, mode))
        scripts[tuple(protocol.render_prompt(question, tokenizer))] = [
            encode(tokenizer, protocol.render_action(action)) for action in actions
        ]
    return scripts


@dataclass
class BehaviourResult:
    mode: str
    model_calls: float  # mean per question
    search_rounds: float
    tool_calls: float
    wall_s: float  # mean per question
    answered: float  # share of questions answered correctly


def play_behaviour(questions: list, mode: str, config, assets: BenchAssets) -> BehaviourResult:
    """Each question alone through run_episodes with the scripted expert in `mode`; means per question."""
    from rewards import exact_match
    from rollouts.agent_loop import run_episodes
    from rollouts.environment import build_environment
    from rollouts.model_loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(assets.model_path)
    environment = build_environment(config.rollout, config.tools, config.retriever, documents=assets.world.documents)
    protocol, executor = environment.protocol, environment.executor
    engine = ScriptedEngine(tokenizer, expert_scripts(questions, mode, protocol, tokenizer), model=model)
    run_episodes(engine, protocol, executor, questions[:1], 1, config.rollout, policy_version=0)  # warm-up
    engine.rounds_played.clear()
    trajectories, seconds = [], []
    for question in questions:
        with timer() as elapsed:
            (group,) = run_episodes(
                engine, protocol, executor, [question], 1, config.rollout, policy_version=0
            )
        seconds.append(elapsed["s"])
        trajectories.append(group.trajectories[0])
    count = len(trajectories)
    return BehaviourResult(
        mode=mode,
        model_calls=sum(t.model_calls for t in trajectories) / count,
        search_rounds=sum(t.search_rounds for t in trajectories) / count,
        tool_calls=sum(t.tool_calls for t in trajectories) / count,
        wall_s=statistics.mean(seconds),
        answered=sum(exact_match(t.final_answer or "", t.question.answers) for t in trajectories) / count,
    )


def fanout_figures(quick: bool, assets: BenchAssets) -> dict:
    num_questions = 2 if quick else 24
    config = bench_config(
        quick,
        [
            "experiment.name=bench-rollouts-fanout",
            "rollout.max_turns=4",
            "rollout.max_new_tokens_per_turn=96",
            "rollout.max_context_tokens=2048",
        ],
    )
    questions = [question for question in assets.train_questions if question.structure == "parallel"][
        :num_questions
    ]
    fan_out = play_behaviour(questions, "parallel", config, assets)
    one_per_turn = play_behaviour(questions, "sequential", config, assets)
    rows = [
        (
            label,
            f"{result.model_calls:.2f}",
            f"{result.search_rounds:.2f}",
            f"{result.tool_calls:.2f}",
            f"{result.wall_s * 1000:.0f}",
            f"{result.answered:.2f}",
        )
        for label, result in (("fan-out (one round)", fan_out), ("one query per turn", one_per_turn))
    ]
    print_table(
        f"fan-out on {len(questions)} parallel questions, scripted expert through the agent loop, "
        f"tool latency {config.tools.latency_s * 1000:.0f} ms",
        ["behaviour", "model calls", "search rounds", "tool calls", "wall ms / question", "EM"],
        rows,
    )
    return {
        "questions": len(questions),
        "model_calls": {
            "fan_out": round(fan_out.model_calls, 2),
            "one_per_turn": round(one_per_turn.model_calls, 2),
        },
        "wall_s_per_question": {
            "fan_out": round(fan_out.wall_s, 4),
            "one_per_turn": round(one_per_turn.wall_s, 4),
        },
        "model_calls_ratio": ratio(one_per_turn.model_calls, fan_out.model_calls),
        "latency_ratio": ratio(one_per_turn.wall_s, fan_out.wall_s),
    }


# ----------------------------------------------------------------------------------------------
# The suite
# ----------------------------------------------------------------------------------------------


def run(quick: bool) -> dict:
    assets = prepare_assets(quick)
    measured_batches, min_seconds = (1, 0.0) if quick else (8, 30.0)
    load_before = load_average()
    results = []
    for num_workers in (1, 2):
        config = bench_config(
            quick, [f"experiment.name=bench-rollouts-{num_workers}", *throughput_overrides()]
        )
        results.append(measure_actor_throughput(assets, config, num_workers, measured_batches, min_seconds))
    print_table(
        f"rollouts: >= {measured_batches} batches and >= {min_seconds:.0f} s of "
        f"{config.rollout.questions_per_step} groups x "
        f"G={config.rollout.group_size} after a warm-up batch, tool latency "
        f"{config.tools.latency_s * 1000:.0f} ms, trainer idle, load {load_before}",
        ACTOR_HEADER,
        actor_rows(results),
    )
    fan_out = fanout_figures(quick, assets)
    one, two = results
    return {
        "actors_ratio": ratio(two.trajectories_per_s, one.trajectories_per_s),
        "tokens_per_s": round(two.tokens_per_s, 1),
        "tokens_per_s_1_actor": round(one.tokens_per_s, 1),
        "trajectories_per_s": {"1": round(one.trajectories_per_s, 3), "2": round(two.trajectories_per_s, 3)},
        "fan_out": fan_out,
        "load_average": load_before,
    }
