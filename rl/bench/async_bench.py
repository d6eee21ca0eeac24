"""Benchmark: training throughput at async.max_staleness 0 (synchronous), 1, 2 and 4, side by side.

    fanout bench async            # 12 steps per setting, 4 groups x G=4, 100 ms tool latency, 1 then 2 actors
    fanout bench async --quick    # 2 steps per setting, micro model (test-suite setting)

Each setting is a real `fanout train` run (`rl.app.train.train`, in this process, one Ray session per block): the
quickstart config at benchmark sizes (rl/bench/common.py), starting from the cached SFT warm-start, one
Ray rollout actor (1 CPU, 1 torch thread), the DeepSpeed trainer in the driver with 1 torch thread, so
on 2 cores the trainer and the actor each have one. Tools answer after `tools.latency_s`, so generation
is not pure CPU. No eval, plots or periodic checkpoints.

From each run's metrics.jsonl, over the steady steps (every step but the first, which includes the
actors' start-up):
- samples/s = trajectories trained ÷ wall seconds of those steps; ratio = samples/s ÷ samples/s at
  staleness 0 (the `ratio` figure);
- trainer waiting for data = Σ async/trainer_wait_s ÷ Σ perf/step_s;
- rollout actor waiting for weights = Σ async/worker_idle_s ÷ Σ perf/step_s (time with no generate call
  in flight, i.e. held back by the staleness window until the next version is pushed);
- mean staleness of the trained groups and groups dropped as too stale.
The sweep runs with the quickstart's one actor (the `ratio` figure) and with two (`by_actors["2"]`),
both with continuous batching (the default: an actor's in-flight calls share engine batches, see
rollouts/batcher.py), then once more with one actor running one call at a time
(`rollout.continuous_batching=false`, `one_call_at_a_time`), the reference that shows what the
batching adds, and last with one actor at Ray's default worker priority (`RAY_worker_niceness=15`, in a Ray
session of its own; `ray_default_priority`), against the framework's local setting (0: actors at the
driver's priority, rollouts/manager.py init_ray). Every ratio is against staleness 0 in the same block. Overlapping generation with
training alone gives at most (generation + training) ÷ max(generation, training) per step; beyond it,
the staleness window lets an actor hold more calls in flight, so its engine batches grow and one call's
tool waits are filled by the others' generation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

import torch

from rl.bench.common import bench_config, load_average, prepare_assets, print_table, ratio

STALENESS_VALUES = (0, 1, 2, 4)


RAY_DEFAULT_WORKER_NICENESS = "15"  # Ray's own default: workers 15 nice levels below the driver


def blocks(quick: bool) -> dict[str, tuple[int, bool, str | None]]:
    """Measured blocks: name -> (rollout actors, continuous batching, RAY_worker_niceness of the actors; None:
    the framework's setting, init_ray's)."""
    if quick:
        return {"1": (1, True, None)}
    return {"1": (1, True, None), "2": (2, True, None), "one_call_at_a_time": (1, False, None),
            "ray_default_priority": (1, True, RAY_DEFAULT_WORKER_NICENESS)}


@contextlib.contextmanager
def ray_worker_niceness(niceness: str | None):
    """Run the block in a Ray started with RAY_worker_niceness=niceness (None: as it is), then stop that Ray.

    Ray reads the setting when it starts its workers, so the block gets a Ray session of its own.
    """
    if niceness is None:
        yield
        return
    import ray

    from rollouts.manager import RAY_WORKER_NICENESS

    ray.shutdown()
    before = os.environ.get(RAY_WORKER_NICENESS)
    os.environ[RAY_WORKER_NICENESS] = niceness
    try:
        yield
    finally:
        ray.shutdown()
        if before is None:
            os.environ.pop(RAY_WORKER_NICENESS, None)
        else:
            os.environ[RAY_WORKER_NICENESS] = before


def async_overrides(quick: bool, num_workers: int = 1, continuous_batching: bool = True) -> list[str]:
    steps = 2 if quick else 12
    return [
        f"grpo.total_steps={steps}",
        f"rollout.num_workers={num_workers}",
        f"rollout.continuous_batching={str(continuous_batching).lower()}",
        "rollout.worker_num_cpus=1",
        "rollout.torch_threads_per_worker=1",
        "async.max_buffered_groups=64",
    ]


def steady_figures(metrics_path: Path) -> dict[str, float]:
    """Throughput and waiting fractions over every logged step but the first."""
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    steps = [row for row in rows if "perf/step_s" in row]
    steady = steps[1:] if len(steps) > 1 else steps
    step_s = sum(row["perf/step_s"] for row in steady)
    samples = sum(row["perf/samples_per_s"] * row["perf/step_s"] for row in steady)
    return {
        "steps": len(steady),
        "samples_per_s": samples / step_s,
        "step_s": step_s / len(steady),
        "trainer_wait_fraction": sum(row["async/trainer_wait_s"] for row in steady) / step_s,
        "worker_idle_fraction": sum(row.get("async/worker_idle_s", 0.0) for row in steady) / step_s,
        "train_step_s": sum(row.get("perf/train_step_s", 0.0) for row in steady) / len(steady),
        "staleness_mean": sum(row.get("async/staleness_mean", 0.0) for row in steady) / len(steady),
        "dropped_groups": max((row.get("async/dropped_groups", 0.0) for row in steps), default=0.0),
    }


def run_setting(quick: bool, max_staleness: int, num_workers: int, continuous_batching: bool,
                asset_overrides: list[str], worker_niceness: str | None = None) -> dict[str, float]:
    from rl.app.train import train

    serial = "" if continuous_batching else "-serial"
    nice = "" if worker_niceness is None else f"-nice{worker_niceness}"
    config = bench_config(
        quick,
        [
            f"experiment.name=bench-async-a{num_workers}{serial}{nice}-s{max_staleness}",
            *asset_overrides,
            *async_overrides(quick, num_workers, continuous_batching),
            f"async.max_staleness={max_staleness}",
        ],
    )
    run_dir = train(config)
    return steady_figures(run_dir / "metrics.jsonl")


def run(quick: bool) -> dict:
    torch.set_num_threads(1)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    assets = prepare_assets(quick)
    load_before = load_average()
    measured = {}
    for name, (actors, continuous, niceness) in blocks(quick).items():
        with ray_worker_niceness(niceness):
            measured[name] = {
                staleness: run_setting(quick, staleness, actors, continuous, assets.run_overrides(), niceness)
                for staleness in STALENESS_VALUES
            }
    config = bench_config(quick, async_overrides(quick))
    for name, results in measured.items():
        actors, continuous, niceness = blocks(quick)[name]
        print_block(config, actors, continuous, results, load_before, niceness)
    print(
        "anchors from the literature (their hardware and models): AReaL 2.77x, AsyncFlow 1.59x "
        "over synchronous"
    )
    figures = {name: block_figures(results) for name, results in measured.items()}
    return {
        **figures["1"],  # the quickstart's one actor: the contract's "ratio"
        "by_actors": {name: block for name, block in figures.items() if name.isdigit()},
        **{name: figures[name] for name in ("one_call_at_a_time", "ray_default_priority") if name in figures},
        "inflight_calls_per_actor": config.rollout.max_inflight_calls_per_worker,
        "load_average": load_before,
    }


def print_block(config, actors: int, continuous: bool, results: dict[int, dict[str, float]],
                load_before: float, worker_niceness: str | None = None) -> None:
    base = results[0]["samples_per_s"]
    rows = [
        (
            staleness,
            figures["steps"],
            f"{figures['step_s']:.2f}",
            f"{figures['train_step_s']:.2f}",
            f"{figures['samples_per_s']:.2f}",
            f"{figures['samples_per_s'] / base:.2f}x",
            f"{figures['trainer_wait_fraction']:.0%}",
            f"{figures['worker_idle_fraction']:.0%}",
            f"{figures['staleness_mean']:.2f}",
            int(figures["dropped_groups"]),
        )
        for staleness, figures in results.items()
    ]
    print_table(
        f"async: {config.rollout.questions_per_step} groups x G={config.rollout.group_size} per step, "
        f"{actors} rollout actor(s) + trainer on 2 cores, "
        f"{'continuous batching' if continuous else 'one call at a time'} "
        f"(up to {config.rollout.max_inflight_calls_per_worker} calls of {config.rollout.questions_per_worker_call} "
        f"questions in flight per actor), tool latency {config.tools.latency_s * 1000:.0f} ms, "
        f"{'actors at Ray worker niceness ' + worker_niceness + ', ' if worker_niceness else ''}"
        f"load {load_before}",
        ["max_staleness", "steady steps", "step s", "train s", "samples/s", "vs sync", "trainer waits",
         "actor idle", "mean staleness", "dropped"],
        rows,
    )


def block_figures(results: dict[int, dict[str, float]]) -> dict:
    base = results[0]["samples_per_s"]
    return {
        "ratio": {str(staleness): ratio(results[staleness]["samples_per_s"], base) for staleness in STALENESS_VALUES[1:]},
        "samples_per_s": {str(staleness): round(figures["samples_per_s"], 3) for staleness, figures in results.items()},
        "trainer_wait_fraction": {str(s): round(f["trainer_wait_fraction"], 3) for s, f in results.items()},
        "worker_idle_fraction": {str(s): round(f["worker_idle_fraction"], 3) for s, f in results.items()},
        "staleness_mean": {str(s): round(f["staleness_mean"], 3) for s, f in results.items()},
    }
