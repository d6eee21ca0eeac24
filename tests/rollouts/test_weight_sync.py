"""Weight encoding for the object store: exact round trip per dtype, zero-copy decode, clear errors."""

from __future__ import annotations

import pytest
import torch

from rollouts.weight_sync import cpu_state_dict, decode_weights, encode_weights


def test_round_trip_is_exact_for_every_training_dtype():
    generator = torch.Generator().manual_seed(0)
    state_dict = {
        "fp32.weight": torch.randn(3, 4, generator=generator),
        "bf16.weight": torch.randn(5, generator=generator).to(torch.bfloat16),
        "fp16.weight": torch.randn(2, 2, generator=generator).to(torch.float16),
        "step": torch.tensor(7, dtype=torch.int64),
    }
    decoded = decode_weights(encode_weights(state_dict))
    assert list(decoded) == list(state_dict)
    for name, tensor in state_dict.items():
        assert decoded[name].dtype == tensor.dtype and decoded[name].shape == tensor.shape
        assert torch.equal(decoded[name], tensor)


def test_encode_and_decode_share_memory_instead_of_copying():
    weight = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    encoded = encode_weights({"w": weight})
    assert encoded.arrays["w"].ctypes.data == weight.data_ptr()
    assert decode_weights(encoded)["w"].data_ptr() == weight.data_ptr()


def test_non_contiguous_and_grad_tensors_are_made_sendable():
    parameter = torch.nn.Parameter(torch.arange(6.0).reshape(2, 3))
    sendable = cpu_state_dict({"w": parameter.t()})
    assert sendable["w"].is_contiguous() and not sendable["w"].requires_grad
    assert torch.equal(decode_weights(encode_weights({"w": parameter.t()}))["w"], parameter.detach().t())


def test_non_tensor_entries_are_refused_with_their_name():
    with pytest.raises(TypeError, match="'lr' is a float"):
        encode_weights({"lr": 0.1})


def test_a_lora_adapter_travels_with_its_config_and_engines_without_adapters_refuse_it():
    from rollouts.engine import LoraAdapter, resolve_state_dict

    adapter = LoraAdapter({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(8, 16)},
                          {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]})
    decoded = decode_weights(encode_weights(adapter))
    assert isinstance(decoded, LoraAdapter) and decoded.config == adapter.config
    name = next(iter(adapter.tensors))
    assert torch.equal(decoded.tensors[name], adapter.tensors[name])
    assert isinstance(decode_weights(encode_weights(adapter.tensors)), dict)  # a state dict stays one
    with pytest.raises(TypeError, match="rollout.lora_sync=merged"):
        resolve_state_dict(decoded)  # what the hf engine's load_weights does first
