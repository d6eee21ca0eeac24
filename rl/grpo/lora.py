"""LoRA adapters for the GRPO trainer (peft): wrap, export the adapter, export merged full weights.

Only the adapter matrices are trainable; the frozen base doubles as the KL reference model (peft's
`disable_adapter()`), so a LoRA run with a KL term holds one copy of the base weights.

Two exports for weight sync to rollout engines:
  * `adapter_state_dict(model)`: the LoRA matrices only (small; for engines that load adapters,
    e.g. vLLM's LoRA support), with `adapter_config_dict(model)` describing them;
  * `merged_state_dict(model)`: W + (alpha / r) * B @ A for every adapted layer, under the base model's
    own parameter names, computed out of place so the training weights are never touched.

What it simplifies on purpose: one adapter named "default"; plain LoRA (no DoRA, no rank patterns).
"""

from __future__ import annotations

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model, get_peft_model_state_dict
from peft.tuners.lora import LoraLayer

from rl.config import LoraConfig

ADAPTER_NAME = "default"


def apply_lora(model: torch.nn.Module, lora: LoraConfig) -> PeftModel:
    """Wrap `model` with LoRA adapters on `lora.target_modules`; everything else is frozen."""
    peft_config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, peft_config)
    except ValueError as error:  # peft's message when no module matches target_modules
        raise ValueError(
            f"model.lora.target_modules {list(lora.target_modules)} match no layer of the model ({error}); "
            "use names of its linear layers, e.g. q_proj, k_proj, v_proj, o_proj"
        ) from None


def is_lora_model(model: torch.nn.Module) -> bool:
    return isinstance(model, PeftModel)


def adapter_state_dict(model: PeftModel) -> dict[str, torch.Tensor]:
    """The trainable LoRA matrices (peft's adapter naming), as CPU copies."""
    return {
        name: tensor.detach().to("cpu", copy=True)
        for name, tensor in get_peft_model_state_dict(model).items()
    }


def adapter_config_dict(model: PeftModel) -> dict:
    """The adapter's peft config as a plain dict (what a rollout engine needs to apply the adapter)."""
    return model.peft_config[ADAPTER_NAME].to_dict()


def merged_state_dict(model: PeftModel) -> dict[str, torch.Tensor]:
    """Full weights with the adapters merged in, named like the base model's own state_dict, on CPU."""
    base_model = model.get_base_model()
    merged: dict[str, torch.Tensor] = {}
    for name, tensor in base_model.state_dict().items():
        if ".lora_" in name:
            continue
        merged[name.replace(".base_layer.", ".")] = tensor.detach().to("cpu", copy=True)
    with torch.no_grad():
        for module_name, module in base_model.named_modules():
            if isinstance(module, LoraLayer) and ADAPTER_NAME in module.lora_A:
                base_weight = module.get_base_layer().weight
                delta = module.get_delta_weight(ADAPTER_NAME).to(base_weight.dtype)
                merged[f"{module_name}.weight"] = (base_weight + delta).detach().to("cpu", copy=True)
    return merged


__all__ = ["apply_lora", "is_lora_model", "adapter_state_dict", "adapter_config_dict", "merged_state_dict"]
