"""Collation of trajectories into padded tensors and response log-probs of one forward pass."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_qwen2

from data.types import Question
from rl.grpo.batch import collate, response_logprobs_and_entropy, sequence_logprobs, split_micro_batches
from data.trajectory import Trajectory

PAD = 0
QUESTION = Question(id="q", question="Who?", answers=["x"])


def _trajectory(prompt, response, mask, logprobs, reward=0.0, version=0, group="g"):
    return Trajectory(
        question=QUESTION,
        prompt_ids=prompt,
        response_ids=response,
        loss_mask=mask,
        behaviour_logprobs=logprobs,
        reward=reward,
        policy_version=version,
        group_id=group,
    )


@pytest.fixture(scope="module")
def tiny_model():
    return tiny_qwen2(vocab_size=64, tie_word_embeddings=False).eval()


def _trajectories():
    return [
        _trajectory([5, 6], [7, 8, 9], [1, 0, 1], [-0.5, 0.0, -1.5], reward=1.0, version=3),
        _trajectory([5], [7], [1], [-2.0], reward=0.0, version=2),
        _trajectory([4, 5, 6, 7], [10, 11], [1, 1], [-0.1, -0.2], reward=0.5, version=3),
    ]


def test_collate_pads_prompt_plus_response_right_and_aligns_response_tensors():
    batch = collate(_trajectories(), pad_token_id=PAD, advantages=[1.0, -1.0, 0.0])
    assert batch.input_ids_BS.tolist() == [[5, 6, 7, 8, 9, 0], [5, 7, 0, 0, 0, 0], [4, 5, 6, 7, 10, 11]]
    assert batch.attention_mask_BS.tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0], [1] * 6]
    assert batch.response_start_B.tolist() == [2, 1, 4]
    assert batch.response_ids_BT.tolist() == [[7, 8, 9], [7, 0, 0], [10, 11, 0]]
    assert batch.loss_mask_BT.tolist() == [[1, 0, 1], [1, 0, 0], [1, 1, 0]]
    torch.testing.assert_close(
        batch.behaviour_logprobs_BT, torch.tensor([[-0.5, 0, -1.5], [-2, 0, 0], [-0.1, -0.2, 0]])
    )
    assert batch.advantages_B.tolist() == [1.0, -1.0, 0.0]
    assert batch.rewards_B.tolist() == [1.0, 0.0, 0.5]
    assert batch.policy_versions_B.tolist() == [3, 2, 3]
    assert batch.num_loss_tokens == 5


def test_collate_rejects_inconsistent_trajectories_naming_them():
    broken = _trajectory([5], [7, 8], [1], [-1.0], group="grp-7")
    with pytest.raises(ValueError, match=r"trajectory 0 \(group 'grp-7'\).*lengths \(2, 1, 1\)"):
        collate([broken], pad_token_id=PAD)
    with pytest.raises(ValueError, match="empty prompt_ids"):
        collate([_trajectory([], [7], [1], [-1.0])], pad_token_id=PAD)


def test_sequence_logprobs_match_an_unpadded_forward_of_each_row(tiny_model):
    trajectories = _trajectories()
    with torch.no_grad():
        logprobs_BT = sequence_logprobs(tiny_model, collate(trajectories, pad_token_id=PAD))
        for row, trajectory in enumerate(trajectories):
            tokens = torch.tensor([trajectory.prompt_ids + trajectory.response_ids])
            all_logprobs = torch.log_softmax(tiny_model(input_ids=tokens).logits[0], dim=-1)
            start = len(trajectory.prompt_ids)
            expected = [all_logprobs[start + t - 1, token] for t, token in enumerate(trajectory.response_ids)]
            torch.testing.assert_close(
                logprobs_BT[row, : len(expected)], torch.stack(expected), atol=1e-5, rtol=0
            )


def test_temperature_divides_the_logits(tiny_model):
    batch = collate(_trajectories()[:1], pad_token_id=PAD)
    with torch.no_grad():
        tempered_BT, entropy_BT = response_logprobs_and_entropy(
            tiny_model, batch, temperature=2.0, compute_entropy=True
        )
        logits = tiny_model(input_ids=batch.input_ids_BS).logits[0, 1:4] / 2.0
    expected = torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor([[7], [8], [9]])).squeeze(-1)
    torch.testing.assert_close(tempered_BT[0], expected, atol=1e-5, rtol=0)
    assert entropy_BT.shape == (1, 3) and bool((entropy_BT > 0).all())


def test_micro_batches_are_trimmed_and_give_the_same_logprobs(tiny_model):
    batch = collate(_trajectories(), pad_token_id=PAD)
    micro_batches = split_micro_batches(batch, 2)
    assert [mb.batch_size for mb in micro_batches] == [2, 1]
    assert micro_batches[0].input_ids_BS.shape == (2, 5)  # longest selected row is 2 + 3 tokens
    assert micro_batches[1].response_ids_BT.shape == (1, 2)
    with torch.no_grad():
        whole_BT = sequence_logprobs(tiny_model, batch)
        parts = [sequence_logprobs(tiny_model, mb) for mb in micro_batches]
    torch.testing.assert_close(parts[0][0], whole_BT[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(parts[0][1, :1], whole_BT[1, :1], atol=1e-5, rtol=0)
    torch.testing.assert_close(parts[1][0], whole_BT[2, :2], atol=1e-5, rtol=0)
    assert len(split_micro_batches(batch, 8)) == 3  # never an empty micro-batch
