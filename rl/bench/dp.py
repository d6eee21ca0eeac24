"""Benchmark: the GRPO trainer on 1 and 2 data-parallel ranks (torchrun, gloo on CPU), and ZeRO-3's weight sync.

    fanout bench dp            # the reader's batch (16 groups x 8), ZeRO-2 and ZeRO-3, median of 5 steps
    fanout bench dp --quick    # micro model and batch, median of 2 steps (test-suite setting)

One real batch is generated once in this process (warm-started tiny model, agent loop, real search,
rewards) and written to the cache folder. Then, for 1 and for 2 ranks, `torchrun --standalone
--nproc_per_node=N -m rl.bench.dp worker SPEC` runs `worker` below on every rank, one torch thread per
rank (one device per rank, as on GPUs). For ZeRO-2 and then ZeRO-3 each rank builds `GRPOTrainer` on the
model, and the suite times, median over the repeats after one warm-up:
- step: `trainer.step(batch)` on the same global batch (each rank trains its share, rl/grpo/trainer.py),
  from a barrier to the slowest rank's end;
- ZeRO-3 only, sync: `trainer.export_weights(main_process_only=True)` (the full parameters gathered from
  every rank's partition; collective) plus rank 0's `RolloutManager.push_weights` to one idle rollout
  actor (put once into the Ray object store; what blocks the trainer), i.e. the gather-and-push time;
  the actor then loads the weights, outside the timing.
It also reports the bytes of parameters and optimizer state each rank holds (rl.grpo.deepspeed_setup.
held_bytes), and (full setting) the ZeRO-2 step of 1 rank with 2 torch threads: the same 2 cores as 2
ranks, used by intra-op threads instead of data parallelism.

step_s = {"1": ZeRO-2 step on 1 rank, "2": the same on 2 ranks}; sync_s_zero3 = the ZeRO-3 gather-and-push
on 2 ranks. On 2 CPU cores the ranks share the machine with the rollout actor's idle process and gloo's
collectives go through the loopback, so little speed-up is expected (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rl.bench.common import (
    bench_config,
    cache_dir,
    child_environment,
    generate_training_batch,
    load_average,
    num_trajectories,
    prepare_assets,
    print_table,
    ratio,
    setting_name,
)

ROOT = Path(__file__).resolve().parents[2]
RANKS = (1, 2)
STAGES = (2, 3)
HEADLINE_STAGE = 2
MIB = 2**20


def dp_overrides(quick: bool) -> list[str]:
    """The reader's batch shape (16 questions x 8) in the full setting; one idle rollout actor for the push
    (the weight sync)."""
    shape = [] if quick else ["rollout.questions_per_step=16", "rollout.group_size=8", "rollout.max_turns=4"]
    return [*shape, "rollout.num_workers=1", "rollout.worker_num_cpus=0.5", "tools.latency_s=0.0",
            "experiment.name=bench-dp"]


# ----------------------------------------------------------------------------------------------
# One rank (under torchrun)
# ----------------------------------------------------------------------------------------------


def _median_after_warmup(values: list[float]) -> float:
    return statistics.median(values[1:]) if len(values) > 1 else values[0]


def time_steps(trainer, groups: list, repeats: int) -> float:
    """Median seconds of a step on the same global batch, from a barrier to the slowest rank's end."""
    from rl.grpo.distributed import barrier, gather_to_all

    seconds = []
    for _ in range(repeats + 1):
        barrier()
        started = time.perf_counter()
        trainer.step(groups)
        seconds.append(max(gather_to_all(time.perf_counter() - started)))
    return _median_after_warmup(seconds)


