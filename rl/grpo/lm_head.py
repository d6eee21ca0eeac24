"""A compact LM head: the vocabulary projection only at the positions a loss reads.

Agent trajectories are mostly prompt and tool observations; the tokens the policy wrote (the only ones
SFT and GRPO put a loss on) are about a fifth of them. Projecting every position to the vocabulary and
then masking most of the result is most of the step for a small model on CPU. `install_compact_lm_head`
wraps a causal LM's forward so that callers can ask for the projection at chosen positions only:

- `model(input_ids, attention_mask, logits_at_BS=mask_BS)` returns logits of shape (N, V) for the N
  positions where mask_BS is True, in row-major order (`rl.grpo.batch.response_logprobs_and_entropy` uses
  it for GRPO's log-probs, proximal log-probs and entropy).
- `model(..., labels=labels, fused_lm_head=True)` is TRL's fused-head protocol (`trl.trainer.utils.
  add_fused_lm_head`, called by SFTTrainer). On CUDA, TRL projects only the counted positions; elsewhere
  it projects every position in tiles folded by hand, which made the SFT warm-start run at 1.4 steps/s
  where the compact head runs at about 4.5 on the same batches (`fanout bench sft`). On CPU tensors this
  wrapper returns TRL's `FusedCausalLMOutput` with the same fields and conventions (shape (B, L-1), zero
  on ignored positions, loss = summed NLL / `num_items_in_batch` or the count); on CUDA it defers to TRL.

Every other call goes to the forward that was there before (HF's, or TRL's), so generation, `labels=`
losses and saving are unchanged. The previous forward is kept as a bound method on the model, so a
`copy.deepcopy` of the model (the trainer's frozen reference) gets a working head of its own.

What it simplifies on purpose: models whose logits are scaled or soft-capped, and MoE models (router
loss), are left alone (`install_compact_lm_head` returns False and callers use the full projection);
TRL's pre-shifted `shift_labels` (sequence parallelism) defers to TRL; temperature is the caller's job.

    install_compact_lm_head(model)
    logits_NV = model(input_ids=ids_BS, attention_mask=mask_BS, logits_at_BS=loss_positions_BS).logits
"""

from __future__ import annotations

import sys
import types
from typing import Any

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import CausalLMOutputWithPast

IGNORED_LABEL = -100
COMPACT_HEAD_FLAG = "has_compact_lm_head"
_SCALING_ATTRIBUTES = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                       "logits_scaling")


def causal_lm_of(model: Any) -> Any:
    """The transformers causal LM inside a DeepSpeed engine and/or a peft model."""
    model = getattr(model, "module", model)  # DeepSpeed engine
    peft = sys.modules.get("peft")  # a PeftModel exists only once peft is imported (no metadata lookup per call)
    return model.get_base_model() if peft is not None and isinstance(model, peft.PeftModel) else model


def supports_compact_head(model: Any) -> bool:
    """True for a causal LM whose logits are the plain output projection (no scaling, capping or MoE loss)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "get_output_embeddings") or model.get_output_embeddings() is None:
        return False
    text_config = config.get_text_config()
    scaled = any(getattr(text_config, name, None) not in (None, 1.0) for name in _SCALING_ATTRIBUTES)
    return not scaled and not getattr(text_config, "output_router_logits", False)


def has_compact_lm_head(model: Any) -> bool:
    return bool(getattr(causal_lm_of(model), COMPACT_HEAD_FLAG, False))


def install_compact_lm_head(model: Any) -> bool:
    """Wrap the causal LM's forward (see the module docstring); returns False if the model was left alone."""
    target = causal_lm_of(model)
    if getattr(target, COMPACT_HEAD_FLAG, False):
        return True
    if not supports_compact_head(target):
        return False
    target.forward_without_compact_head = target.forward
    target.forward = types.MethodType(_compact_forward, target)
    setattr(target, COMPACT_HEAD_FLAG, True)
    return True


def _compact_forward(self, *args, logits_at_BS=None, fused_lm_head=False, labels=None, num_items_in_batch=None,
                     **kwargs):
    if logits_at_BS is not None:
        kwargs["use_cache"] = False
        hidden_BSD = self.base_model(*args, **kwargs).last_hidden_state
        logits_NV = self.get_output_embeddings()(hidden_BSD[logits_at_BS.to(hidden_BSD.device)])
        return CausalLMOutputWithPast(logits=logits_NV)
    if fused_lm_head and labels is not None and not labels.is_cuda and "shift_labels" not in kwargs:
        kwargs["use_cache"] = False
        hidden_BLD = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        next_labels_BL = labels[:, 1:].to(hidden_BLD.device)
        return compact_head_outputs(hidden_BLD, next_labels_BL, self.get_output_embeddings(), num_items_in_batch)
    passed = {"labels": labels, "num_items_in_batch": num_items_in_batch}
    if fused_lm_head:
        passed["fused_lm_head"] = True
    return self.forward_without_compact_head(*args, **{key: value for key, value in passed.items()
                                                       if value is not None}, **kwargs)


def compact_head_outputs(hidden_BLD: torch.Tensor, next_labels_BL: torch.Tensor, lm_head: torch.nn.Module,
                         num_items_in_batch: Any = None) -> Any:
    """TRL's FusedCausalLMOutput for hidden states (B, L, D) and next-token labels (B, L), -100 ignored."""
    from trl.trainer.utils import FusedCausalLMOutput

    mask_BL = next_labels_BL != IGNORED_LABEL
    logits_NV = lm_head(hidden_BLD[mask_BL]).float()  # N counted positions
    logprobs_NV = F.log_softmax(logits_NV, dim=-1)
    targets_N = next_labels_BL[mask_BL]
    token_logprobs_N = logprobs_NV.gather(-1, targets_N.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        entropy_N = -(logprobs_NV.exp() * logprobs_NV).sum(-1)
        is_top1_N = logits_NV.argmax(-1) == targets_N

    def scatter(values_N: torch.Tensor) -> torch.Tensor:
        # masked_scatter keeps an all-ignored batch connected to the graph (a differentiable zero)
        return values_N.new_zeros(mask_BL.shape).masked_scatter(mask_BL, values_N)

    log_probs_BL = scatter(token_logprobs_N)
    normaliser = mask_BL.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    return FusedCausalLMOutput(loss=-log_probs_BL.sum() / normaliser, log_probs=log_probs_BL,
                               entropy=scatter(entropy_N), log_sum_sq_probs=None, mean_logits=None,
                               is_top1=scatter(is_top1_N), label_mask=mask_BL, aux_loss=None)


__all__ = ["causal_lm_of", "compact_head_outputs", "has_compact_lm_head", "install_compact_lm_head",
           "supports_compact_head"]
