"""The trainer's process group as the rest of the code sees it: rank, world size, the few collectives used.

Under `torchrun --nproc_per_node=N` (or the `deepspeed` launcher) the trainer runs as N processes, one
per rank; without a launcher it is one process with a one-process gloo group (rl/grpo/deepspeed_setup.py).
Every helper here is written so that one process is the trivial case: no collective is issued when the
world size is 1, so the single-process path does exactly what it did before data parallelism.

- `rank()`, `world_size()`, `is_main_process()`: rank 0 owns the rollout manager, the metrics, the
  weight push and the checkpoint folder's renames.
- `broadcast_from_main(value)`, `gather_to_all(value)`, `all_ranks_true(flag)`, `barrier()`: python
  objects through `torch.distributed`'s object collectives (gloo handles them on CPU and GPU jobs alike).
- `main_process_result(compute)`: rank 0 computes, every rank receives the result; an exception on
  rank 0 is raised on every rank, so no rank waits forever for a value that will never come.
- `group_shares(group_sizes, world_size)`: which rows of a batch each rank trains on (whole groups).
- `merge_rank_metrics(per_rank)`: one step's metrics from every rank's partial sums.

What it simplifies on purpose: one data-parallel group (no tensor or pipeline parallelism); objects
go through pickling collectives, which is right for the small things sent here (a batch of trajectories'
token ids, a path, a few floats) and wrong for tensors of weights (those stay inside DeepSpeed).

    shares = group_shares([4, 4, 4], world_size=2)   # [[0, 1], [2]]: rank 0 trains groups 0-1, rank 1 group 2
    groups = broadcast_from_main(manager.get_batch(...) if is_main_process() else None)
"""

from __future__ import annotations

import contextlib
import os
import pickle
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

# Set by a launcher (or by init_distributed for one process). A child process must not inherit them, or it
# would try to join (or re-bind the port of) this process's group.
DISTRIBUTED_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                         "GROUP_RANK", "ROLE_RANK", "ROLE_WORLD_SIZE", "TORCHELASTIC_RUN_ID")


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Ranks in the trainer's group (the launcher's WORLD_SIZE before the group exists, else 1)."""
    if is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    if is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast_from_main(value: T) -> T:
    """Rank 0's `value` on every rank (other ranks' `value` is ignored; pass None)."""
    if world_size() == 1:
        return value
    holder = [value if is_main_process() else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_to_all(value: T) -> list[T]:
    """Every rank's `value`, in rank order, on every rank."""
    if world_size() == 1:
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def all_ranks_true(flag: bool) -> bool:
    """True on every rank if `flag` is True on every rank (a MIN all-reduce)."""
    if world_size() == 1:
        return bool(flag)
    value = torch.tensor([1 if flag else 0], dtype=torch.int64)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def _shareable_error(error: BaseException) -> BaseException:
    """The exception itself if it survives pickling (so other ranks raise the same type), else a RuntimeError."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def main_process_result(compute: Callable[[], T]) -> T:
    """`compute()` run on rank 0 only; its result on every rank. If it raises, every rank raises it."""
    if world_size() == 1:
        return compute()
    result, error = None, None
    if is_main_process():
        try:
            result = compute()
        except BaseException as caught:  # shared first, so the other ranks stop instead of waiting
            error = caught
    shared_result, shared_error = broadcast_from_main((result, None if error is None else _shareable_error(error)))
    if error is not None:
        raise error
    if shared_error is not None:
        raise shared_error
    return shared_result


def group_shares(group_sizes: Sequence[int], num_ranks: int) -> list[list[int]]:
    """Group indices per rank: contiguous, whole groups, sizes differing by at most one group.

    Whole groups keep each group's advantages on one rank (they are computed per group anyway, from the
    global batch, on every rank). A rank may get no group when there are fewer groups than ranks; it then
    trains on stand-in rows whose loss counts zero (GRPOTrainer), to stay in step with the others.
    """
    return [chunk.tolist() for chunk in torch.arange(len(group_sizes)).tensor_split(num_ranks)]


def rows_of_groups(group_sizes: Sequence[int], groups: Sequence[int]) -> list[int]:
    """Row indices (in batch order: group after group) of the given groups."""
    starts = [0]
    for size in group_sizes:
        starts.append(starts[-1] + size)
    return [row for group in groups for row in range(starts[group], starts[group + 1])]


def merge_rank_metrics(per_rank: Sequence[dict[str, float]]) -> dict[str, float]:
    """One step's metrics from every rank's partial ones: keys ending in `_max` take the maximum, all others
    add up (ranks report partial sums of the batch loss and token-weighted shares of per-token means)."""
    merged: dict[str, float] = {}
    for metrics in per_rank:
        for key, value in metrics.items():
            if key not in merged:
                merged[key] = value
            elif key.endswith("_max"):
                merged[key] = max(merged[key], value)
            else:
                merged[key] += value
    return merged


@contextlib.contextmanager
def without_distributed_environment(**extra: str) -> Iterator[None]:
    """Within the block, os.environ lacks the launcher's variables (plus `extra`): what a child process
    started in it (a spawned SFT process, the Ray processes) inherits."""
    saved = dict(os.environ)
    for key in DISTRIBUTED_VARIABLES:
        os.environ.pop(key, None)
    os.environ.update(extra)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


__all__ = [
    "DISTRIBUTED_VARIABLES",
    "all_ranks_true",
    "barrier",
    "broadcast_from_main",
    "gather_to_all",
    "group_shares",
    "is_initialized",
    "is_main_process",
    "main_process_result",
    "merge_rank_metrics",
    "rank",
    "rows_of_groups",
    "world_size",
    "without_distributed_environment",
]
