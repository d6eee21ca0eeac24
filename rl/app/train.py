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

Data-parallel training: the same command under `torchrun --nproc_per_node=N -m rl train CONFIG ...` (or
the `deepspeed` launcher) runs the trainer on N ranks. Rank 0 prepares the run (folder, data, SFT
warm-start; the other ranks wait for the model path it broadcasts), owns the rollout manager, the metrics
(`perf/world_size` = N in every row), the progress bar, the weight push and the final eval. Every step it
broadcasts the batch it got to every rank; each rank trains on its share of whole groups
(rl/grpo/trainer.py) and all take part in the weight export (a gather under ZeRO-3) and the checkpoint
(each rank writes its DeepSpeed shards). Without a launcher it is one process, as always.

What it simplifies on purpose: one rollout manager (rank 0's) whatever the number of ranks; evaluation
in rank 0's process after the rollout actors are stopped; the SFT warm-start of a multi-rank run runs
on rank 0 alone, in a spawned process outside the process group (TRL would otherwise wrap it in DDP).

    fanout train configs/quickstart.yaml grpo.total_steps=20 async.max_staleness=2
    torchrun --nproc_per_node=2 -m rl train configs/quickstart.yaml deepspeed.zero_stage=3
"""

from __future__ import annotations

import json
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
from data.types import Question, question_environment
from rl.config import ConfigError, ExperimentConfig, save_config
from rl.grpo.distributed import (
    broadcast_from_main,
    is_main_process,
    main_process_result,
    without_distributed_environment,
    world_size,
)
from rl.grpo.faults import fault_point
from rollouts.engine import LoraAdapter
from data.trajectory import Group

logger = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """What the run trains and evaluates on."""

    train_questions: list[Question]
    corpus_path: str  # "" when retrieval goes to an HTTP server
    world: Any = None  # data.world.World for the generated world
    warm_start: Any = None  # rl.app.sft.WarmStartSource of another environment (data.source=apps or mixed)

    def warm_start_source(self):
        """What the SFT warm-start learns from: the generated world, or these questions and corpus."""
        from rl.app.sft import WarmStartSource

        if self.warm_start is not None:
            return self.warm_start
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
    """The generated world (written once into the run folder), local benchmark files, the apps world (its
    MCP server then joins config.tools.mcp_servers, rl/app/apps_env.py) or both worlds (rl/app/mixed_env.py)."""
    warm_start = None
    if config.data.source == "mixed":
        from rl.app.evaluate import world_directory
        from rl.app.mixed_env import mixed_training_questions, mixed_warm_start_source, prepare_mixed

        worlds = prepare_mixed(config)  # the apps server joins config.tools.mcp_servers
        questions, world = mixed_training_questions(config, worlds), worlds.qa_world
        corpus_path = str(world_directory(config) / "corpus.jsonl")
        warm_start = mixed_warm_start_source(config, worlds, questions)
    elif config.data.source == "apps":
        from rl.app.apps_env import apps_split_questions, apps_warm_start_source, prepare_apps

        apps_world = prepare_apps(config)
        questions, world, corpus_path = apps_split_questions(config, apps_world, "train"), None, ""
        warm_start = apps_warm_start_source(config, apps_world)
    elif config.data.source == "world":
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
    return TrainingData(train_questions=questions, corpus_path=corpus_path, world=world, warm_start=warm_start)


# ----------------------------------------------------------------------------------------------
# Per-step rollout metrics
# ----------------------------------------------------------------------------------------------


ENVIRONMENT_SPLIT_KEYS = ("rollout/model_calls", "rollout/subqueries_per_round")  # and every reward/* key


def repeated_calls(trajectory) -> int:
    """Tool calls that repeat one the episode already made: the same tool with the same arguments (their text
    folded as the decomposition reward folds sub-queries), counted by rewards.parsing.repeats_per_round. A
    lookup written twice fetches nothing new (`A ## A ## B` for three entities)."""
    from rewards.parsing import fold_query, repeats_per_round

    def call_key(call) -> tuple[str, str]:
        return call.name, fold_query(json.dumps(call.arguments, sort_keys=True, ensure_ascii=False))

    return sum(repeats_per_round([turn.calls for turn in trajectory.turns], key=call_key))


def rollout_metrics(groups: list[Group], by_environment: bool = False) -> dict[str, float]:
    """Means over the step's trajectories: rewards, model calls, sub-queries per round, per structure.

    by_environment (data.source=mixed): also every reward/* key, model calls and sub-queries per round per
    environment of the questions (`reward/total/qa`, `reward/exact_match/qa`, `reward/apps_success/apps`, ...),
    each averaged over that environment's trajectories of the step (absent in a step without any)."""
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)

    def add(key: str, value: float) -> None:
        sums[key] += float(value)
        counts[key] += 1

    for group in groups:
        # an apps task's dependency structure (independent / chain / mixed), else the question's
        structure = group.question.metadata.get("app_task", {}).get("structure", group.question.structure)
        environment = question_environment(group.question)
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
                "rollout/repeated_calls": repeated_calls(trajectory),
            }
            batch_rows = [turn.batch_rows for turn in trajectory.turns if turn.batch_rows]
            if batch_rows:  # how full the engine batches were (continuous batching merges calls)
                values["rollout/engine_batch_rows"] = sum(batch_rows) / len(batch_rows)
            if rounds:
                values["rollout/subqueries_per_round"] = subqueries / rounds
            for key, value in values.items():
                add(key, value)
            for key in ("reward/total", "reward/exact_match", "reward/apps_success", "rollout/model_calls",
                        "rollout/subqueries_per_round"):
                if key in values:
                    add(f"{key}/{structure}", values[key])
            if by_environment:
                for key, value in values.items():
                    if key.startswith("reward/") or key in ENVIRONMENT_SPLIT_KEYS:
                        add(f"{key}/{environment}", value)
    return {key: sums[key] / counts[key] for key in sums}


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


def _progress(config: ExperimentConfig, start_step: int):
    from tqdm.auto import tqdm

    return tqdm(total=config.grpo.total_steps, initial=start_step, desc="grpo", unit="step",
                disable=not (config.logging.progress_bar and is_main_process()), dynamic_ncols=True)


def _postfix(metrics: dict[str, float]) -> dict[str, str]:
    shown = {"reward": "reward/total", "em": "reward/exact_match", "success": "reward/apps_success",
             "calls": "rollout/model_calls",
             "stale": "async/staleness_mean"}
    return {label: f"{metrics[key]:.3f}" for label, key in shown.items() if key in metrics}


def _save(trainer, manager, run_dir: Path, step: int) -> Path:
    """Every rank: the checkpoint is collective. The rollout manager's state (rank 0's) goes in the extra state."""
    extra_state = {"step": step}
    if manager is not None:
        extra_state["rollout_manager"] = manager.state_dict()
    return trainer.save_checkpoint(run_dir / "checkpoints", step=step, extra_state=extra_state)


def _warm_start(config: ExperimentConfig, source: Any) -> Path:
    """The warm-start model folder (rl/app/sft.py). On N ranks, rank 0 alone calls this; an SFT run then goes to
    a spawned process without the launcher's variables, which would make TRL's Accelerate wrap it in a DDP
    of N ranks that the other ranks never join."""
    from rl.app.sft import ensure_warm_start

    if not config.sft.enabled:
        return ensure_warm_start(config, source)
    if world_size() == 1:
        # Alone, the one-process group is already up; without the launcher's variables Accelerate trains
        # the model as is instead of wrapping it in a one-rank DDP that all-reduces every gradient.
        with without_distributed_environment():
            return ensure_warm_start(config, source)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with without_distributed_environment(), ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(ensure_warm_start, config, source).result()


def _prepare_on_main(config: ExperimentConfig) -> tuple[TrainingData, str, str | None]:
    """Rank 0's setup: the run folder, the data, config.yaml, the warm-start; the checkpoint to resume from."""
    from rl.grpo.checkpoint import find_latest_checkpoint
    from rollouts.model_loading import local_model_folder, set_offline_mode

    if config.model.path:  # a hub id is downloaded (or found in the hub cache) first; the error says how to fetch it
        local_model_folder(config.model.path)
    set_offline_mode()  # from here on nothing reaches a hub
    run_dir = prepare_run_dir(config)
    data = load_training_data(config)  # bad data fails here, before anything is written into the run folder
    save_config(config, run_dir / "config.yaml")
    model_path = _warm_start(config, data.warm_start_source())
    latest = find_latest_checkpoint(run_dir) if config.experiment.resume else None
    return data, str(model_path), None if latest is None else str(latest)


def train(config: ExperimentConfig) -> Path:
    """Run the whole experiment; returns the run folder. Every rank of a launcher's group calls it."""
    from rollouts.model_loading import load_tokenizer
    from rl.app.metrics import MetricsLogger
    from rollouts.model_loading import set_offline_mode
    from rl.app.evaluate import PeriodicEvaluator
    from rl.app.sft import log_sft_curve
    from rl.grpo.deepspeed_setup import init_distributed
    from rl.grpo.trainer import GRPOTrainer

    import_plugins(config.plugins)  # load_experiment did already when the CLI loaded the config
    init_distributed(config.experiment.device)  # the launcher's group, or one process
    seed_everything(config.experiment.seed)
    main_setup: dict[str, Any] = {}

    def prepare() -> tuple[str, str | None]:
        main_setup["data"], model_path, latest = _prepare_on_main(config)
        return model_path, latest

    model_path, latest = main_process_result(prepare)  # other ranks wait for rank 0's model path
    set_offline_mode()
    run_dir = config.run_dir
    # every rank: the evaluation's weight export is collective; bad validation files fail here (eval.every_steps)
    periodic_evaluator = PeriodicEvaluator(config)

    trainer = GRPOTrainer(config, model_path=model_path, tokenizer=load_tokenizer(model_path))
    start_step, manager_state = 0, None
    if latest is not None:
        extra_state = trainer.load_checkpoint(latest)
        start_step, manager_state = extra_state["step"], extra_state.get("rollout_manager")
        logger.info("resuming from %s at step %d (policy version %d)", latest, start_step, trainer.version)

    manager = _start_rollouts(config, main_setup["data"], model_path, trainer, manager_state) \
        if is_main_process() else None
    try:
        if trainer.version != 0:  # resumed: the actors start from the warm start and load these weights first
            weights = _rollout_weights(config, trainer)
            if manager is not None:
                manager.push_weights(weights, trainer.version)
        metrics_logger = None
        if is_main_process():
            # On resume, rows the interrupted run logged after its last checkpoint are dropped (they are redone).
            metrics_logger = MetricsLogger(run_dir, config.logging, config_dict=_config_dict(config),
                                           resume_step=start_step if config.experiment.resume else None)
            if not metrics_logger.has_logged("sft/step"):  # a resumed run's file may hold the warm-start's curve
                log_sft_curve(metrics_logger, model_path)
        _loop(config, trainer, manager, metrics_logger, run_dir, start_step, periodic_evaluator, model_path)
        final_checkpoint = _save(trainer, manager, run_dir, config.grpo.total_steps)
    finally:
        if manager is not None:
            manager.shutdown()
    if not is_main_process():
        return run_dir
    if config.eval.at_end:
        _final_eval(config, final_checkpoint, metrics_logger)
    metrics_logger.close()
    if config.logging.plots:
        from rl.app.plots import plot_metrics

        plot_metrics(run_dir / "metrics.jsonl", run_dir / "plots")
    return run_dir


def _start_rollouts(config: ExperimentConfig, data: TrainingData, model_path: str, trainer, manager_state):
    """Rank 0's rollout manager. Its actors load the warm-start folder, whose weights are version 0: a
    resumed run starts at the checkpoint's version and pushes its weights before the first batch."""
    from rl.app.rollout_setup import build_rollout_manager
    from rollouts.manager import init_ray

    with without_distributed_environment():  # Ray's processes are not ranks of the trainer's group
        init_ray(num_cpus=None, plugins=config.plugins)
    manager = build_rollout_manager(config, data.train_questions, model_path=model_path,
                                    corpus_path=data.corpus_path, initial_version=trainer.version, model_version=0)
    if manager_state is not None:
        manager.load_state_dict(manager_state)
    return manager


def _config_dict(config: ExperimentConfig) -> dict:
    from rl.config import to_dict

    return to_dict(config)


def merge_owned_metrics(sources: dict[str, dict[str, float]]) -> dict[str, float]:
    """One step's metrics from their owners; a key reported by two owners is a bug, refused by name.

    Each metric has one owner: the trainer (`loss/*`, `async/policy_version`, `async/importance_*`,
    `perf/train_*`), the trained groups (`reward/*`, `rollout/<per trajectory>`), the rollout manager
    (`async/staleness_*`, `async/trainer_wait_s`, `perf/weight_sync_s`, buffer and actor counters) and the loop (`perf/step_s`,
    `perf/samples_per_s*`, `perf/world_size`). Merging with dict.update would let one silently
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


def _rollout_weights(config: ExperimentConfig, trainer) -> Any:
    """What the actors load, on rank 0 (None elsewhere; every rank joins the gather under ZeRO-3): the full
    weights (LoRA merged in), or the adapter alone with rollout.lora_sync=adapter."""
    if config.rollout.lora_sync != "adapter":
        return trainer.export_weights(main_process_only=True)
    tensors = trainer.export_weights("adapter", main_process_only=True)
    return None if tensors is None else LoraAdapter(tensors, trainer.adapter_config())


def _loop(config: ExperimentConfig, trainer, manager, metrics_logger, run_dir: Path, start_step: int,
          periodic_evaluator=None, model_path: str | None = None) -> None:
    """The steps; every rank runs it. `manager` and `metrics_logger` are rank 0's (None on the other ranks);
    periodic_evaluator (rl.app.evaluate.PeriodicEvaluator) adds eval/validation/* rows."""
    progress = _progress(config, start_step)
    samples_total, loop_start = 0, time.perf_counter()
    for step in range(start_step, config.grpo.total_steps):
        step_start = time.perf_counter()
        groups = None
        if manager is not None:
            groups = manager.get_batch(config.rollout.questions_per_step, current_version=trainer.version)
        groups = broadcast_from_main(groups)  # the global batch on every rank; each trains on its share
        version_before = trainer.version
        trainer_metrics = trainer.step(groups)
        if trainer.version != version_before:  # a skipped (non-finite) step made no new version to push
            weights = _rollout_weights(config, trainer)
            if manager is not None:
                manager.push_weights(weights, trainer.version)  # timed in manager.stats()
        fault_point("mid_step", step + 1)
        eval_metrics = {}
        if periodic_evaluator is not None and periodic_evaluator.is_due(step + 1):  # eval.every_steps
            weights = trainer.export_weights(main_process_only=True)  # every rank: a gather under ZeRO-3
            if is_main_process():
                eval_metrics = periodic_evaluator.evaluate(model_path, weights, trainer.version)
        if manager is not None:
            _log_step(step + 1, groups, trainer_metrics, manager.stats(), eval_metrics, step_start, loop_start,
                      samples_total, metrics_logger, progress, by_environment=config.data.source == "mixed")
        samples_total += sum(len(group.trajectories) for group in groups)
        every = config.checkpoint.every_steps
        if every and (step + 1) % every == 0 and step + 1 < config.grpo.total_steps:
            _save(trainer, manager, run_dir, step + 1)
        fault_point("step", step + 1)
    progress.close()


def _log_step(step: int, groups: list[Group], trainer_metrics: dict[str, float], manager_metrics: dict[str, float],
              eval_metrics: dict[str, float], step_start: float, loop_start: float, samples_before: int,
              metrics_logger, progress, by_environment: bool = False) -> None:
    """Rank 0: one row of metrics.jsonl from the metrics' owners (rollout metrics per environment if asked)."""
    samples = sum(len(group.trajectories) for group in groups)
    step_s = time.perf_counter() - step_start
    loop_metrics = {
        "perf/step_s": step_s,
        "perf/samples_per_s": samples / max(step_s, 1e-9),
        "perf/samples_per_s_cumulative": (samples_before + samples) / max(time.perf_counter() - loop_start, 1e-9),
        "perf/world_size": float(world_size()),
    }
    metrics = merge_owned_metrics({
        "the trainer": trainer_metrics, "the trained groups": rollout_metrics(groups, by_environment),
        "the rollout manager": manager_metrics, "the train loop": loop_metrics,
        "the periodic evaluation": eval_metrics,
    })
    metrics_logger.log(step, metrics)
    progress.set_postfix(_postfix(metrics))
    progress.update(1)


def _final_eval(config: ExperimentConfig, checkpoint: Path, metrics_logger) -> dict:
    from rl.app.evaluate import evaluate, flat_metrics, format_table, write_results

    results = evaluate(config, str(Path(checkpoint) / "model"))
    write_results(results, config.run_dir / "eval.json")
    print(format_table(results))
    metrics_logger.log(config.grpo.total_steps, flat_metrics(results))
    return results
