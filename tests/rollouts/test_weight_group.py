"""The weight group: bucket plans, and a state dict broadcast from rank 0 to two receivers over gloo, exactly.

The receivers here are threads of the test process, each with its own process group object built from the
same private store (the vLLM workers of tests/rollouts/test_engine_vllm.py are processes; the group code is
the same).
"""

from __future__ import annotations

import threading

import pytest
import torch

from rollouts.weight_group import (TensorSpec, WeightGroup, flatten_bucket, free_port, plan_buckets, split_bucket,
                                   tensor_specs, wait_all)


def spec(name: str, dtype: str, *shape: int) -> TensorSpec:
    return TensorSpec(name, dtype, tuple(shape))


def test_buckets_hold_one_dtype_each_keep_order_and_respect_the_byte_limit():
    specs = [spec("a", "float32", 10), spec("b", "bfloat16", 10), spec("c", "float32", 10),
             spec("d", "float32", 30), spec("e", "bfloat16", 4)]
    # 40-byte buckets: a (40 B) alone; c (40 B) alone; d (120 B) alone, above the limit; b + e (28 B) share one
    assert plan_buckets(specs, bucket_bytes=40) == [[0], [2], [3], [1, 4]]
    assert plan_buckets(specs, bucket_bytes=1 << 20) == [[0, 2, 3], [1, 4]]
    with pytest.raises(ValueError, match="bucket_bytes"):
        plan_buckets(specs, bucket_bytes=0)


def test_specs_survive_the_plain_list_form_and_count_bytes():
    original = spec("model.layers.0.mlp.up_proj.weight", "bfloat16", 128, 64)
    assert TensorSpec.from_list(original.as_list()) == original
    assert (original.numel, original.num_bytes) == (128 * 64, 128 * 64 * 2)


def test_flatten_then_split_gives_the_tensors_back_as_views():
    tensors = [torch.arange(6.0).view(2, 3), torch.tensor([7.0]), torch.ones(2, 2)]
    specs = tensor_specs({str(index): tensor for index, tensor in enumerate(tensors)})
    flat = flatten_bucket(tensors)
    views = split_bucket(flat, specs)
    assert all(torch.equal(view, tensor) for view, tensor in zip(views, tensors))
    assert views[0].data_ptr() == flat.data_ptr()
    with pytest.raises(ValueError, match="holds 11 elements"):
        split_bucket(flat, specs[:2])


def test_a_state_dict_reaches_every_receiver_bit_for_bit():
    generator = torch.Generator().manual_seed(0)
    state_dict = {"embed.weight": torch.randn(50, 8, generator=generator),
                  "norm.weight": torch.randn(8, generator=generator).to(torch.bfloat16),
                  "proj.weight": torch.randn(8, 8, generator=generator),
                  "step": torch.tensor([3], dtype=torch.int64)}
    specs = tensor_specs(state_dict)
    buckets = plan_buckets(specs, bucket_bytes=512)  # several float32 buckets
    assert len(buckets) >= 4
    port, world_size = free_port(), 3
    received: dict[int, list] = {}
    errors: list[BaseException] = []

    def receiver(rank: int) -> None:
        try:
            group = WeightGroup.create("127.0.0.1", port, rank, world_size, timeout_s=60)
            received[rank] = group.receive_buckets(specs, buckets)
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=receiver, args=(rank,)) for rank in (1, 2)]
    for thread in threads:
        thread.start()
    sender = WeightGroup.create("127.0.0.1", port, 0, world_size, timeout_s=60)
    wait_all(sender.send_buckets(state_dict, specs, buckets))
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    for rank in (1, 2):
        got = dict(received[rank])
        assert list(got) == [specs[index].name for bucket in buckets for index in bucket]
        for name, tensor in state_dict.items():
            assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor)
    with pytest.raises(RuntimeError, match="rank 0"):
        WeightGroup(None, None, rank=1, world_size=3).send_buckets(state_dict, specs, buckets)


def test_an_unknown_backend_is_refused_by_name():
    with pytest.raises(ValueError, match="'gloo' and 'nccl'"):
        WeightGroup.create("127.0.0.1", free_port(), 0, 1, backend="mpi", timeout_s=5)
