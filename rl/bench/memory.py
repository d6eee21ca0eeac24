"""Benchmark: peak memory of a short quickstart-shaped run (driver + Ray processes) and of one trainer step.

    fanout bench memory            # 3 GRPO steps of the reader's shape (16 questions x 8, 4 turns)
    fanout bench memory --quick    # micro model, 2 tiny steps (test-suite setting)

1. Run: `python -m rl train configs/quickstart.yaml ...` in a child process, with the quickstart's
   model (tiny Qwen2, hidden 128, 2 layers), batch shape and one rollout actor, starting from the cached
   SFT warm-start (no SFT, eval, plots or periodic checkpoints). Every 0.2 s the suite sums the resident
   set size (RSS) of that process and all its descendants (the Ray head processes started by its
   `ray.init`, the rollout actor, idle Ray workers) and keeps the peak, with the split at that moment:
   driver (trainer), rollout actors, other (Ray head processes, idle Ray workers). RSS counts shared
   pages (libraries, the object store's shared memory) once per process, so the sum is an upper bound
   on the machine's memory use.
2. One trainer step: a freshly spawned process builds `GRPOTrainer` (DeepSpeed, ZeRO stage of the
   quickstart) on the same model and runs one `step` on a quickstart-sized batch generated beforehand;
   its peak is `resource.getrusage(RUSAGE_SELF).ru_maxrss` (imports of torch/DeepSpeed included). Once
   with the quickstart's `grpo.minibatches_per_step` (1: the whole batch's logits at once) and once with
   4 micro-batches, the knob that bounds the activation memory.

The target is <= 6 GiB for the whole run on the embedded default (peak_rss_gib).
"""

from __future__ import annotations

import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rl.bench.common import (
    QUICKSTART_CONFIG,
    bench_config,
    bench_overrides,
    child_environment,
    clean_spawn_environment,
    generate_training_batch,
    load_average,
    num_trajectories,
    prepare_assets,
    print_table,
)

SAMPLE_EVERY_S = 0.2
GIB = 2**30


def run_overrides(quick: bool) -> list[str]:
    """The reader's rollout shape (full: 16 questions x 8) or the micro one (quick); a few steps, one
    actor."""
    shape = (
        []
        if quick
        else [
            "rollout.questions_per_step=16",
            "rollout.group_size=8",
            "rollout.max_turns=4",
            "rollout.max_new_tokens_per_turn=48",
            "rollout.max_context_tokens=1024",
            "tools.latency_s=0.0",
        ]
    )
    return [*shape, f"grpo.total_steps={2 if quick else 3}", "rollout.num_workers=1"]


@dataclass
class MemorySample:
    total: int = 0
    by_role: dict[str, int] = field(default_factory=dict)
    processes: int = 0


def process_role(process, root_pid: int) -> str:
    if process.pid == root_pid:
        return "driver"
    try:
        title = " ".join(process.cmdline())
    except Exception:  # the process ended while we looked
        return "other"
    return "rollout actors" if "RolloutWorker" in title else "other"


def sample_tree(root_pid: int) -> MemorySample:
    """RSS of a process and all its descendants, summed, with a split by role."""
    import psutil

    sample = MemorySample(by_role={"driver": 0, "rollout actors": 0, "other": 0})
    try:
        root = psutil.Process(root_pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return sample
    for process in processes:
        try:
            rss = process.memory_info().rss
        except psutil.Error:
            continue
        sample.by_role[process_role(process, root_pid)] += rss
        sample.total += rss
        sample.processes += 1
    return sample


class PeakSampler:
    """Samples a process tree in a background thread; keeps the sample with the largest total."""

    def __init__(self, root_pid: int):
        self.root_pid = root_pid
        self.peak = MemorySample()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            sample = sample_tree(self.root_pid)
            self.samples += 1
            if sample.total > self.peak.total:
                self.peak = sample
            self._stop.wait(SAMPLE_EVERY_S)

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()


def measure_run(quick: bool, assets) -> tuple[MemorySample, float, int]:
    """(peak sample, wall seconds, samples taken) of a short `fanout train` in a child process."""
    run_specific = ["experiment.name=bench-memory", *assets.run_overrides(), *run_overrides(quick)]
    config = bench_config(quick, run_specific)  # validates the overrides before the child starts
    command = [
        sys.executable,
        "-m",
        "rl",
        "train",
        str(QUICKSTART_CONFIG),
        *bench_overrides(quick, run_specific),
    ]
    environment = child_environment(HF_HUB_OFFLINE="1", WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false")
    started = time.perf_counter()
    log_path = Path(config.experiment.output_dir) / "bench-memory.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        child = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
        with PeakSampler(child.pid) as sampler:
            return_code = child.wait()
    if return_code != 0:
        raise RuntimeError(f"memory bench: the training run failed (exit {return_code}); see {log_path}")
    return sampler.peak, time.perf_counter() - started, sampler.samples


def one_step_peak_bytes(config, model_path: str, groups: list) -> int:
    """Runs in a fresh process: build the trainer, one step; returns the process's peak RSS in bytes."""
    import torch

    from rollouts.model_loading import load_tokenizer
    from rl.grpo.trainer import GRPOTrainer

    torch.set_num_threads(1)
    trainer = GRPOTrainer(config, model_path=model_path, tokenizer=load_tokenizer(model_path))
    trainer.step(groups)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


MICRO_BATCH_SETTINGS = (1, 4)  # grpo.minibatches_per_step: the quickstart's, and a split batch


def measure_trainer_steps(quick: bool, assets) -> tuple[dict[int, int], int]:
    """({minibatches_per_step: peak bytes of one trainer step in a fresh process}, batch trajectories)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    config = bench_config(
        quick, ["experiment.name=bench-memory-step", *assets.run_overrides(), *run_overrides(quick)]
    )
    groups = generate_training_batch(config, assets)
    peaks = {}
    for minibatches in MICRO_BATCH_SETTINGS:
        config.grpo.minibatches_per_step = minibatches
        with (
            clean_spawn_environment(),
            ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool,
        ):
            peaks[minibatches] = pool.submit(
                one_step_peak_bytes, config, str(assets.model_path), groups
            ).result()
    return peaks, num_trajectories(groups)


def run(quick: bool) -> dict:
    assets = prepare_assets(quick)
    load_before = load_average()
    peak, wall_s, samples = measure_run(quick, assets)
    step_peaks, batch = measure_trainer_steps(quick, assets)
    rows = [("short run: total (driver + Ray processes)", f"{peak.total / GIB:.2f}", peak.processes)]
    rows += [(f"  of which {role}", f"{value / GIB:.2f}", "") for role, value in peak.by_role.items()]
    rows += [
        (f"one trainer step, {batch} trajectories in {count} micro-batch(es)", f"{value / GIB:.2f}", 1)
        for count, value in step_peaks.items()
    ]
    print_table(
        f"memory: peak RSS, {samples} samples over {wall_s:.0f} s, load {load_before}",
        ["what", "peak RSS (GiB)", "processes"],
        rows,
    )
    return {
        "peak_rss_gib": round(peak.total / GIB, 3),
        "peak_rss_by_role_gib": {role: round(value / GIB, 3) for role, value in peak.by_role.items()},
        "trainer_step_peak_rss_gib": round(step_peaks[MICRO_BATCH_SETTINGS[0]] / GIB, 3),
        "trainer_step_peak_rss_gib_by_minibatches": {
            str(count): round(value / GIB, 3) for count, value in step_peaks.items()
        },
        "processes_at_peak": peak.processes,
        "batch_trajectories": batch,
        "load_average": load_before,
    }
