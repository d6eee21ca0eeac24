"""Weight broadcast from the trainer to the rollout actors through the Ray object store.

The trainer's state dict is copied to CPU and put in the object store ONCE (`ray.put`); every rollout
actor receives the same ObjectRef and reads the tensors from the store on its own node, so the driver
never serialises one copy per actor. The actor hands the state dict to its engine's `load_weights`
(an in-place copy for the HF engine, the engine's own weight update for vLLM on GPU), with the new
policy version.

What it simplifies on purpose: full state dicts every step (no deltas, no NCCL broadcast). On one
machine the object store is shared memory, so this is a memcpy per actor; on a GPU cluster with large
models, an NCCL weight group (as verl / OpenRLHF do) is the next step, behind the same
`RolloutManager.push_weights` call.

    published = publish_weights(model.state_dict(), version=3)   # driver side
    actor.update_weights.remote(published.ref, published.version)
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ray
import torch


@dataclass
class PublishedWeights:
    """One version of the policy weights, stored once in the Ray object store."""

    ref: Any  # ray.ObjectRef of a {name: CPU tensor} dict
    version: int
    num_bytes: int
    put_s: float  # seconds to copy to CPU and put in the object store


def cpu_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors (a GPU or grad-carrying tensor must not cross the process boundary)."""
    cpu_tensors = {}
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state dict entry {name!r} is a {type(tensor).__name__}, expected a torch.Tensor")
        cpu_tensors[name] = tensor.detach().to("cpu").contiguous()
    return cpu_tensors


def state_dict_num_bytes(state_dict: Mapping[str, torch.Tensor]) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in state_dict.values())


def publish_weights(state_dict: Mapping[str, torch.Tensor], version: int) -> PublishedWeights:
    """Put the weights of policy `version` in the object store once; hand `.ref` to every actor."""
    if not ray.is_initialized():
        raise RuntimeError("publish_weights needs a running Ray session (call rollouts.manager.init_ray first)")
    start = time.perf_counter()
    cpu_tensors = cpu_state_dict(state_dict)
    ref = ray.put(cpu_tensors)
    return PublishedWeights(ref=ref, version=version, num_bytes=state_dict_num_bytes(cpu_tensors),
                            put_s=time.perf_counter() - start)


__all__ = ["PublishedWeights", "cpu_state_dict", "publish_weights", "state_dict_num_bytes"]
