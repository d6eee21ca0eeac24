"""From trajectories to padded training tensors, and per-token log-probs of the response in one forward.

`collate` turns a list of `Trajectory` (python lists, as they cross Ray) into a `TrainBatch` of tensors:
the model input is prompt + response, right-padded; every per-token training quantity (loss mask,
behaviour log-probs, the log-probs the trainer computes) lives in *response-aligned* tensors that
hold the response part only, so the loss math never sees prompt positions.

Shape letters: B = sequences, S = prompt + response length (model input), T = response length.

    batch = collate(trajectories, pad_token_id=tokenizer.pad_token_id, advantages=advantages_B)
    for micro_batch in split_micro_batches(batch, 4):
        logprobs_BT = sequence_logprobs(model, micro_batch)

What it simplifies on purpose: no sequence packing (rows are padded to the longest one of each
micro-batch, which `split_micro_batches` trims), and no sequence parallelism.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Sequence

import torch

from rl.grpo.core_algos import entropy_from_logits
from rl.grpo.lm_head import has_compact_lm_head
from data.trajectory import Group, Trajectory


@dataclass
class TrainBatch:
    """Padded tensors of one training batch; row b is trajectory b."""

    input_ids_BS: torch.Tensor  # prompt + response token ids, right-padded with pad_token_id
    attention_mask_BS: torch.Tensor  # 1 on real tokens
    response_start_B: torch.Tensor  # index in input_ids_BS of the first response token (= prompt length)
    response_lengths_B: torch.Tensor  # real response tokens per row
    response_ids_BT: torch.Tensor  # response token ids, right-padded
    loss_mask_BT: torch.Tensor  # 1 on tokens the policy generated, 0 on observations and padding
    behaviour_logprobs_BT: torch.Tensor  # log-probs of the sampling (rollout) policy, 0 where masked
    advantages_B: torch.Tensor  # one advantage per sequence
    rewards_B: torch.Tensor  # scalar reward per sequence
    policy_versions_B: torch.Tensor  # version of the weights that generated each row
    proximal_logprobs_BT: torch.Tensor | None = None  # filled by the trainer at the start of a step
    reference_logprobs_BT: torch.Tensor | None = None  # filled by the trainer when a KL term is used
    # A stand-in: rows another rank trains, run here with a loss counted zero so that this rank takes part
    # in as many forward/backward passes (and DeepSpeed collectives) as the others (rl/grpo/trainer.py).
    stand_in: bool = False

    @property
    def batch_size(self) -> int:
        return int(self.input_ids_BS.shape[0])

    @property
    def num_loss_tokens(self) -> int:
        return int(self.loss_mask_BT.sum())

    @property
    def num_sequences_with_loss_tokens(self) -> int:
        return int((self.loss_mask_BT.sum(dim=-1) > 0).sum())

    def to(self, device: torch.device | str) -> "TrainBatch":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(
            self,
            **{name: value.to(device) for name, value in moved.items() if isinstance(value, torch.Tensor)},
        )

    def select(self, rows: torch.Tensor | slice) -> "TrainBatch":
        """The rows `rows` of every tensor, with padding trimmed to the longest selected row."""
        selected = {
            f.name: (value[rows] if isinstance(value, torch.Tensor) else value)
            for f in fields(self)
            for value in [getattr(self, f.name)]
        }
        sub_batch = TrainBatch(**selected)
        return sub_batch._trimmed()

    def _trimmed(self) -> "TrainBatch":
        if self.batch_size == 0:
            return self
        sequence_length = int((self.response_start_B + self.response_lengths_B).max())
        response_length = max(int(self.response_lengths_B.max()), 1)
        trimmed = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor) and f.name.endswith("_BS"):
                value = value[:, :sequence_length]
            elif isinstance(value, torch.Tensor) and f.name.endswith("_BT"):
                value = value[:, :response_length]
            trimmed[f.name] = value
        return replace(self, **trimmed)


def group_rewards(group: Group) -> torch.Tensor:
    """rewards_G: the scalar rewards of one group's trajectories, in their order (float32)."""
    return torch.tensor([float(trajectory.reward) for trajectory in group.trajectories], dtype=torch.float32)


