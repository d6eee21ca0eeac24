"""The compact LM head: the same numbers and gradients as the full projection (TRL's fused head, GRPO's
log-probs), a working deep copy, and the full path left in place where it must not apply."""

from __future__ import annotations

import copy

import pytest
import torch
from trl.trainer.utils import add_fused_lm_head

from rollouts.model_loading import load_model_and_tokenizer
from data.types import Question
from rl.grpo.batch import collate, response_logprobs_and_entropy
from rl.grpo.lm_head import has_compact_lm_head, install_compact_lm_head, supports_compact_head
from data.trajectory import Trajectory


@pytest.fixture()
def two_heads(tiny_checkpoint):
    """Two copies of the tiny model: one with TRL's fused head only, one with the compact head over it."""
    model, _ = load_model_and_tokenizer(tiny_checkpoint)
    trl_model, compact_model = copy.deepcopy(model), copy.deepcopy(model)
    for copy_ in (trl_model, compact_model):
        add_fused_lm_head(copy_, outputs=("log_probs", "entropy", "is_top1"))
    assert install_compact_lm_head(compact_model)
    return trl_model, compact_model


def batch(vocab_size: int):
    generator = torch.Generator().manual_seed(0)
    input_ids_BL = torch.randint(5, vocab_size, (3, 12), generator=generator)
    labels_BL = input_ids_BL.clone()
    labels_BL[:, :5] = -100  # a prompt
    labels_BL[1, 8:] = -100  # an observation in the middle of the row
    labels_BL[2, 10:] = -100  # right padding
    return input_ids_BL, labels_BL


def test_compact_head_equals_trl_fused_head_outputs_and_gradients(two_heads):
    trl_model, compact_model = two_heads
    input_ids_BL, labels_BL = batch(trl_model.config.vocab_size)
    outputs = {}
    for name, model in (("trl", trl_model), ("compact", compact_model)):
        model.zero_grad()
        out = model(input_ids=input_ids_BL, labels=labels_BL, fused_lm_head=True)
        out.loss.backward()
        outputs[name] = (out, {key: param.grad.clone() for key, param in model.named_parameters()})
    (trl_out, trl_grads), (compact_out, compact_grads) = outputs["trl"], outputs["compact"]

    assert compact_out.label_mask.equal(trl_out.label_mask)
    assert int(compact_out.label_mask.sum()) == 7 + 3 + 5  # counted next-token positions per row
    for field in ("log_probs", "entropy"):
        assert torch.allclose(getattr(compact_out, field), getattr(trl_out, field), atol=1e-5), field
    assert compact_out.is_top1.equal(trl_out.is_top1)
    assert getattr(compact_out, "log_probs")[~compact_out.label_mask].abs().sum() == 0  # zero where ignored
    assert compact_out.loss.item() == pytest.approx(trl_out.loss.item(), abs=1e-6)
    for key, gradient in trl_grads.items():
        assert torch.allclose(compact_grads[key], gradient, atol=1e-6), key


def test_num_items_in_batch_is_the_normaliser(two_heads):
    _, compact_model = two_heads
    input_ids_BL, labels_BL = batch(compact_model.config.vocab_size)
    counted = compact_model(input_ids=input_ids_BL, labels=labels_BL, fused_lm_head=True)
    fixed = compact_model(input_ids=input_ids_BL, labels=labels_BL, fused_lm_head=True, num_items_in_batch=100)
    assert fixed.loss.item() == pytest.approx(counted.loss.item() * 15 / 100, rel=1e-5)


def test_plain_calls_and_all_ignored_batches_still_work(two_heads):
    _, compact_model = two_heads
    input_ids_BL, labels_BL = batch(compact_model.config.vocab_size)
    plain = compact_model(input_ids=input_ids_BL)  # generation-style call: the model's own forward
    assert plain.logits.shape == (3, 12, compact_model.config.vocab_size)
    ignored = compact_model(input_ids=input_ids_BL, labels=torch.full_like(labels_BL, -100), fused_lm_head=True)
    ignored.loss.backward()  # a differentiable zero, not an error
    assert ignored.loss.item() == 0.0


def test_scaled_logits_keep_trl_head(tiny_checkpoint):
    model, _ = load_model_and_tokenizer(tiny_checkpoint)
    assert supports_compact_head(model)
    model.config.final_logit_softcapping = 30.0
    assert not supports_compact_head(model)
    forward = model.forward
    assert install_compact_lm_head(model) is False and model.forward == forward


