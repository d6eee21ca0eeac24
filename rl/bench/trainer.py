"""Benchmark: one GRPO step of fanout vs TRL's GRPOTrainer, end to end, single-turn, side by side.

    fanout bench trainer            # P=8 prompts x G=8 completions of 48 tokens, 6 measured steps each
    fanout bench trainer --quick    # P=2 x G=2 x 6 tokens, 2 measured steps (test-suite setting)

Both sides train the same untrained tiny Qwen2 (the embedded default's architecture, built from config)
on the same prompts (questions of the generated world rendered with the tags protocol's chat prompt),
with the same group size G, completion budget, sampling temperature 1, learning rate, loss aggregation
(token mean, TRL's "dapo"), no KL, no reference model, one optimizer step per generation batch and the
same reward function (the weighted exact-match + format total of rewards/, given to TRL through
`rewards.trl_adapter.to_trl`). The untrained model almost never emits its end-of-message token, so
both sides generate the full budget: equal work per completion (the table shows the mean lengths).

One step, as each side runs it:
- fanout, in one process, no Ray (the rollout actor's work done in-line): the HF engine
  (rollouts/engine_hf.py) samples G completions per prompt with behaviour log-probs, the rewards score
  them, `rl.grpo.trainer.GRPOTrainer.step` (DeepSpeed engine, ZeRO stage of the quickstart) computes the
  proximal log-probs, the loss, the backward and the optimizer step, then the new weights are
  exported and loaded into the engine's copy of the model (the weight sync of the real loop).
- TRL: `trl.GRPOTrainer.train()` with a callback timing each optimizer step (generation with
  `model.generate`, reward, loss, backward, optimizer step, all inside TRL's step).

Figures: completions/s and generated tokens/s per side (median over the measured steps; the first step
of each side is a warm-up), the generation part of the step (fanout: the engine call; TRL: its
`model.generate` call) and the rest (rewards, loss, backward, optimizer, fanout's weight sync), and ratio_vs_trl = fanout completions/s ÷ TRL completions/s. Both sides run
with one torch thread, one after the other: fanout, TRL, fanout again (the two fanout blocks bracket
TRL so load changes on a shared machine show up as a spread, not a bias). TRL runs in a freshly spawned
process, as a user's single-process script would (see `run_trl_in_clean_process`).
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from rl.bench.common import (
    bench_config,
    clean_spawn_environment,
    generated_tokens,
    load_average,
    prepare_assets,
    print_table,
    ratio,
)
from data.trajectory import Group, Trajectory

REWARD_WEIGHTS = "reward.weights={exact_match: 1.0, format: 0.1}"


@dataclass
class TrainerBenchSettings:
    prompts_per_step: int
    group_size: int
    completion_tokens: int
    measured_steps: int  # per fanout block (two blocks) and for TRL
    warmup_steps: int = 1


@dataclass
class StepTimes:
    """Per-step wall seconds and generated tokens of one side."""

    seconds: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    generate_seconds: list[float] = field(default_factory=list)  # the generation part of each step
    completions_per_step: int = 0

    def median_step_s(self) -> float:
        return statistics.median(self.seconds)

    def median_generate_s(self) -> float:
        return statistics.median(self.generate_seconds) if self.generate_seconds else 0.0

    def completions_per_s(self) -> float:
        return statistics.median(self.completions_per_step / s for s in self.seconds)

    def tokens_per_s(self) -> float:
        return statistics.median(tokens / s for tokens, s in zip(self.tokens, self.seconds))

    def mean_completion_length(self) -> float:
        return sum(self.tokens) / max(len(self.tokens) * self.completions_per_step, 1)


def settings_for(quick: bool) -> TrainerBenchSettings:
    if quick:
        return TrainerBenchSettings(prompts_per_step=2, group_size=2, completion_tokens=6, measured_steps=2)
    return TrainerBenchSettings(prompts_per_step=8, group_size=8, completion_tokens=48, measured_steps=6)


# ----------------------------------------------------------------------------------------------
# fanout: engine → rewards → GRPOTrainer.step → weight sync, in one process
# ----------------------------------------------------------------------------------------------


class FanoutSingleTurn:
    """fanout's GRPO step on single-turn completions, everything in this process."""

    def __init__(self, config, model_path: str, questions: list, settings: TrainerBenchSettings):
        from rollouts.model_loading import load_model_and_tokenizer
        from rl.grpo.trainer import GRPOTrainer
        from rollouts.engine_hf import HFEngine
        from rollouts.protocols import build_protocol

        self.config, self.settings, self.questions = config, settings, questions
        model, tokenizer = load_model_and_tokenizer(model_path)
        self.engine = HFEngine(model, tokenizer)
        self.trainer = GRPOTrainer(config, model_path=model_path, tokenizer=tokenizer)
        self.protocol = build_protocol(config.rollout.protocol, prompt_style=config.rollout.prompt_style)
        self.stop_token_ids = {tokenizer.eos_token_id}  # the TRL side stops on EOS only, so do we
        self.prompt_ids = [self.protocol.render_prompt(question, tokenizer) for question in questions]
        self.step_index = 0
        self.last_generate_s = 0.0

    def _groups(self) -> list[Group]:
        """One step's groups: G single-turn completions of each of the step's prompts, unscored."""
        settings = self.settings
        start = (self.step_index * settings.prompts_per_step) % len(self.questions)
        chosen = [(start + offset) % len(self.questions) for offset in range(settings.prompts_per_step)]
        batch = [self.prompt_ids[index] for index in chosen for _ in range(settings.group_size)]
        started = time.perf_counter()
        outputs = self.engine.generate(
            batch,
            settings.completion_tokens,
            self.stop_token_ids,
            temperature=1.0,
            top_p=1.0,
            seed=self.step_index,
        )
        self.last_generate_s = time.perf_counter() - started
        trajectories = []
        for row, output in enumerate(outputs):
            question_index = chosen[row // settings.group_size]
            trajectory = Trajectory(
                question=self.questions[question_index],
                prompt_ids=list(batch[row]),
                group_id=f"step{self.step_index}-q{question_index}",
                policy_version=self.trainer.version,
            )
            trajectory.append(list(output.token_ids), trainable=True, logprobs=list(output.logprobs))
            trajectory.response_text = self.engine.tokenizer.decode(output.token_ids)
            trajectories.append(trajectory)
        members = [trajectories[start : start + settings.group_size]
                   for start in range(0, len(trajectories), settings.group_size)]  # rows are prompt-major
        return [Group(group[0].group_id, group[0].question, group, policy_version=self.trainer.version)
                for group in members]

    def step(self) -> int:
        """One end-to-end step; returns the generated tokens."""
        from rewards import score_group

        groups = self._groups()
        for group in groups:
            score_group(group, self.config.reward, write_back=True)
        self.trainer.step(groups)
        self.engine.load_weights(self.trainer.export_weights(), self.trainer.version)
        self.step_index += 1
        return generated_tokens(groups)

    def run(self, steps: int, warmup_steps: int) -> StepTimes:
        times = StepTimes(completions_per_step=self.settings.prompts_per_step * self.settings.group_size)
        for index in range(warmup_steps + steps):
            started = time.perf_counter()
            tokens = self.step()
            if index >= warmup_steps:
                times.seconds.append(time.perf_counter() - started)
                times.tokens.append(tokens)
                times.generate_seconds.append(self.last_generate_s)
        return times


# ----------------------------------------------------------------------------------------------
# TRL: GRPOTrainer.train() with a step-timing callback
# ----------------------------------------------------------------------------------------------


def trl_step_timer(times: StepTimes, warmup_steps: int):
    """A TrainerCallback recording the wall time of each optimizer step after the warm-up."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.started = 0.0
            self.steps_seen = 0

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.steps_seen += 1
            if self.steps_seen > warmup_steps:
                times.seconds.append(time.perf_counter() - self.started)

    return StepTimer()


def run_trl(
    config, model_path: str, questions: list, settings: TrainerBenchSettings, output_dir: str
) -> StepTimes:
    """TRL's GRPOTrainer on the same model, prompts, G, completion budget and reward; per-step times."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from rewards.trl_adapter import to_trl
    from rollouts.model_loading import load_model_and_tokenizer
    from rollouts.protocols import build_protocol

    model, tokenizer = load_model_and_tokenizer(model_path)
    generate_seconds = time_calls(model, "generate")  # TRL generates with this model object (no wrapper)
    protocol = build_protocol(config.rollout.protocol, prompt_style=config.rollout.prompt_style)
    rows = [
        {
            "prompt": protocol.prompt_messages(question.question),
            "golden_answers": list(question.answers),
            "structure": question.structure,
        }
        for question in questions
    ]
    completions_per_step = settings.prompts_per_step * settings.group_size
    times = StepTimes(completions_per_step=completions_per_step)
    reward = to_trl("total", config.reward, protocol=config.rollout.protocol)
    token_counts: list[int] = []

    def counted_reward(prompts, completions, completion_ids, **columns):
        token_counts.append(sum(len(ids) for ids in completion_ids))
        return reward(prompts, completions, completion_ids=completion_ids, **columns)

    counted_reward.__name__ = "total"
    arguments = GRPOConfig(
        output_dir=output_dir,
        max_steps=settings.warmup_steps + settings.measured_steps,
        per_device_train_batch_size=completions_per_step,
        gradient_accumulation_steps=1,
        num_generations=settings.group_size,
        max_completion_length=settings.completion_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        learning_rate=config.grpo.learning_rate,
        beta=0.0,
        num_iterations=1,
        epsilon=config.grpo.clip_eps_low,
        epsilon_high=config.grpo.clip_eps_high,
        loss_type="dapo",
        scale_rewards="group",
        max_grad_norm=config.grpo.max_grad_norm,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        gradient_checkpointing=False,
        use_cpu=True,
        bf16=False,
        fp16=False,
        report_to="none",
        logging_steps=10_000,
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=config.experiment.seed,
        log_completions=False,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[counted_reward],
        args=arguments,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[trl_step_timer(times, settings.warmup_steps)],
    )
    trainer.train()
    times.tokens = token_counts[settings.warmup_steps :]
    times.generate_seconds = generate_seconds[settings.warmup_steps :]
    return times


def time_calls(owner: Any, method_name: str) -> list[float]:
    """Replace owner.method_name with a wrapper that appends each call's wall seconds to the returned list."""
    seconds: list[float] = []
    method = getattr(owner, method_name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - started)

    setattr(owner, method_name, timed)
    return seconds


def run_trl_in_clean_process(*arguments: Any) -> StepTimes:
    """`run_trl` as a user runs it: a plain single process (no distributed variables, 1 torch thread).

    fanout's trainer sets RANK/WORLD_SIZE/MASTER_PORT for its one-process DeepSpeed group; inherited, they
    would make Accelerate wrap TRL's model in a one-process DDP. A fresh spawned process avoids that.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with clean_spawn_environment(OMP_NUM_THREADS="1"):
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(_run_trl_single_thread, *arguments).result()


def _run_trl_single_thread(*arguments: Any) -> StepTimes:
    torch.set_num_threads(1)
    return run_trl(*arguments)


# ----------------------------------------------------------------------------------------------
# The suite
# ----------------------------------------------------------------------------------------------


def run(quick: bool) -> dict:
    settings = settings_for(quick)
    torch.set_num_threads(1)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    assets = prepare_assets(quick)
    config = bench_config(
        quick,
        [
            "experiment.name=bench-trainer",
            f"rollout.group_size={settings.group_size}",
            f"rollout.questions_per_step={settings.prompts_per_step}",
            "rollout.temperature=1.0",
            REWARD_WEIGHTS,
            "grpo.kl_coef=0.0",
            "grpo.loss_aggregation=token_mean",
            "grpo.epochs_per_batch=1",
            "grpo.minibatches_per_step=1",
        ],
    )
    questions = assets.train_questions
    model_path = str(assets.base_model_path)
    load_before = load_average()

    fanout = FanoutSingleTurn(config, model_path, questions, settings)
    fanout_times = fanout.run(settings.measured_steps, settings.warmup_steps)
    trl_times = run_trl_in_clean_process(config, model_path, questions, settings, str(config.run_dir / "trl"))
    second_block = fanout.run(settings.measured_steps, 0)
    for name in ("seconds", "tokens", "generate_seconds"):
        getattr(fanout_times, name).extend(getattr(second_block, name))

    sides = (("fanout (HF engine + DeepSpeed GRPOTrainer)", fanout_times), ("TRL GRPOTrainer", trl_times))
    rows = [
        (
            name,
            len(times.seconds),
            f"{times.median_step_s():.2f}",
            f"{times.median_generate_s():.2f}",
            f"{times.median_step_s() - times.median_generate_s():.2f}",
            f"{times.completions_per_s():.1f}",
            f"{times.tokens_per_s():.0f}",
            f"{times.mean_completion_length():.1f}",
        )
        for name, times in sides
    ]
    figures = {
        "ratio_vs_trl": ratio(fanout_times.completions_per_s(), trl_times.completions_per_s()),
        "tokens_ratio_vs_trl": ratio(fanout_times.tokens_per_s(), trl_times.tokens_per_s()),
        "fanout_completions_per_s": round(fanout_times.completions_per_s(), 2),
        "trl_completions_per_s": round(trl_times.completions_per_s(), 2),
        "fanout_tokens_per_s": round(fanout_times.tokens_per_s(), 1),
        "trl_tokens_per_s": round(trl_times.tokens_per_s(), 1),
        "generate_s": {
            "fanout": round(fanout_times.median_generate_s(), 3),
            "trl": round(trl_times.median_generate_s(), 3),
        },
        "step_s": {
            "fanout": round(fanout_times.median_step_s(), 3),
            "trl": round(trl_times.median_step_s(), 3),
        },
        "prompts_per_step": settings.prompts_per_step,
        "group_size": settings.group_size,
        "completion_tokens": settings.completion_tokens,
        "zero_stage": config.deepspeed.zero_stage,
        "load_average": load_before,
    }
    completions = settings.prompts_per_step * settings.group_size
    print_table(
        f"trainer: {settings.prompts_per_step} prompts x G={settings.group_size} = {completions} "
        f"completions of "
        f"<= {settings.completion_tokens} tokens per step, single-turn, 1 torch thread, load {load_before}",
        ["side", "steps", "step s", "generate s", "rest s", "completions/s", "tokens/s", "mean length"],
        rows,
    )
    print(
        f"ratio fanout / TRL: {figures['ratio_vs_trl']:.2f}x completions/s, "
        f"{figures['tokens_ratio_vs_trl']:.2f}x tokens/s"
    )
    return figures
