"""The "hf" engine: log-probs equal a full forward pass, stops per row, seeded sampling, weight updates."""

from __future__ import annotations

import math

import pytest
import torch

from rollouts.config import RolloutConfig
from rollouts.engine import GenerationOutput, build_engine, engine_class, register_engine
from rollouts.engine_hf import (
    HFEngine,
    first_stop_lengths,
    inverse_cdf_sample,
    left_pad,
    length_sorted_chunks,
    nucleus_filter,
)


@pytest.fixture(scope="module")
def engine(tiny_checkpoint) -> HFEngine:
    torch.set_num_threads(1)
    return build_engine("hf", tiny_checkpoint, RolloutConfig())


@pytest.fixture(scope="module")
def prompts(engine) -> list[list[int]]:
    texts = ["Who was born first?", "Which film was released in 1954, and who directed it?", "Bemo Hall"]
    return [engine.tokenizer.encode(text, add_special_tokens=False) for text in texts]


def full_forward_logprobs(model, prompts, outputs, temperature: float) -> list[list[float]]:
    """Log-probs of each completion token from ONE forward pass over left-padded prompt + completion."""
    sequences = [prompt + output.token_ids for prompt, output in zip(prompts, outputs)]
    width = max(len(sequence) for sequence in sequences)
    input_ids = torch.zeros((len(sequences), width), dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, width - len(sequence):] = torch.tensor(sequence)
        attention_mask[row, width - len(sequence):] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    logprobs = torch.log_softmax(logits.float() / (temperature if temperature > 0 else 1.0), dim=-1)
    result = []
    for row, (sequence, output) in enumerate(zip(sequences, outputs)):
        start = width - len(output.token_ids)  # first completion position; predicted from position start - 1
        result.append([logprobs[row, start - 1 + i, token].item() for i, token in enumerate(output.token_ids)])
    return result


@pytest.mark.parametrize("temperature, top_p", [(0.0, 1.0), (1.0, 1.0), (0.7, 0.9)])
def test_behaviour_logprobs_equal_one_full_forward_pass(engine, prompts, temperature, top_p):
    outputs = engine.generate(prompts, max_new_tokens=12, stop_token_ids=set(), temperature=temperature,
                              top_p=top_p, seed=3)
    assert [len(output.token_ids) for output in outputs] == [12, 12, 12]
    assert all(output.finish_reason == "length" for output in outputs)
    expected = full_forward_logprobs(engine.model, prompts, outputs, temperature)
    for output, expected_row in zip(outputs, expected):
        assert output.logprobs == pytest.approx(expected_row, abs=1e-4)


def test_greedy_is_deterministic_and_picks_the_argmax(engine, prompts):
    first = engine.generate(prompts, 10, set(), temperature=0.0, seed=None)
    second = engine.generate(prompts, 10, set(), temperature=0.0, seed=123)
    assert [o.token_ids for o in first] == [o.token_ids for o in second]
    # greedy log-probs are those of the most likely token: each is >= log(1/V)
    assert all(lp >= -math.log(len(engine.tokenizer)) - 1e-6 for o in first for lp in o.logprobs)