def time_sync(trainer, manager, repeats: int) -> dict[str, float]:
    """Medians of the gather (slowest rank) and of rank 0's push into the object store; each push is a new version."""
    import ray

    from rl.grpo.distributed import barrier, gather_to_all

    gathers, pushes = [], []
    for _ in range(repeats + 1):
        barrier()
        started = time.perf_counter()
        weights = trainer.export_weights(main_process_only=True)
        gathered = time.perf_counter()
        if manager is not None:
            version = manager.latest_version + 1
            manager.push_weights(weights, version)
        pushed = time.perf_counter()
        if manager is not None:  # the actor loads, untimed, before the next round
            ray.get([handle.wait_for_version.remote(version, 60) for handle in manager.worker_handles()])
        gathers.append(max(gather_to_all(gathered - started)))
        pushes.append(pushed - gathered)
    gather_s, push_s = _median_after_warmup(gathers), _median_after_warmup(pushes)
    return {"gather_s": gather_s, "push_s": push_s, "sync_s": gather_s + push_s}


def _rollout_manager(config, assets):
    """Rank 0's manager with one idle actor, started before any timing."""
    import ray

    from rl.app.rollout_setup import build_rollout_manager
    from rl.grpo.distributed import without_distributed_environment
    from rollouts.manager import init_ray

    with without_distributed_environment():
        init_ray()
    manager = build_rollout_manager(config, assets.train_questions, model_path=str(assets.model_path),
                                    corpus_path=assets.corpus_path)
    ray.get([handle.ping.remote() for handle in manager.worker_handles()])
    return manager


def worker(spec: dict) -> None:
    """Every rank: a trainer per ZeRO stage, its step time, and under ZeRO-3 the gather-and-push time."""
    import torch

    from rl.grpo.deepspeed_setup import init_distributed
    from rl.grpo.distributed import gather_to_all, is_main_process, world_size
    from rl.grpo.trainer import GRPOTrainer
    from rollouts.model_loading import load_tokenizer

    torch.set_num_threads(spec.get("torch_threads", 1))
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    quick = spec["quick"]
    config = bench_config(quick, spec["overrides"])
    init_distributed(config.experiment.device)
    groups = pickle.loads(Path(spec["batch_path"]).read_bytes())
    assets = prepare_assets(quick) if is_main_process() else None  # cached: only read back
    manager = _rollout_manager(config, assets) if is_main_process() else None
    results: dict = {"world_size": world_size(), "stages": {}}
    try:
        for stage in spec["stages"]:
            config.deepspeed.zero_stage = stage
            trainer = GRPOTrainer(config, model_path=spec["model_path"], tokenizer=load_tokenizer(spec["model_path"]))
            figures = {"step_s": time_steps(trainer, groups, spec["repeats"]),
                       "held_bytes_by_rank": gather_to_all(trainer.held_bytes())}
            if stage == 3:
                figures.update(time_sync(trainer, manager, spec["repeats"]))
            results["stages"][str(stage)] = figures
            del trainer
    finally:
        if manager is not None:
            manager.shutdown()
    if is_main_process():
        Path(spec["out_path"]).write_text(json.dumps(results))


# ----------------------------------------------------------------------------------------------
# The suite (one process, launching torchrun)
# ----------------------------------------------------------------------------------------------


def launch(num_ranks: int, spec: dict, torch_threads: int = 1) -> dict:
    """`torchrun --standalone --nproc_per_node=num_ranks -m rl.bench.dp worker SPEC`; rank 0's results."""
    out_path = Path(spec["batch_path"]).with_name(f"dp-{num_ranks}-ranks-{torch_threads}-threads.json")
    out_path.unlink(missing_ok=True)
    spec = {**spec, "out_path": str(out_path), "torch_threads": torch_threads}
    environment = child_environment(OMP_NUM_THREADS=str(torch_threads))
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environment.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_ranks}",
               "-m", "rl.bench.dp", "worker", json.dumps(spec)]
    result = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0 or not out_path.is_file():
        raise RuntimeError(f"dp bench: torchrun with {num_ranks} rank(s) failed ({result.returncode}):\n"
                           f"{result.stderr[-4000:]}")
    return json.loads(out_path.read_text())


