"""`fanout train CONFIG`: world → SFT warm-start → asynchronous GRPO on Ray rollout actors → eval.

The loop, in one picture:

    manager (Ray actors, version v..)  ──groups within the staleness bound──►  trainer.step (DeepSpeed)
          ▲                                                                          │
          └──────────────── push_weights(version v+1, Ray object store) ◄────────────┘

Rollout actors keep generating while the trainer steps; `async.max_staleness` bounds how many policy
versions old a trained sample may be (0 = exactly synchronous on-policy GRPO). Each step logs
`reward/*`, `rollout/*`, `loss/*`, `async/*`, `perf/*` (and, every `eval.every_steps`, `eval/validation/*`)
to `<run_dir>/metrics.jsonl` (and wandb, offline by default); checkpoints are atomic and
`experiment.resume=true` continues from the last one.

What it simplifies on purpose: one trainer process (DeepSpeed without a launcher on CPU; the
`deepspeed` launcher or Ray Train on GPUs run the same `GRPOTrainer`), evaluation in the driver
process after the rollout actors are stopped.

    fanout train configs/quickstart.yaml grpo.total_steps=20 async.max_staleness=2
"""

from __future__ import annotations

import logging
import random
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.plugins import import_plugins
from data.types import Question
from rl.config import ConfigError, ExperimentConfig, save_config
from rl.grpo.faults import fault_point
from data.trajectory import Group

logger = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """What the run trains and evaluates on."""

    train_questions: list[Question]
    corpus_path: str  # "" when retrieval goes to an HTTP server
    world: Any = None  # data.world.World for the generated world

    def warm_start_source(self):
        """What the SFT warm-start learns from: the generated world, or these questions and corpus."""
        from rl.app.sft import WarmStartSource

        if self.world is not None:
            return WarmStartSource.from_world(self.world)
        return WarmStartSource(questions=self.train_questions, corpus_path=self.corpus_path)


# ----------------------------------------------------------------------------------------------
# Setup
# ----------------------------------------------------------------------------------------------


def prepare_run_dir(config: ExperimentConfig) -> Path:
    """Create the run folder; an existing one needs experiment.resume=true or experiment.overwrite=true."""
    run_dir = config.run_dir
    has_content = run_dir.is_dir() and any(run_dir.iterdir())
    if has_content and not (config.experiment.resume or config.experiment.overwrite):
        raise ConfigError(
            f"run folder '{run_dir}' already exists: pass experiment.resume=true to continue it, "
            "experiment.overwrite=true to start again, or another experiment.name"
        )
    if has_content and config.experiment.overwrite:
        for stale in ("checkpoints", "metrics.jsonl", "plots", "eval.json", "wandb"):
            target = run_dir / stale
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_training_data(config: ExperimentConfig) -> TrainingData:
    """The generated world (written once into the run folder) or local benchmark files."""
    if config.data.source == "world":
        from data.world import ensure_world

        world_dir = Path(config.data.world_dir) if config.data.world_dir else config.run_dir / "world"
        world = ensure_world(world_dir, config.data.world)
        questions = world.splits["train"]
        corpus_path = str(world_dir / "corpus.jsonl")
    else:
        from data.loaders import load_questions

        questions, world = [], None
        for dataset_name, path in config.data.train_files.items():
            questions.extend(load_questions(path, dataset_name, on_malformed=config.data.on_malformed_row,
                                            columns=config.data.columns.get(dataset_name)))
        corpus_path = config.data.corpus_path
        if corpus_path:  # a bad corpus fails here with file and line, not later inside every rollout actor
            from data.corpus import check_corpus

            check_corpus(corpus_path)
    if config.data.max_train_questions:
        questions = questions[: config.data.max_train_questions]
    if not questions:
        raise ConfigError("the training set is empty: check data.train_files / data.world.num_train")
    return TrainingData(train_questions=questions, corpus_path=corpus_path, world=world)


# ----------------------------------------------------------------------------------------------
# Per-step rollout metrics
# ----------------------------------------------------------------------------------------------


