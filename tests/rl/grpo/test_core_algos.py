"""Hand-computed checks of the GRPO math in rl/core_algos.py (pure tensors, CPU, milliseconds)."""

from __future__ import annotations

import math

import pytest
import torch

from rl.grpo.core_algos import (
    advantages_in_batch_order,
    aggregate_loss,
    entropy_from_logits,
    get_advantage_estimator,
    group_advantages,
    groups_with_varied_rewards,
    is_finite_loss,
    kl_k3,
    leave_one_out_advantages,
    masked_mean,
    policy_loss,
    register_advantage_estimator,
)

CLIP = dict(clip_eps_low=0.2, clip_eps_high=0.28, behaviour_ratio_cap=5.0)


# ------------------------------------------------------------------------------------------ advantages


def test_group_advantages_scaled_by_unbiased_std():
    rewards_BG = torch.tensor([[1.0, 0.0, 0.0, 1.0], [3.0, 1.0, 2.0, 2.0]])
    advantages_BG = group_advantages(rewards_BG, scale_by_std=True, eps=0.0)
    # group 0: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.57735 -> +-0.5 / 0.57735 = +-0.866025
    # group 1: mean 2, unbiased std sqrt(2 / 3) = 0.816497 -> [1.224745, -1.224745, 0, 0]
    expected = torch.tensor([[0.866025, -0.866025, -0.866025, 0.866025], [1.224745, -1.224745, 0.0, 0.0]])
    torch.testing.assert_close(advantages_BG, expected, atol=1e-5, rtol=0)


def test_group_advantages_without_std_scaling_is_centred_reward():
    rewards_BG = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    torch.testing.assert_close(
        group_advantages(rewards_BG, scale_by_std=False, eps=1e-6), torch.tensor([[0.5, -0.5, -0.5, 0.5]])
    )


@pytest.mark.parametrize("scale_by_std", [True, False])
def test_all_equal_group_has_zero_advantage(scale_by_std):
    advantages_BG = group_advantages(torch.full((1, 5), 0.7), scale_by_std=scale_by_std, eps=1e-6)
    assert torch.equal(advantages_BG, torch.zeros(1, 5))


def test_group_of_one_has_zero_advantage():
    assert torch.equal(
        group_advantages(torch.tensor([[3.0]]), scale_by_std=True, eps=1e-6), torch.zeros(1, 1)
    )


def test_rloo_baseline_is_mean_of_the_others():
    advantages_BG = leave_one_out_advantages(
        torch.tensor([[1.0, 0.0, 0.0, 1.0]]), scale_by_std=False, eps=0.0
    )
    # first sample: 1 - (0 + 0 + 1) / 3 = 2/3
    torch.testing.assert_close(advantages_BG, torch.tensor([[2 / 3, -2 / 3, -2 / 3, 2 / 3]]))


def test_estimator_registry_by_name_refuses_duplicates_and_names_choices():
    assert get_advantage_estimator("grpo") is group_advantages
    with pytest.raises(ValueError, match="already registered"):
        register_advantage_estimator("grpo")(lambda rewards_BG, *, scale_by_std, eps: rewards_BG)
    with pytest.raises(KeyError, match="registered: grpo, rloo"):
        get_advantage_estimator("nope")


def _ragged_groups() -> list[torch.Tensor]:
    """Three groups of sizes 2, 3 and 1, as a worker may return them."""
    return [torch.tensor([1.0, 0.0]), torch.tensor([3.0, 1.0, 2.0]), torch.tensor([5.0])]