def run(quick: bool) -> dict:
    import torch

    torch.set_num_threads(1)
    repeats = 2 if quick else 5
    assets = prepare_assets(quick)
    load_before = load_average()
    overrides = [*dp_overrides(quick), *assets.run_overrides()]
    groups = generate_training_batch(bench_config(quick, overrides), assets)
    batch_path = cache_dir() / setting_name(quick) / "dp_batch.pkl"
    batch_path.write_bytes(pickle.dumps(groups))
    spec = {"quick": quick, "overrides": overrides, "batch_path": str(batch_path),
            "model_path": str(assets.model_path), "stages": list(STAGES), "repeats": repeats}
    by_ranks = {str(num_ranks): launch(num_ranks, spec) for num_ranks in RANKS}
    two_threads = None if quick else launch(1, {**spec, "stages": [HEADLINE_STAGE]}, torch_threads=2)
    rows = []
    for stage in STAGES:
        one_rank = by_ranks["1"]["stages"][str(stage)]
        for num_ranks, results in by_ranks.items():
            figures = results["stages"][str(stage)]
            held = figures["held_bytes_by_rank"][0]
            rows.append((f"ZeRO-{stage}", num_ranks, f"{figures['step_s'] * 1000:.0f}",
                         f"{ratio(one_rank['step_s'], figures['step_s']):.2f}x",
                         f"{held['parameter_bytes'] / MIB:.2f}", f"{held['optimizer_bytes'] / MIB:.2f}",
                         f"{figures['gather_s'] * 1000:.1f}" if "gather_s" in figures else "",
                         f"{figures['push_s'] * 1000:.1f}" if "push_s" in figures else ""))
    if two_threads is not None:
        figures = two_threads["stages"][str(HEADLINE_STAGE)]
        held = figures["held_bytes_by_rank"][0]
        rows.append((f"ZeRO-{HEADLINE_STAGE}", "1 (2 threads)", f"{figures['step_s'] * 1000:.0f}",
                     f"{ratio(by_ranks['1']['stages'][str(HEADLINE_STAGE)]['step_s'], figures['step_s']):.2f}x",
                     f"{held['parameter_bytes'] / MIB:.2f}", f"{held['optimizer_bytes'] / MIB:.2f}", "", ""))
    print_table(
        f"dp: batch of {num_trajectories(groups)} trajectories, 1 torch thread per rank, median of {repeats} "
        f"steps, load {load_before}",
        ["stage", "ranks", "step ms", "vs 1 rank", "params MiB/rank", "optimizer MiB/rank", "gather ms", "push ms"],
        rows,
    )
    step_s = {ranks: round(results["stages"][str(HEADLINE_STAGE)]["step_s"], 4) for ranks, results in by_ranks.items()}
    return {
        "step_s": step_s,
        "sync_s_zero3": round(by_ranks["2"]["stages"]["3"]["sync_s"], 5),
        "speedup": ratio(step_s["1"], step_s["2"]),
        "step_s_1_rank_2_threads": None if two_threads is None
        else round(two_threads["stages"][str(HEADLINE_STAGE)]["step_s"], 4),
        "zero_stage": HEADLINE_STAGE,
        "step_s_zero3": {ranks: round(results["stages"]["3"]["step_s"], 4) for ranks, results in by_ranks.items()},
        "sync_s_zero3_by_ranks": {ranks: {key: round(results["stages"]["3"][key], 5)
                                          for key in ("gather_s", "push_s", "sync_s")}
                                  for ranks, results in by_ranks.items()},
        "held_mib_per_rank": {f"zero{stage}": {ranks: {kind.removesuffix("_bytes"): round(value / MIB, 3)
                                                       for kind, value in
                                                       results["stages"][str(stage)]["held_bytes_by_rank"][0].items()}
                                               for ranks, results in by_ranks.items()}
                              for stage in STAGES},
        "batch_trajectories": num_trajectories(groups),
        "load_average": load_before,
    }


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "worker":
        sys.exit("usage: torchrun --nproc_per_node=N -m rl.bench.dp worker SPEC_JSON (fanout bench dp starts it)")
    worker(json.loads(sys.argv[2]))