def rollout_metrics(groups: list[Group]) -> dict[str, float]:
    """Means over the step's trajectories: rewards, model calls, sub-queries per round, per structure."""
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)

    def add(key: str, value: float) -> None:
        sums[key] += float(value)
        counts[key] += 1

    for group in groups:
        structure = group.question.structure
        for trajectory in group.trajectories:
            subqueries = trajectory.tool_calls
            rounds = trajectory.search_rounds
            values = {
                "reward/total": trajectory.reward,
                **{f"reward/{name}": value for name, value in trajectory.reward_components.items()},
                "rollout/model_calls": trajectory.model_calls,
                "rollout/tool_calls": subqueries,
                "rollout/search_rounds": rounds,
                "rollout/response_tokens": len(trajectory.response_ids),
                "rollout/generated_tokens": trajectory.num_generated_tokens,
                "rollout/truncated": float(trajectory.truncated),
                "rollout/answered": float(trajectory.final_answer is not None),
                "rollout/tool_errors": sum(1 for turn in trajectory.turns for call in turn.calls if call.error),
            }
            batch_rows = [turn.batch_rows for turn in trajectory.turns if turn.batch_rows]
            if batch_rows:  # how full the engine batches were (continuous batching merges calls)
                values["rollout/engine_batch_rows"] = sum(batch_rows) / len(batch_rows)
            if rounds:
                values["rollout/subqueries_per_round"] = subqueries / rounds
            for key, value in values.items():
                add(key, value)
            for key in ("reward/total", "reward/exact_match", "rollout/model_calls", "rollout/subqueries_per_round"):
                if key in values:
                    add(f"{key}/{structure}", values[key])
    return {key: sums[key] / counts[key] for key in sums}


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


def _progress(config: ExperimentConfig, start_step: int):
    from tqdm.auto import tqdm

    return tqdm(total=config.grpo.total_steps, initial=start_step, desc="grpo", unit="step",
                disable=not config.logging.progress_bar, dynamic_ncols=True)


def _postfix(metrics: dict[str, float]) -> dict[str, str]:
    shown = {"reward": "reward/total", "em": "reward/exact_match", "calls": "rollout/model_calls",
             "stale": "async/staleness_mean"}
    return {label: f"{metrics[key]:.3f}" for label, key in shown.items() if key in metrics}


def _save(trainer, manager, run_dir: Path, step: int) -> Path:
    return trainer.save_checkpoint(run_dir / "checkpoints", step=step,
                                   extra_state={"step": step, "rollout_manager": manager.state_dict()})


def train(config: ExperimentConfig) -> Path:
    """Run the whole experiment; returns the run folder."""
    from rl.grpo.checkpoint import find_latest_checkpoint
    from rollouts.model_loading import load_tokenizer
    from rl.app.metrics import MetricsLogger
    from rollouts.model_loading import set_offline_mode
    from rl.app.sft import ensure_warm_start, log_sft_curve
    from rl.grpo.trainer import GRPOTrainer
    from rollouts.manager import init_ray
    from rl.app.rollout_setup import build_rollout_manager
    from rl.app.evaluate import PeriodicEvaluator

    set_offline_mode()
    import_plugins(config.plugins)  # load_experiment did already when the CLI loaded the config
    run_dir = prepare_run_dir(config)
    seed_everything(config.experiment.seed)
    data = load_training_data(config)  # bad data fails here, before anything is written into the run folder
    periodic_evaluator = PeriodicEvaluator(config)  # and so do bad validation files (eval.every_steps)
    save_config(config, run_dir / "config.yaml")
    model_path = ensure_warm_start(config, data.warm_start_source())

    trainer = GRPOTrainer(config, model_path=model_path, tokenizer=load_tokenizer(model_path))
    start_step, manager_state = 0, None
    latest = find_latest_checkpoint(run_dir) if config.experiment.resume else None
    if latest is not None:
        extra_state = trainer.load_checkpoint(latest)
        start_step, manager_state = extra_state["step"], extra_state.get("rollout_manager")
        logger.info("resuming from %s at step %d (policy version %d)", latest, start_step, trainer.version)

    init_ray(num_cpus=None, plugins=config.plugins)
    manager = build_rollout_manager(config, data.train_questions, model_path=str(model_path),
                             corpus_path=data.corpus_path, initial_version=trainer.version)
    if manager_state is not None:
        manager.load_state_dict(manager_state)
    if trainer.version != 0:
        manager.push_weights(trainer.export_weights(), trainer.version)
    # On resume, rows the interrupted run logged after its last checkpoint are dropped (they are redone).
    metrics_logger = MetricsLogger(run_dir, config.logging, config_dict=_config_dict(config),
                                   resume_step=start_step if config.experiment.resume else None)
    if not metrics_logger.has_logged("sft/step"):  # a resumed run's file may hold the warm-start's curve already
        log_sft_curve(metrics_logger, model_path)
    try:
        _loop(config, trainer, manager, metrics_logger, run_dir, start_step, periodic_evaluator, model_path)
        final_checkpoint = _save(trainer, manager, run_dir, config.grpo.total_steps)
    finally:
        manager.shutdown()
    if config.eval.at_end:
        _final_eval(config, final_checkpoint, metrics_logger)
    metrics_logger.close()
    if config.logging.plots:
        from rl.app.plots import plot_metrics

        plot_metrics(run_dir / "metrics.jsonl", run_dir / "plots")
    return run_dir


