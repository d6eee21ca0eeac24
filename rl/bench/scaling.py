"""Benchmark: rollout throughput with 1 vs 2 actors, and an Amdahl-style projection to N GPU actors.

    fanout bench scaling            # warm-started tiny model, pure CPU generation (no tool latency)
    fanout bench scaling --quick    # micro model (test-suite setting)

Measured here (2 cores, trainer idle while the actors are timed):
- rollout trajectories/s with 1 and 2 Ray actors (`rl.bench.rollouts.measure_actor_throughput`, one
  CPU and one torch thread per actor, no tool latency: compute-bound, the hard case for scaling);
- the serial part of a step: `GRPOTrainer.step` on one batch of the same shape, plus the weight sync
  (export + push until the actors hold the new version, `rl.bench.sync.time_push_to_actors`).

Projection. Per step, with batch B trajectories: generation with one actor takes T_gen = B ÷ (1-actor
trajectories/s); the serial part is T_serial = T_train + T_sync. With N actors each at the measured
2-actor efficiency e = actors_ratio ÷ 2 (e = 1 for N = 1):
    synchronous (max_staleness 0):   step(N) = T_gen ÷ (N e) + T_serial
    asynchronous (max_staleness>=1): step(N) = max(T_gen ÷ (N e), T_serial)    (perfect overlap)
speedup(N) = step(1, synchronous) ÷ step(N); the ceiling is (T_gen + T_serial) ÷ T_serial = 1 ÷ f, with
f the serial fraction. Assumptions, stated because they carry the projection: every GPU actor relates to the
GPU trainer as one CPU actor relates to the CPU trainer here (same T_gen ÷ T_train), the batch and so
T_train stay fixed as N grows (no trainer data parallelism), the weight sync costs the same for any N
(the object store broadcasts one copy; an NCCL broadcast grows ~log N), e does not degrade past 2
actors, and the trainer and the actors do not share devices (here they share the 2 cores, so the
measured T_train is a lower bound on contention-free time).
"""

from __future__ import annotations

import logging

import torch

from rl.bench.common import (
    bench_config,
    generate_training_batch,
    load_average,
    num_trajectories,
    prepare_assets,
    print_table,
    ratio,
)
from rl.bench.rollouts import ACTOR_HEADER, actor_rows, measure_actor_throughput, throughput_overrides
from rl.bench.sync import time_push_to_actors, time_steps

PROJECTED_ACTORS = (1, 2, 4, 8, 16, 32, 64)


def project(generate_s: float, serial_s: float, efficiency: float) -> dict:
    """Synchronous and asynchronous speedups for PROJECTED_ACTORS actors (see the module docstring)."""
    base_step_s = generate_s + serial_s

    def per_actor(count: int) -> float:
        return generate_s / (count * (efficiency if count > 1 else 1.0))

    return {
        "serial_fraction": round(serial_s / base_step_s, 4),
        "ceiling": round(base_step_s / serial_s, 2),
        "efficiency_per_actor": round(efficiency, 3),
        "sync": {str(n): round(base_step_s / (per_actor(n) + serial_s), 2) for n in PROJECTED_ACTORS},
        "async": {str(n): round(base_step_s / max(per_actor(n), serial_s), 2) for n in PROJECTED_ACTORS},
    }


def measure_serial_part(quick: bool, assets, repeats: int) -> tuple[float, float, int]:
    """(train step s, weight sync s, batch trajectories) on a batch of the benchmark's step shape."""
    import ray

    from rollouts.model_loading import load_tokenizer
    from rl.grpo.trainer import GRPOTrainer
    from rollouts.manager import init_ray
    from rl.app.rollout_setup import build_rollout_manager

    config = bench_config(
        quick,
        [
            "experiment.name=bench-scaling-trainer",
            "rollout.num_workers=2",
            "rollout.worker_num_cpus=0.5",
            "tools.latency_s=0.0",
            *assets.run_overrides(),
        ],
    )
    groups = generate_training_batch(config, assets)
    trainer = GRPOTrainer(config, model_path=assets.model_path, tokenizer=load_tokenizer(assets.model_path))
    train_s = time_steps(trainer, groups, repeats)
    init_ray()
    with build_rollout_manager(
        config, assets.train_questions, model_path=str(assets.model_path), corpus_path=assets.corpus_path
    ) as manager:
        ray.get([handle.ping.remote() for handle in manager.worker_handles()])
        _, _, _, sync_s = time_push_to_actors(trainer, manager, "full", repeats)
    return train_s, sync_s, num_trajectories(groups)


def run(quick: bool) -> dict:
    torch.set_num_threads(1)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    assets = prepare_assets(quick)
    measured_batches, min_seconds = (1, 0.0) if quick else (8, 30.0)
    load_before = load_average()
    results = []
    for num_workers in (1, 2):
        config = bench_config(
            quick,
            [f"experiment.name=bench-scaling-{num_workers}", *throughput_overrides(), "tools.latency_s=0.0"],
        )
        results.append(measure_actor_throughput(assets, config, num_workers, measured_batches, min_seconds))
    one, two = results
    actors_ratio = ratio(two.trajectories_per_s, one.trajectories_per_s)
    print_table(
        f"scaling: rollout throughput, no tool latency (compute-bound), trainer idle, load {load_before}",
        ACTOR_HEADER,
        actor_rows(results),
    )
    train_s, sync_s, batch = measure_serial_part(quick, assets, repeats=2 if quick else 4)
    generate_s = batch / one.trajectories_per_s
    projection = project(generate_s, train_s + sync_s, efficiency=min(actors_ratio / 2, 1.0))
    print(
        f"per step of {batch} trajectories: generation with 1 actor {generate_s:.2f} s, "
        f"trainer step {train_s:.2f} s, "
        f"weight sync {sync_s * 1000:.1f} ms -> serial fraction {projection['serial_fraction']:.1%}, "
        f"ceiling {projection['ceiling']:.1f}x\n"
    )
    print_table(
        "projection (speedup over 1 actor, synchronous; assumptions in the module docstring)",
        ["actors", "synchronous", "asynchronous"],
        [
            (n, f"{projection['sync'][str(n)]:.2f}x", f"{projection['async'][str(n)]:.2f}x")
            for n in PROJECTED_ACTORS
        ],
    )
    projection.update(
        {
            "generate_s_1_actor": round(generate_s, 4),
            "train_step_s": round(train_s, 4),
            "weight_sync_s": round(sync_s, 5),
            "batch_trajectories": batch,
        }
    )
    return {
        "actors_ratio": actors_ratio,
        "trajectories_per_s": {"1": round(one.trajectories_per_s, 3), "2": round(two.trajectories_per_s, 3)},
        "projection": projection,
        "load_average": load_before,
    }
