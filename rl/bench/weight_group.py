"""Benchmark: the vLLM engine's weight path, a gloo weight group, against the torch.save bytes it replaced.

    fanout bench weight_group            # 512 MB of bf16 weights, 1 and 2 receiving processes, 3 repeats
    fanout bench weight_group --quick    # 16 MB, 2 repeats (test-suite setting)

A rollout actor hands new weights to its vLLM workers (one per tensor-parallel rank) over a private
gloo group, in flat per-dtype buckets (rollouts/weight_group.py). This suite times that transfer with
the same code between this process (rank 0) and 1 or 2 receiving processes (stand-ins for the
workers), median of the repeats, until every receiver holds all tensors. Side by side it times what the
engine did before: `torch.save` of the state dict to bytes and `torch.load` back (what vLLM's RPC then
carried, once per worker, plus pickling).

Figures: GB/s of the group per receiver count, and `speedup_vs_torch_save` = torch.save+load time ÷
group time with 2 receivers (2 tensor-parallel ranks). On GPUs the workers then copy to their devices;
that copy is not in these figures.
"""

from __future__ import annotations

import io
import statistics
import time

import torch
import torch.multiprocessing as multiprocessing

from rl.bench.common import load_average, print_table
from rollouts.weight_group import WeightGroup, free_port, plan_buckets, tensor_specs, wait_all

BUCKET_MB = 256  # rollout.weight_bucket_mb's default


def synthetic_state_dict(total_mb: int) -> dict[str, torch.Tensor]:
    """bf16 matrices of 4 MB each, like the layers of a model (bf16 is what a 7B run syncs)."""
    rows, columns = 1024, 2048  # 2 Mi elements x 2 bytes = 4 MB
    generator = torch.Generator().manual_seed(0)
    return {f"model.layers.{index}.weight": torch.randn(rows, columns, generator=generator).to(torch.bfloat16)
            for index in range(max(1, total_mb // 4))}


def receive(rank: int, port: int, world_size: int, total_mb: int, repeats: int) -> None:
    """A receiving process: joins the group and takes part in every repeat's broadcasts."""
    torch.set_num_threads(1)
    state_dict = synthetic_state_dict(total_mb)  # only its names, dtypes and shapes are used
    specs = tensor_specs(state_dict)
    del state_dict
    buckets = plan_buckets(specs, BUCKET_MB << 20)
    group = WeightGroup.create("127.0.0.1", port, rank, world_size, timeout_s=600)
    for _ in range(repeats + 1):  # one warm-up
        received = group.receive_buckets(specs, buckets)
        assert len(received) == len(specs)
        group.store.set(f"done-{rank}", "1")


def time_group(state_dict: dict[str, torch.Tensor], receivers: int, repeats: int, total_mb: int) -> float:
    """Median seconds until `receivers` processes hold every tensor."""
    specs = tensor_specs(state_dict)
    buckets = plan_buckets(specs, BUCKET_MB << 20)
    port, world_size = free_port(), 1 + receivers
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=receive, args=(rank, port, world_size, total_mb, repeats), daemon=True)
                 for rank in range(1, world_size)]
    for process in processes:
        process.start()
    group = WeightGroup.create("127.0.0.1", port, 0, world_size, timeout_s=600)
    times = []
    for repeat in range(repeats + 1):
        start = time.perf_counter()
        wait_all(group.send_buckets(state_dict, specs, buckets))
        for rank in range(1, world_size):
            group.store.wait([f"done-{rank}"])
            group.store.delete_key(f"done-{rank}")
        if repeat:
            times.append(time.perf_counter() - start)
    for process in processes:
        process.join(timeout=60)
    return statistics.median(times)


def time_torch_save(state_dict: dict[str, torch.Tensor], repeats: int) -> float:
    """Median seconds of torch.save to bytes and torch.load back (the engine's previous path, per worker)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        buffer = io.BytesIO()
        torch.save(state_dict, buffer)
        torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(quick: bool) -> dict:
    total_mb, repeats = (16, 2) if quick else (512, 3)
    state_dict = synthetic_state_dict(total_mb)
    num_bytes = sum(tensor.numel() * tensor.element_size() for tensor in state_dict.values())
    title = (f"weight group: {num_bytes / 2**20:.0f} MB of bf16 in {BUCKET_MB} MB buckets, median of {repeats}; "
             f"load average {load_average():.1f}")
    group_s = {receivers: time_group(state_dict, receivers, repeats, total_mb) for receivers in (1, 2)}
    save_s = time_torch_save(state_dict, repeats)
    rows = [[f"group, {receivers} receiver(s)", f"{seconds:.3f}", f"{num_bytes / seconds / 1e9:.2f}"]
            for receivers, seconds in group_s.items()]
    rows.append(["torch.save + torch.load (per worker)", f"{save_s:.3f}", f"{num_bytes / save_s / 1e9:.2f}"])
    print_table(title, ["path", "seconds", "GB/s"], rows)
    return {"gb_per_s": {str(receivers): num_bytes / seconds / 1e9 for receivers, seconds in group_s.items()},
            "speedup_vs_torch_save": save_s / group_s[2], "num_bytes": num_bytes}