def test_seeded_sampling_is_reproducible(engine, prompts):
    def run(seed: int) -> list[list[int]]:
        return [o.token_ids for o in engine.generate(prompts * 4, 10, set(), temperature=1.0, seed=seed)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_stop_tokens_end_each_row_at_its_first_stop(engine, prompts):
    reference = engine.generate(prompts, 16, set(), temperature=0.0)
    stop_ids = {reference[0].token_ids[3], reference[1].token_ids[5]}
    stopped = engine.generate(prompts, 16, stop_ids, temperature=0.0)
    for full, output in zip(reference, stopped):
        stop_positions = [i for i, token in enumerate(full.token_ids) if token in stop_ids]
        expected_length = stop_positions[0] + 1 if stop_positions else 16
        assert output.token_ids == full.token_ids[:expected_length]  # includes the stop token
        assert output.logprobs == pytest.approx(full.logprobs[:expected_length], abs=1e-5)
        assert output.finish_reason == ("stop" if stop_positions else "length")
    assert len(stopped[0].token_ids) <= 4 and stopped[0].finish_reason == "stop"


def test_length_sorted_chunks_give_the_same_outputs(engine, prompts):
    one_chunk = engine.generate(prompts, 8, set(), temperature=0.0)
    chunked = HFEngine(engine.model, engine.tokenizer, max_batch_tokens=1)
    several_chunks = chunked.generate(prompts, 8, set(), temperature=0.0)
    assert [o.token_ids for o in several_chunks] == [o.token_ids for o in one_chunk]
    for a, b in zip(several_chunks, one_chunk):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_tiny_top_p_samples_the_greedy_token(engine, prompts):
    greedy = engine.generate(prompts, 6, set(), temperature=0.0)
    nucleus = engine.generate(prompts, 6, set(), temperature=1.0, top_p=1e-6, seed=0)
    assert [o.token_ids for o in nucleus] == [o.token_ids for o in greedy]


def test_empty_batch_and_zero_budget(engine, prompts):
    assert engine.generate([], 5, set()) == []
    assert engine.generate(prompts[:1], 0, set()) == [GenerationOutput([], [], "length")]


def test_load_weights_changes_outputs_and_bumps_version(tiny_checkpoint, prompts):
    engine = build_engine("hf", tiny_checkpoint, RolloutConfig())
    before = engine.generate(prompts, 6, set(), temperature=0.0)
    generator = torch.Generator().manual_seed(0)
    new_state = {name: tensor + 0.5 * torch.randn(tensor.shape, generator=generator)
                 for name, tensor in engine.model.state_dict().items()}
    engine.load_weights(new_state, version=3)
    assert engine.version == 3
    after = engine.generate(prompts, 6, set(), temperature=0.0)
    assert [o.logprobs for o in after] != [o.logprobs for o in before]
    name = "model.norm.weight"
    assert torch.equal(engine.model.state_dict()[name], new_state[name])
    engine.load_weights({name: torch.ones_like(new_state[name])}, version=4)  # partial update
    assert torch.equal(engine.model.state_dict()[name], torch.ones_like(new_state[name])) and engine.version == 4
    with pytest.raises(KeyError, match="not parameters of the rollout model"):
        engine.load_weights({"base_model.model.lm_head.weight": torch.zeros(1)}, version=5)
    with pytest.raises(TypeError, match="state dict"):
        engine.load_weights([1, 2], version=5)
    assert engine.version == 4


# ---- pure functions ------------------------------------------------------------------------------------


def test_left_pad():
    input_ids, attention_mask = left_pad([[5, 6, 7], [8]], pad_token_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_nucleus_filter_keeps_smallest_set_reaching_top_p():
    logprobs = torch.log(torch.tensor([[0.1, 0.5, 0.3, 0.1]]))
    kept = nucleus_filter(logprobs, top_p=0.7).isfinite().tolist()
    assert kept == [[False, True, True, False]]  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7
    assert nucleus_filter(logprobs, top_p=0.45).isfinite().tolist() == [[False, True, False, False]]
    assert nucleus_filter(logprobs, top_p=0.01).isfinite().tolist() == [[False, True, False, False]]


def test_inverse_cdf_sample_never_picks_zero_probability_and_matches_frequencies():
    probs = torch.tensor([[0.0, 0.25, 0.0, 0.75]]).repeat(20000, 1)
    tokens = inverse_cdf_sample(probs, torch.Generator().manual_seed(0))
    counts = torch.bincount(tokens, minlength=4).tolist()
    assert counts[0] == 0 and counts[2] == 0
    assert counts[3] / 20000 == pytest.approx(0.75, abs=0.01)


def test_first_stop_lengths():
    generated = torch.tensor([[4, 9, 2, 9], [1, 1, 1, 1], [9, 4, 4, 4]])
    lengths, stopped = first_stop_lengths(generated, torch.tensor([9]))
    assert lengths.tolist() == [2, 4, 1]
    assert stopped.tolist() == [True, False, True]


def test_length_sorted_chunks_respect_the_token_budget():
    assert length_sorted_chunks([10, 2, 5, 3], extra_tokens=0, max_batch_tokens=1000) == [[1, 3, 2, 0]]
    # rows x (longest + extra) <= 12: [2, 3] -> 2 x 6 = 12, then 5 alone would be 3 x 8 > 12
    assert length_sorted_chunks([10, 2, 5, 3], extra_tokens=3, max_batch_tokens=12) == [[1, 3], [2], [0]]


def test_engine_registry():
    assert engine_class("hf") is HFEngine
    with pytest.raises(ValueError, match="already registered"):
        register_engine("hf")(type("Other", (HFEngine,), {}))
    with pytest.raises(ValueError, match="valid engines: hf, vllm"):
        engine_class("sglang")