def trajectories(vocab_size: int) -> list[Trajectory]:
    """Two rows with model turns (loss mask 1) around an observation (loss mask 0), of different lengths."""
    generator = torch.Generator().manual_seed(1)

    def ids(count: int) -> list[int]:
        return torch.randint(5, vocab_size, (count,), generator=generator).tolist()

    rows = []
    for group, (prompt, turns) in enumerate(((4, [(3, 1), (5, 0), (2, 1)]), (7, [(6, 1), (2, 0), (4, 1)]))):
        response, mask = [], []
        for length, is_model_turn in turns:
            response += ids(length)
            mask += [is_model_turn] * length
        rows.append(Trajectory(question=Question(id=str(group), question="Who?", answers=["x"]), prompt_ids=ids(prompt), response_ids=response, loss_mask=mask,
                               behaviour_logprobs=[0.0] * len(response), group_id=str(group)))
    return rows


def test_grpo_logprobs_and_entropy_equal_the_full_projection_on_model_tokens(tiny_checkpoint):
    full_model, _ = load_model_and_tokenizer(tiny_checkpoint)
    compact_model = copy.deepcopy(full_model)
    assert install_compact_lm_head(compact_model) and has_compact_lm_head(compact_model)
    assert not has_compact_lm_head(full_model)
    batch = collate(trajectories(full_model.config.vocab_size), pad_token_id=0)
    mask_BT = batch.loss_mask_BT.bool()
    results = {}
    for name, model in (("full", full_model), ("compact", compact_model)):
        model.zero_grad()
        logprobs_BT, entropy_BT = response_logprobs_and_entropy(model, batch, temperature=0.7, compute_entropy=True)
        (logprobs_BT * batch.loss_mask_BT).sum().backward()
        results[name] = (logprobs_BT, entropy_BT, {key: p.grad.clone() for key, p in model.named_parameters()})
    (full_lp, full_entropy, full_grads), (compact_lp, compact_entropy, compact_grads) = results["full"], results["compact"]
    assert int(mask_BT.sum()) == 5 + 10
    torch.testing.assert_close(compact_lp[mask_BT], full_lp[mask_BT], atol=1e-5, rtol=0)
    torch.testing.assert_close(compact_entropy[mask_BT], full_entropy[mask_BT], atol=1e-5, rtol=0)
    assert compact_lp[~mask_BT].abs().sum() == 0 and full_lp[~mask_BT].abs().sum() > 0  # only model tokens projected
    for key, gradient in full_grads.items():
        torch.testing.assert_close(compact_grads[key], gradient, atol=1e-6, rtol=0, msg=key)


def test_a_metric_only_entropy_stays_out_of_autograd_with_the_same_values(tiny_checkpoint):
    full_model, _ = load_model_and_tokenizer(tiny_checkpoint)
    compact_model = copy.deepcopy(full_model)
    install_compact_lm_head(compact_model)
    batch = collate(trajectories(full_model.config.vocab_size), pad_token_id=0)
    for model in (full_model, compact_model):
        logprobs_BT, with_grad_BT = response_logprobs_and_entropy(model, batch, compute_entropy=True)
        _, metric_BT = response_logprobs_and_entropy(model, batch, compute_entropy=True, entropy_grad=False)
        assert logprobs_BT.requires_grad and with_grad_BT.requires_grad and not metric_BT.requires_grad
        torch.testing.assert_close(metric_BT, with_grad_BT.detach(), atol=1e-6, rtol=0)


def test_a_deep_copy_has_its_own_working_head(tiny_checkpoint):
    """The trainer deep-copies the model for its frozen KL reference: the copy must not run the original."""
    model, _ = load_model_and_tokenizer(tiny_checkpoint)
    install_compact_lm_head(model)
    reference = copy.deepcopy(model)
    batch = collate(trajectories(model.config.vocab_size), pad_token_id=0)
    before, _ = response_logprobs_and_entropy(reference, batch)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.5)  # change the original only
    after, _ = response_logprobs_and_entropy(reference, batch)
    assert torch.equal(before, after)
    assert not torch.equal(response_logprobs_and_entropy(model, batch)[0], before)