def _config_dict(config: ExperimentConfig) -> dict:
    from rl.config import to_dict

    return to_dict(config)


def merge_owned_metrics(sources: dict[str, dict[str, float]]) -> dict[str, float]:
    """One step's metrics from their owners; a key reported by two owners is a bug, refused by name.

    Each metric has one owner: the trainer (`loss/*`, `async/policy_version`, `async/importance_*`,
    `perf/train_*`), the trained groups (`reward/*`, `rollout/<per trajectory>`), the rollout manager
    (`async/staleness_*`, `async/trainer_wait_s`, `perf/weight_sync_s`, buffer and actor counters) and the loop (`perf/step_s`,
    `perf/samples_per_s*`). Merging with dict.update would let one silently
    overwrite another.
    """
    merged: dict[str, float] = {}
    owner_of: dict[str, str] = {}
    for owner, metrics in sources.items():
        for key, value in metrics.items():
            if key in owner_of:
                raise ValueError(f"metric {key!r} is reported by both {owner_of[key]} and {owner}; "
                                 "one of them must stop reporting it")
            merged[key], owner_of[key] = value, owner
    return merged


def _loop(config: ExperimentConfig, trainer, manager, metrics_logger, run_dir: Path, start_step: int,
          periodic_evaluator=None, model_path: Path | None = None) -> None:
    """The GRPO steps; periodic_evaluator (rl.app.evaluate.PeriodicEvaluator) adds eval/validation/* rows."""
    progress = _progress(config, start_step)
    samples_total, loop_start = 0, time.perf_counter()
    for step in range(start_step, config.grpo.total_steps):
        step_start = time.perf_counter()
        groups = manager.get_batch(config.rollout.questions_per_step, current_version=trainer.version)
        version_before = trainer.version
        trainer_metrics = trainer.step(groups)
        if trainer.version != version_before:  # a skipped (non-finite) step made no new version to push
            manager.push_weights(trainer.export_weights(), trainer.version)  # timed in manager.stats()
        fault_point("mid_step", step + 1)
        group_metrics, manager_metrics = rollout_metrics(groups), manager.stats()
        samples = sum(len(group.trajectories) for group in groups)
        samples_total += samples
        step_s = time.perf_counter() - step_start
        loop_metrics = {
            "perf/step_s": step_s,
            "perf/samples_per_s": samples / max(step_s, 1e-9),
            "perf/samples_per_s_cumulative": samples_total / max(time.perf_counter() - loop_start, 1e-9),
        }
        eval_metrics = {}
        if periodic_evaluator is not None and periodic_evaluator.is_due(step + 1):  # eval.every_steps
            eval_metrics = periodic_evaluator.evaluate(model_path, trainer.export_weights(), trainer.version)
        metrics = merge_owned_metrics({
            "the trainer": trainer_metrics, "the trained groups": group_metrics,
            "the rollout manager": manager_metrics, "the train loop": loop_metrics,
            "the periodic evaluation": eval_metrics,
        })
        metrics_logger.log(step + 1, metrics)
        progress.set_postfix(_postfix(metrics))
        progress.update(1)
        every = config.checkpoint.every_steps
        if every and (step + 1) % every == 0 and step + 1 < config.grpo.total_steps:
            _save(trainer, manager, run_dir, step + 1)
        fault_point("step", step + 1)
    progress.close()


def _final_eval(config: ExperimentConfig, checkpoint: Path, metrics_logger) -> dict:
    from rl.app.evaluate import evaluate, flat_metrics, format_table, write_results

    results = evaluate(config, str(Path(checkpoint) / "model"))
    write_results(results, config.run_dir / "eval.json")
    print(format_table(results))
    metrics_logger.log(config.grpo.total_steps, flat_metrics(results))
    return results
