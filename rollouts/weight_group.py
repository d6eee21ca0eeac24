"""A collective group that carries weights from a rollout actor into its vLLM workers, in flat buckets.

A rollout actor holds the new weights as tensors (read zero-copy from the Ray object store,
rollouts/weight_sync.py); its vLLM engine runs the model in worker processes (one per tensor-parallel
rank). Instead of pickling the state dict into vLLM's RPC, the actor (rank 0) and the workers (ranks
1..N) form their own torch.distributed process group, built from a private TCPStore so it is
independent of any default group (vLLM's workers have one for tensor parallelism; the actor has none).
Per update, only the tensors' names, dtypes and shapes travel by RPC; the bytes go by `broadcast`,
grouped by dtype into flat buckets of at most `bucket_bytes` (one collective per bucket, not per
tensor, as verl and OpenRLHF do). Every worker receives the full tensors; vLLM's `load_weights`
takes its own shard.

What it simplifies on purpose: the group is gloo, on CPU tensors. On GPU nodes each worker copies what
it received to its GPU inside `load_weights`; NCCL needs a GPU per rank, and the actor shares its
GPUs with its workers. `backend="nccl"` is accepted for groups whose ranks each own a GPU (e.g. trainer
ranks to engines), which this project does not run.

    specs = tensor_specs(state_dict)
    buckets = plan_buckets(specs, bucket_bytes=256 << 20)
    group = WeightGroup.create(host, port, rank=0, world_size=1 + tp)        # actor; workers: rank 1 + r
    pending = group.send_buckets(state_dict, specs, buckets)                 # rank 0, returns at once
    received = group.receive_buckets(specs, buckets)                         # ranks >= 1
"""

from __future__ import annotations

import datetime
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class TensorSpec:
    """What a receiver needs to allocate one tensor: its name, dtype (e.g. "bfloat16") and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def num_bytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.torch_dtype).element_size()

    def as_list(self) -> list:
        """Plain values, for an RPC that serialises lists, strings and ints only (vLLM's msgspec)."""
        return [self.name, self.dtype, list(self.shape)]

    @classmethod
    def from_list(cls, values: Sequence) -> "TensorSpec":
        name, dtype, shape = values
        return cls(str(name), str(dtype), tuple(int(size) for size in shape))


def tensor_specs(state_dict: Mapping[str, torch.Tensor]) -> list[TensorSpec]:
    """One spec per tensor, in the state dict's order."""
    return [TensorSpec(name, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape))
            for name, tensor in state_dict.items()]


def plan_buckets(specs: Sequence[TensorSpec], bucket_bytes: int) -> list[list[int]]:
    """Indices into `specs`, grouped into buckets: one dtype per bucket, at most `bucket_bytes` each.

    Tensors keep their order within a dtype; a tensor larger than `bucket_bytes` is a bucket of its own.
    """
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
    buckets: list[list[int]] = []
    open_bucket: dict[str, tuple[list[int], int]] = {}  # dtype -> (indices, bytes) of its bucket being filled
    for index, spec in enumerate(specs):
        indices, filled = open_bucket.get(spec.dtype, ([], 0))
        if indices and filled + spec.num_bytes > bucket_bytes:
            buckets.append(indices)
            indices, filled = [], 0
        open_bucket[spec.dtype] = (indices + [index], filled + spec.num_bytes)
    buckets.extend(indices for indices, _ in open_bucket.values() if indices)
    return buckets


def flatten_bucket(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One 1-D tensor holding `tensors` back to back (a copy; they share one dtype)."""
    return torch.cat([tensor.detach().reshape(-1) for tensor in tensors])


def split_bucket(flat: torch.Tensor, specs: Sequence[TensorSpec]) -> list[torch.Tensor]:
    """Views of `flat` with the specs' shapes (the inverse of flatten_bucket)."""
    views, offset = [], 0
    for spec in specs:
        views.append(flat[offset:offset + spec.numel].view(spec.shape))
        offset += spec.numel
    if offset != flat.numel():
        raise ValueError(f"bucket holds {flat.numel()} elements, the specs {offset}")
    return views


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now (for the group's store)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class WeightGroup:
    """A private process group (rank 0 sends, the other ranks receive) outside torch's default group."""

    def __init__(self, process_group: Any, store: Any, rank: int, world_size: int):
        self.process_group = process_group
        self.store = store  # kept alive: rank 0 hosts it
        self.rank = rank
        self.world_size = world_size

    @classmethod
    def create(cls, host: str, port: int, rank: int, world_size: int, backend: str = "gloo",
               timeout_s: float = DEFAULT_TIMEOUT_S) -> "WeightGroup":
        """Join (rank 0: host) the group; returns once all `world_size` ranks have joined."""
        timeout = datetime.timedelta(seconds=timeout_s)
        store = dist.TCPStore(host, port, world_size, rank == 0, timeout=timeout)
        if backend == "gloo":
            process_group = dist.ProcessGroupGloo(store, rank, world_size, timeout)
        elif backend == "nccl":
            process_group = dist.ProcessGroupNCCL(store, rank, world_size)
        else:
            raise ValueError(f"weight group backend {backend!r}: valid backends are 'gloo' and 'nccl'")
        return cls(process_group, store, rank, world_size)

    def _broadcast(self, tensor: torch.Tensor) -> Any:
        options = dist.BroadcastOptions()
        options.rootRank = 0
        return self.process_group.broadcast([tensor], options)

    def send_buckets(self, state_dict: Mapping[str, torch.Tensor], specs: Sequence[TensorSpec],
                     buckets: Sequence[Sequence[int]]) -> list[Any]:
        """Rank 0: start broadcasting every bucket; returns the pending works (`wait_all` them after the
        receivers were told to receive). Sending does not block, so one thread can start it and then ask the
        receivers, by RPC, to take part."""
        if self.rank != 0:
            raise RuntimeError("send_buckets runs on rank 0 of the weight group")
        tensors = [state_dict[spec.name] for spec in specs]
        pending = []
        for bucket in buckets:
            flat = flatten_bucket([tensors[index] for index in bucket])
            pending.append((self._broadcast(flat), flat))  # the flat copy must live until the send completes
        return pending

    def receive_buckets(self, specs: Sequence[TensorSpec], buckets: Sequence[Sequence[int]],
                        device: str | torch.device = "cpu") -> list[tuple[str, torch.Tensor]]:
        """Ranks >= 1: every tensor of the update as (name, tensor), in bucket order."""
        received = []
        for bucket in buckets:
            bucket_specs = [specs[index] for index in bucket]
            flat = torch.empty(sum(spec.numel for spec in bucket_specs), dtype=bucket_specs[0].torch_dtype,
                               device=device)
            self._broadcast(flat).wait()
            received.extend((spec.name, view) for spec, view in zip(bucket_specs, split_bucket(flat, bucket_specs)))
        return received


def wait_all(pending: Sequence[Any]) -> None:
    """Wait for the works `send_buckets` returned."""
    for work, _ in pending:
        work.wait()


__all__ = ["DEFAULT_TIMEOUT_S", "TensorSpec", "WeightGroup", "flatten_bucket", "free_port", "plan_buckets",
           "split_bucket", "tensor_specs", "wait_all"]