@pytest.mark.parametrize(
    "name, scale_by_std, expected",
    [
        # [1, 0]: mean 0.5, unbiased std sqrt(0.5) = 0.707107 -> +-0.707107
        # [3, 1, 2]: mean 2, unbiased std 1 -> [1, -1, 0];  [5]: a group of one -> 0
        ("grpo", True, [0.707107, -0.707107, 1.0, -1.0, 0.0, 0.0]),
        ("grpo", False, [0.5, -0.5, 1.0, -1.0, 0.0, 0.0]),  # Dr. GRPO: centred rewards
        # RLOO: centred * G / (G - 1): [0.5, -0.5] * 2 and [1, -1, 0] * 3 / 2
        ("rloo", False, [1.0, -1.0, 1.5, -1.5, 0.0, 0.0]),
    ],
)
def test_advantages_in_batch_order_normalise_each_ragged_group_on_its_own(name, scale_by_std, expected):
    advantages_B = advantages_in_batch_order(
        _ragged_groups(), get_advantage_estimator(name), scale_by_std=scale_by_std, eps=0.0
    )
    assert advantages_B.dtype == torch.float32
    torch.testing.assert_close(advantages_B, torch.tensor(expected), atol=1e-5, rtol=0)


def test_advantages_in_batch_order_give_the_estimator_one_row_per_group():
    shapes = []

    def times_ten(rewards_BG, *, scale_by_std, eps):
        shapes.append(tuple(rewards_BG.shape))
        return rewards_BG * 10

    advantages_B = advantages_in_batch_order(_ragged_groups(), times_ten, scale_by_std=True)
    assert shapes == [(1, 2), (1, 3), (1, 1)]
    assert advantages_B.tolist() == [10.0, 0.0, 30.0, 10.0, 20.0, 50.0]  # group after group
    assert advantages_in_batch_order([], times_ten, scale_by_std=True).shape == (0,)


def test_zero_advantage_filter_keeps_only_groups_with_varied_rewards():
    rewards_by_group = [
        torch.tensor([1.0, 1.0, 1.0]),  # all equal: dropped
        torch.tensor([0.0, 1.0]),  # kept
        torch.tensor([0.5]),  # one sample: advantage 0, dropped
        torch.tensor([2.0, 2.0, 3.0]),  # kept
        torch.tensor([]),  # no samples: dropped
    ]
    assert groups_with_varied_rewards(rewards_by_group) == [1, 3]
    assert groups_with_varied_rewards([torch.zeros(4), torch.full((2,), 0.7)]) == []
    # the dropped groups are exactly those whose advantages are all zero
    for index, rewards_G in enumerate(rewards_by_group[:4]):
        all_zero = bool((group_advantages(rewards_G.reshape(1, -1)) == 0).all())
        assert all_zero == (index not in (1, 3))


# ------------------------------------------------------------------------------------------ policy loss


def _two_sequence_example():
    """Sample 0: A=+1, ratios [1, 1.5, 0.5]; sample 1: A=-2, ratios [1.5, 0.5, pad]."""
    proximal_BT = torch.log(torch.tensor([[0.2, 0.2, 0.4], [0.2, 0.4, 0.5]]))
    ratios_BT = torch.tensor([[1.0, 1.5, 0.5], [1.5, 0.5, 1.0]])
    logprobs_BT = proximal_BT + torch.log(ratios_BT)
    advantages_B = torch.tensor([1.0, -2.0])
    mask_BT = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return logprobs_BT, proximal_BT, advantages_B, mask_BT


# Per-token losses, eps_low 0.2 / eps_high 0.28:
#   sample 0 (A=+1): -min(r, clip(r)) = [-1, -1.28 (clipped), -0.5]
#   sample 1 (A=-2): -min(-2r, -2clip(r)) = [3 (r=1.5 unclipped), 1.6 (r=0.5 clipped to 0.8)]
@pytest.mark.parametrize(
    "aggregation, expected",
    [
        ("token_mean", (-1 - 1.28 - 0.5 + 3 + 1.6) / 5),  # 0.364
        ("seq_mean", ((-1 - 1.28 - 0.5) / 3 + (3 + 1.6) / 2) / 2),  # 0.686667
        ("constant", (-1 - 1.28 - 0.5 + 3 + 1.6) / (2 * 4)),  # 0.2275 with constant length 4
    ],
)
def test_policy_loss_hand_computed_clipped_and_unclipped(aggregation, expected):
    logprobs_BT, proximal_BT, advantages_B, mask_BT = _two_sequence_example()
    loss, metrics = policy_loss(
        logprobs_BT,
        proximal_BT,
        proximal_BT,
        advantages_B,
        mask_BT,
        **CLIP,
        aggregation=aggregation,
        constant_length=4,
    )
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert metrics["clip_fraction"].item() == pytest.approx(2 / 5)
    assert metrics["importance_weight_mean"].item() == pytest.approx(1.0)


