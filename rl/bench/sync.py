"""Benchmark: weight sync (trainer → rollout actors) as a fraction of the training step, full vs LoRA.

    fanout bench sync            # the reader's batch (16 groups x 8), 2 idle rollout actors, 5 repeats
    fanout bench sync --quick    # micro model and batch, 1 actor, 2 repeats (test-suite setting)

A real batch is generated once in this process (warm-started tiny model, agent loop, real search,
rewards). For each weight kind the suite times, median of the repeats:
- step: `GRPOTrainer.step` on that batch (DeepSpeed, ZeRO stage of the quickstart), the denominator;
- export: `trainer.export_weights(kind)` (CPU copies; LoRA "full" merges the adapters in);
- publish: `RolloutManager.push_weights` (into the Ray object store once; what blocks the trainer);
- delivered: export until every actor has loaded the new version (actors idle, so no queueing
  behind generate calls; the actor's `version()` answers only after its update_weights ran).
Kinds: "full" (all weights, the default), "lora merged" (model.lora.enabled=true, export_weights("full"):
what an engine without LoRA support loads, the HF engine included) and "lora adapter" (export_weights(
"adapter"): what a LoRA-aware engine such as vLLM would load; the HF engine cannot, so "delivered" is the
time until a Ray task in another process holds the adapter tensors).

sync_fraction_of_step = delivered time of the full weights ÷ step time (the target is <= 5%); the
table also gives the trainer-blocking fraction (export + publish ÷ step), which is what the loop pays,
since actors load while the trainer already computes the next step.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass

import torch

from rl.bench.common import (
    BenchAssets,
    bench_config,
    generate_training_batch,
    load_average,
    num_trajectories,
    prepare_assets,
    print_table,
    ratio,
    timer,
)


@dataclass
class SyncTimes:
    kind: str
    num_bytes: int
    step_s: float
    export_s: float
    publish_s: float
    delivered_s: float

    @property
    def blocking_fraction(self) -> float:
        return (self.export_s + self.publish_s) / self.step_s

    @property
    def delivered_fraction(self) -> float:
        return self.delivered_s / self.step_s


def sync_overrides(quick: bool) -> list[str]:
    """The reader's batch shape (16 questions x 8) in the full setting; the actors stay idle."""
    shape = [] if quick else ["rollout.questions_per_step=16", "rollout.group_size=8", "rollout.max_turns=4"]
    return [
        *shape,
        "rollout.worker_num_cpus=0.5",
        f"rollout.num_workers={1 if quick else 2}",
        "tools.latency_s=0.0",
    ]


def time_steps(trainer, groups: list, repeats: int) -> float:
    """Median seconds of `trainer.step` on the same batch of groups (after one warm-up step)."""
    trainer.step(groups)
    seconds = []
    for _ in range(repeats):
        with timer() as elapsed:
            trainer.step(groups)
        seconds.append(elapsed["s"])
    return statistics.median(seconds)


def time_push_to_actors(trainer, manager, kind: str, repeats: int) -> tuple[int, float, float, float]:
    """(bytes, export s, publish s, delivered s), medians; each push is a new version every actor loads."""
    import ray

    from rollouts.weight_sync import state_dict_num_bytes

    exports, publishes, delivered, num_bytes = [], [], [], 0
    for _ in range(repeats + 1):  # the first push is a warm-up
        started = time.perf_counter()
        weights = trainer.export_weights(kind)
        exported = time.perf_counter()
        version = manager.latest_version + 1
        manager.push_weights(weights, version)
        published = time.perf_counter()
        loaded = ray.get([handle.wait_for_version.remote(version, 60) for handle in manager.worker_handles()])
        finished = time.perf_counter()
        if loaded != [version] * len(loaded):
            raise RuntimeError(f"sync bench: actors report versions {loaded} after pushing version {version}")
        exports.append(exported - started)
        publishes.append(published - exported)
        delivered.append(finished - started)
        num_bytes = state_dict_num_bytes(weights)
    return num_bytes, *(statistics.median(values[1:]) for values in (exports, publishes, delivered))