def collate(
    trajectories: Sequence[Trajectory],
    pad_token_id: int,
    advantages: Sequence[float] | torch.Tensor | None = None,
) -> TrainBatch:
    """Pad trajectories into a TrainBatch (advantages default to 0 until an estimator fills them)."""
    if not trajectories:
        raise ValueError("collate() got no trajectories; a training batch needs at least one")
    for index, trajectory in enumerate(trajectories):
        _check_trajectory(trajectory, index)
    prompt_lengths = [len(t.prompt_ids) for t in trajectories]
    response_lengths = [len(t.response_ids) for t in trajectories]
    sequence_length = max(p + r for p, r in zip(prompt_lengths, response_lengths))
    response_length = max(max(response_lengths), 1)
    batch_size = len(trajectories)

    input_ids_BS = torch.full((batch_size, sequence_length), pad_token_id, dtype=torch.long)
    attention_mask_BS = torch.zeros((batch_size, sequence_length), dtype=torch.long)
    response_ids_BT = torch.full((batch_size, response_length), pad_token_id, dtype=torch.long)
    loss_mask_BT = torch.zeros((batch_size, response_length), dtype=torch.float32)
    behaviour_logprobs_BT = torch.zeros((batch_size, response_length), dtype=torch.float32)
    for row, trajectory in enumerate(trajectories):
        tokens = list(trajectory.prompt_ids) + list(trajectory.response_ids)
        input_ids_BS[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        attention_mask_BS[row, : len(tokens)] = 1
        length = response_lengths[row]
        if length:
            response_ids_BT[row, :length] = torch.tensor(trajectory.response_ids, dtype=torch.long)
            loss_mask_BT[row, :length] = torch.tensor(trajectory.loss_mask, dtype=torch.float32)
            behaviour_logprobs_BT[row, :length] = torch.tensor(
                trajectory.behaviour_logprobs, dtype=torch.float32
            )

    if advantages is None:
        advantages_B = torch.zeros(batch_size, dtype=torch.float32)
    else:
        advantages_B = torch.as_tensor(advantages, dtype=torch.float32).reshape(batch_size)
    return TrainBatch(
        input_ids_BS=input_ids_BS,
        attention_mask_BS=attention_mask_BS,
        response_start_B=torch.tensor(prompt_lengths, dtype=torch.long),
        response_lengths_B=torch.tensor(response_lengths, dtype=torch.long),
        response_ids_BT=response_ids_BT,
        loss_mask_BT=loss_mask_BT,
        behaviour_logprobs_BT=behaviour_logprobs_BT,
        advantages_B=advantages_B,
        rewards_B=torch.tensor([float(t.reward) for t in trajectories], dtype=torch.float32),
        policy_versions_B=torch.tensor([int(t.policy_version) for t in trajectories], dtype=torch.long),
    )


def _check_trajectory(trajectory: Trajectory, index: int) -> None:
    where = f"trajectory {index} (group {trajectory.group_id!r})"
    if not trajectory.prompt_ids:
        raise ValueError(
            f"{where}: empty prompt_ids; the first response token needs a prompt to be predicted from"
        )
    lengths = (len(trajectory.response_ids), len(trajectory.loss_mask), len(trajectory.behaviour_logprobs))
    if len(set(lengths)) != 1:
        raise ValueError(
            f"{where}: response_ids, loss_mask and behaviour_logprobs have lengths {lengths}; "
            "they must be equal "
            "(build responses with Trajectory.append)"
        )


def split_micro_batches(batch: TrainBatch, num_micro_batches: int) -> list[TrainBatch]:
    """Contiguous, nearly equal row chunks (at most `num_micro_batches`, none empty), trimmed of padding."""
    if num_micro_batches < 1:
        raise ValueError(f"num_micro_batches must be >= 1, got {num_micro_batches}")
    chunks = torch.arange(batch.batch_size).tensor_split(min(num_micro_batches, batch.batch_size))
    return [batch.select(rows) for rows in chunks if len(rows)]


def response_logprobs_and_entropy(
    model: torch.nn.Module,
    batch: TrainBatch,
    temperature: float = 1.0,
    compute_entropy: bool = False,
    entropy_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and optionally entropies) of the response tokens under `model`, one forward pass.

    The token at input position p is predicted by the logits at p - 1, so response token t of row b
    (input position start_b + t) reads the logits at start_b + t - 1. Only the positions from the
    shortest prompt on are projected to the vocabulary (`logits_to_keep`), and log-probs are
    computed as logit - logsumexp without materialising the full log-softmax. Logits are divided by
    the sampling temperature so the log-probs match the distribution the rollout sampled from.
    A model with rl/grpo/lm_head.py's compact head projects only the loss-mask positions instead (see
    `loss_token_logprobs_and_entropy`; log-probs and entropy are then 0 where the loss mask is 0).
    entropy_grad=False computes the entropy as a metric only: outside autograd, so the backward pass
    neither keeps nor walks through its softmax.
    """
    if has_compact_lm_head(model):
        return loss_token_logprobs_and_entropy(model, batch, temperature, compute_entropy, entropy_grad)
    sequence_length = batch.input_ids_BS.shape[1]
    response_length = batch.response_ids_BT.shape[1]
    first_logit_position = int(batch.response_start_B.min()) - 1
    kept_positions = sequence_length - first_logit_position
    outputs = model(
        input_ids=batch.input_ids_BS,
        attention_mask=batch.attention_mask_BS,
        logits_to_keep=kept_positions,
        use_cache=False,
    )
    logits_BKV = outputs.logits  # positions [first_logit_position, sequence_length)
    offsets_T = torch.arange(response_length, device=logits_BKV.device)
    index_BT = (batch.response_start_B.to(logits_BKV.device)[:, None] - 1 - first_logit_position) + offsets_T[
        None, :
    ]
    index_BT = index_BT.clamp(max=logits_BKV.shape[1] - 1)
    vocabulary_size = logits_BKV.shape[-1]
    logits_BTV = logits_BKV.gather(1, index_BT.unsqueeze(-1).expand(-1, -1, vocabulary_size)).float()
    if temperature != 1.0:
        logits_BTV = logits_BTV / temperature
    token_logits_BT = logits_BTV.gather(
        -1, batch.response_ids_BT.to(logits_BTV.device).unsqueeze(-1)
    ).squeeze(-1)
    logsumexp_BT = torch.logsumexp(logits_BTV, dim=-1)
    logprobs_BT = token_logits_BT - logsumexp_BT
    entropy_BT = _entropy(logits_BTV, logsumexp_BT, entropy_grad) if compute_entropy else None
    return logprobs_BT, entropy_BT


def _entropy(logits_XV: torch.Tensor, logsumexp_X: torch.Tensor, with_grad: bool) -> torch.Tensor:
    if with_grad:
        return entropy_from_logits(logits_XV, logsumexp_X)
    with torch.no_grad():
        return entropy_from_logits(logits_XV.detach(), logsumexp_X.detach())


def loss_token_logprobs_and_entropy(
    model: torch.nn.Module,
    batch: TrainBatch,
    temperature: float = 1.0,
    compute_entropy: bool = False,
    entropy_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """As response_logprobs_and_entropy, projecting only the positions that predict a loss-mask token.

    Needs a model with a compact head (rl.grpo.lm_head.install_compact_lm_head). Response token t of row b
    is predicted at input position start_b + t - 1; those positions, for the tokens with loss mask 1,
    are the only ones sent through the LM head (row-major order, the same order as the loss mask's).
    Log-probs and entropies of tokens with loss mask 0 are 0: every GRPO quantity is masked anyway.
    """
    loss_mask_BT = batch.loss_mask_BT.bool()
    rows_N, columns_N = loss_mask_BT.nonzero(as_tuple=True)
    logits_at_BS = torch.zeros_like(batch.input_ids_BS, dtype=torch.bool)
    logits_at_BS[rows_N, batch.response_start_B[rows_N] + columns_N - 1] = True
    logits_NV = model(
        input_ids=batch.input_ids_BS, attention_mask=batch.attention_mask_BS, logits_at_BS=logits_at_BS,
        use_cache=False,
    ).logits.float()
    if temperature != 1.0:
        logits_NV = logits_NV / temperature
    targets_N = batch.response_ids_BT[loss_mask_BT].to(logits_NV.device)
    logsumexp_N = torch.logsumexp(logits_NV, dim=-1)
    token_logprobs_N = logits_NV.gather(-1, targets_N.unsqueeze(-1)).squeeze(-1) - logsumexp_N
    mask_BT = loss_mask_BT.to(logits_NV.device)
    logprobs_BT = token_logprobs_N.new_zeros(mask_BT.shape).masked_scatter(mask_BT, token_logprobs_N)
    entropy_BT = None
    if compute_entropy:
        entropy_N = _entropy(logits_NV, logsumexp_N, entropy_grad)
        entropy_BT = entropy_N.new_zeros(mask_BT.shape).masked_scatter(mask_BT, entropy_N)
    return logprobs_BT, entropy_BT


def sequence_logprobs(model: torch.nn.Module, batch: TrainBatch, temperature: float = 1.0) -> torch.Tensor:
    """Per-token log-probs of the response tokens, shape (B, T); see response_logprobs_and_entropy."""
    logprobs_BT, _ = response_logprobs_and_entropy(model, batch, temperature, compute_entropy=False)
    return logprobs_BT


__all__ = [
    "TrainBatch",
    "collate",
    "group_rewards",
    "loss_token_logprobs_and_entropy",
    "response_logprobs_and_entropy",
    "sequence_logprobs",
    "split_micro_batches",
]