def test_policy_loss_gradient_is_zero_on_clipped_tokens():
    logprobs_BT, proximal_BT, advantages_B, mask_BT = _two_sequence_example()
    logprobs_BT = logprobs_BT.clone().requires_grad_(True)
    loss, _ = policy_loss(logprobs_BT, proximal_BT, proximal_BT, advantages_B, mask_BT, **CLIP)
    loss.backward()
    # d l / d logp = -A * r / N_tokens on unclipped tokens, 0 on clipped and masked ones.
    expected = torch.tensor([[-1.0 / 5, 0.0, -0.5 / 5], [2 * 1.5 / 5, 0.0, 0.0]])
    torch.testing.assert_close(logprobs_BT.grad, expected, atol=1e-6, rtol=0)


def test_decoupled_loss_equals_standard_grpo_when_proximal_equals_behaviour():
    generator = torch.Generator().manual_seed(0)
    proximal_BT = -torch.rand(4, 7, generator=generator) * 3
    logprobs_BT = proximal_BT + 0.3 * torch.randn(4, 7, generator=generator)
    advantages_B = torch.randn(4, generator=generator)
    mask_BT = (torch.rand(4, 7, generator=generator) > 0.3).long()
    results = {}
    for off_policy_correction in (True, False):
        logprobs = logprobs_BT.clone().requires_grad_(True)
        # Without correction the behaviour log-probs are ignored: pass garbage to prove it.
        behaviour_BT = proximal_BT if off_policy_correction else torch.full_like(proximal_BT, -50.0)
        loss, metrics = policy_loss(
            logprobs,
            proximal_BT,
            behaviour_BT,
            advantages_B,
            mask_BT,
            **CLIP,
            off_policy_correction=off_policy_correction,
        )
        loss.backward()
        results[off_policy_correction] = (loss.detach(), logprobs.grad, metrics["clip_fraction"])
    assert torch.equal(results[True][0], results[False][0])
    assert torch.equal(results[True][1], results[False][1])
    assert torch.equal(results[True][2], results[False][2])


def test_first_epoch_of_synchronous_step_is_minus_mean_advantage():
    # On-policy and unchanged weights: r = 1 and w = 1, so loss = -sum(A * m) / N.
    logprobs_BT = torch.log(torch.tensor([[0.5, 0.25], [0.5, 0.5]]))
    loss, metrics = policy_loss(
        logprobs_BT,
        logprobs_BT,
        logprobs_BT,
        torch.tensor([2.0, -1.0]),
        torch.tensor([[1, 1], [1, 0]]),
        **CLIP,
    )
    assert loss.item() == pytest.approx(-(2 + 2 - 1) / 3)
    assert metrics["clip_fraction"].item() == 0.0
    assert metrics["approx_kl"].item() == 0.0


@pytest.mark.parametrize(
    "mode, expected_loss, masked_fraction, truncated_fraction",
    [
        ("truncate", -(1 + 2 + 5) / 3, 0.0, 1 / 3),  # w = [1, 2, min(8, 5)]
        ("mask", -(1 + 2) / 2, 1 / 3, 0.0),  # the w=8 token leaves the loss and the token count
    ],
)
def test_behaviour_weight_truncate_versus_mask(mode, expected_loss, masked_fraction, truncated_fraction):
    proximal_BT = torch.log(torch.tensor([[0.4, 0.4, 0.8]]))
    behaviour_BT = proximal_BT - torch.log(torch.tensor([[1.0, 2.0, 8.0]]))  # w = exp(prox - behav)
    loss, metrics = policy_loss(
        proximal_BT.clone(),
        proximal_BT,
        behaviour_BT,
        torch.tensor([1.0]),
        torch.ones(1, 3),
        **CLIP,
        behaviour_ratio_mode=mode,
    )
    assert loss.item() == pytest.approx(expected_loss, abs=1e-5)
    assert metrics["importance_weight_mean"].item() == pytest.approx(11 / 3, abs=1e-5)
    assert metrics["importance_weight_max"].item() == pytest.approx(8.0, abs=1e-5)
    assert metrics["behaviour_masked_fraction"].item() == pytest.approx(masked_fraction)
    assert metrics["behaviour_truncated_fraction"].item() == pytest.approx(truncated_fraction)