def time_adapter_transfer(trainer, repeats: int) -> tuple[int, float, float, float]:
    """(bytes, export s, publish s, delivered s) of LoRA adapters, delivered to a Ray task elsewhere."""
    import ray

    from rollouts.weight_sync import publish_weights, state_dict_num_bytes

    @ray.remote(num_cpus=0)
    def receive(weights) -> int:
        return len(getattr(weights, "arrays", weights))

    exports, publishes, delivered, num_bytes = [], [], [], 0
    for version in range(repeats + 1):
        started = time.perf_counter()
        adapter = trainer.export_weights("adapter")
        exported = time.perf_counter()
        published_weights = publish_weights(adapter, version)
        published = time.perf_counter()
        ray.get(receive.remote(published_weights.ref))
        finished = time.perf_counter()
        exports.append(exported - started)
        publishes.append(published - exported)
        delivered.append(finished - started)
        num_bytes = state_dict_num_bytes(adapter)
    return num_bytes, *(statistics.median(values[1:]) for values in (exports, publishes, delivered))


def measure_kinds(
    quick: bool, assets: BenchAssets, lora: bool, groups: list, repeats: int
) -> list[SyncTimes]:
    """Step time and sync times of one trainer (full weights, or LoRA merged + adapter)."""
    import ray

    from rollouts.model_loading import load_tokenizer
    from rl.grpo.trainer import GRPOTrainer
    from rollouts.manager import init_ray
    from rl.app.rollout_setup import build_rollout_manager

    name = "lora" if lora else "full"
    config = bench_config(
        quick,
        [
            f"experiment.name=bench-sync-{name}",
            *sync_overrides(quick),
            *assets.run_overrides(),
            f"model.lora.enabled={str(lora).lower()}",
        ],
    )
    trainer = GRPOTrainer(config, model_path=assets.model_path, tokenizer=load_tokenizer(assets.model_path))
    step_s = time_steps(trainer, groups, repeats)
    init_ray()
    results = []
    with build_rollout_manager(
        config, assets.train_questions, model_path=str(assets.model_path), corpus_path=assets.corpus_path
    ) as manager:
        ray.get(
            [handle.ping.remote() for handle in manager.worker_handles()]
        )  # actors built before any timing
        full = time_push_to_actors(trainer, manager, "full", repeats)
        results.append(SyncTimes("lora merged" if lora else "full", full[0], step_s, *full[1:]))
    if lora:
        adapter = time_adapter_transfer(trainer, repeats)
        results.append(SyncTimes("lora adapter", adapter[0], step_s, *adapter[1:]))
    return results


def run(quick: bool) -> dict:
    torch.set_num_threads(1)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    repeats = 2 if quick else 5
    assets = prepare_assets(quick)
    load_before = load_average()
    batch_config = bench_config(quick, [*sync_overrides(quick), *assets.run_overrides()])
    groups = generate_training_batch(batch_config, assets)
    results = measure_kinds(quick, assets, False, groups, repeats)
    results += measure_kinds(quick, assets, True, groups, repeats)
    rows = [
        (
            result.kind,
            f"{result.num_bytes / 2**20:.2f}",
            f"{result.step_s * 1000:.0f}",
            f"{result.export_s * 1000:.1f}",
            f"{result.publish_s * 1000:.1f}",
            f"{result.delivered_s * 1000:.1f}",
            f"{result.blocking_fraction:.2%}",
            f"{result.delivered_fraction:.2%}",
        )
        for result in results
    ]
    num_actors = batch_config.rollout.num_workers
    print_table(
        f"sync: batch of {num_trajectories(groups)} trajectories, {num_actors} idle rollout actor(s), "
        f"median of {repeats}, load {load_before}",
        [
            "weights",
            "MiB",
            "step ms",
            "export ms",
            "publish ms",
            "delivered ms",
            "blocking / step",
            "delivered / step",
        ],
        rows,
    )
    by_kind = {result.kind.replace(" ", "_"): result for result in results}
    return {
        "sync_fraction_of_step": round(by_kind["full"].delivered_fraction, 4),
        "blocking_fraction_of_step": round(by_kind["full"].blocking_fraction, 4),
        "lora_merged_fraction_of_step": round(by_kind["lora_merged"].delivered_fraction, 4),
        "lora_adapter_fraction_of_step": round(by_kind["lora_adapter"].delivered_fraction, 4),
        "adapter_vs_full_bytes": ratio(by_kind["lora_adapter"].num_bytes, by_kind["lora_merged"].num_bytes),
        "step_s": round(by_kind["full"].step_s, 4),
        "delivered_s": {kind: round(result.delivered_s, 5) for kind, result in by_kind.items()},
        "weight_mib": {kind: round(result.num_bytes / 2**20, 3) for kind, result in by_kind.items()},
        "batch_trajectories": num_trajectories(groups),
        "actors": num_actors,
        "load_average": load_before,
    }