def test_padding_garbage_never_reaches_the_loss():
    logprobs_BT = torch.tensor([[math.log(0.5), float("nan")]])
    behaviour_BT = torch.tensor([[math.log(0.5), -float("inf")]])
    loss, metrics = policy_loss(
        logprobs_BT, logprobs_BT, behaviour_BT, torch.tensor([1.0]), torch.tensor([[1, 0]]), **CLIP
    )
    assert loss.item() == pytest.approx(-1.0)
    assert all(is_finite_loss(value) for value in metrics.values())


# ------------------------------------------------------------------------------------------ aggregation


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean", "constant"])
def test_micro_batch_losses_add_up_to_the_batch_loss_with_global_counts(aggregation):
    generator = torch.Generator().manual_seed(1)
    loss_BT = torch.randn(4, 6, generator=generator)
    mask_BT = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    whole = aggregate_loss(loss_BT, mask_BT, aggregation, constant_length=8)
    counts = dict(num_tokens=float(mask_BT.sum()), num_sequences=4.0, constant_length=8)
    parts = [
        aggregate_loss(loss_BT[rows], mask_BT[rows], aggregation, **counts)
        for rows in (slice(0, 1), slice(1, 4))
    ]
    torch.testing.assert_close(parts[0] + parts[1], whole)


def test_seq_mean_ignores_sequences_without_trainable_tokens():
    loss_BT = torch.tensor([[2.0, 4.0], [100.0, 100.0]])
    assert aggregate_loss(loss_BT, torch.tensor([[1, 1], [0, 0]]), "seq_mean").item() == pytest.approx(3.0)


def test_unknown_aggregation_names_the_key():
    with pytest.raises(ValueError, match="grpo.loss_aggregation"):
        aggregate_loss(torch.zeros(1, 1), torch.ones(1, 1), "sum")


# ------------------------------------------------------------------------------ KL, entropy, helpers


def test_kl_k3_hand_computed():
    kl_BT = kl_k3(torch.log(torch.tensor([[0.5, 0.3]])), torch.log(torch.tensor([[0.25, 0.3]])))
    # token 0: ratio ref/theta = 0.5 -> 0.5 - ln(0.5) - 1 = 0.193147; token 1: identical -> 0
    torch.testing.assert_close(kl_BT, torch.tensor([[0.193147, 0.0]]), atol=1e-6, rtol=0)


def test_entropy_from_logits_hand_computed():
    logits_BTV = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -float("inf"), -float("inf")]]])
    entropy_BT = entropy_from_logits(torch.nan_to_num(logits_BTV, neginf=-1e9))
    # uniform over 4: ln 4; probabilities [0.25, 0.75]: -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.562335
    torch.testing.assert_close(entropy_BT, torch.tensor([[math.log(4.0), 0.562335]]), atol=1e-5, rtol=0)
    logits_BTV = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(0)) * 4
    given_BT = entropy_from_logits(logits_BTV, torch.logsumexp(logits_BTV, dim=-1))
    torch.testing.assert_close(given_BT, entropy_from_logits(logits_BTV), atol=1e-6, rtol=0)
    torch.testing.assert_close(given_BT, torch.distributions.Categorical(logits=logits_BTV).entropy(), atol=1e-5, rtol=0)


def test_masked_mean_and_finiteness_helper():
    assert masked_mean(torch.tensor([[1.0, 3.0, float("nan")]]), torch.tensor([[1, 1, 0]])).item() == 2.0
    assert masked_mean(torch.tensor([[5.0]]), torch.tensor([[0]])).item() == 0.0
    assert is_finite_loss(torch.tensor(1.0), 2.0)
    assert not is_finite_loss(torch.tensor(1.0), float("nan"))
    assert not is_finite_loss(torch.tensor([1.0, float("inf")]))
