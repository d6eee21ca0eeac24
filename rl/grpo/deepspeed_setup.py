"""DeepSpeed setup for the GRPO trainer: config checks, the DeepSpeed JSON config, the process group.

`build_deepspeed_config(config)` derives the DeepSpeed config from the experiment config (ZeRO stage,
precision, gradient clipping, accumulation, AdamW, warm-up) and merges `deepspeed.config_file` over
it (the file's keys win). `init_distributed(device)` joins the launcher's process group, or creates
a one-process group (gloo on CPU) when there is no launcher. `validate_trainer_config` refuses what
cannot run here, naming the key and the fix.

    init_distributed("cpu")
    ds_config = build_deepspeed_config(cfg)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=ds_config)

What it simplifies on purpose: one optimizer (AdamW) and one schedule (linear warm-up, then constant).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path
from typing import Any

import deepspeed
import torch

from rl.config import ConfigError, ExperimentConfig
from rl.grpo.core_algos import get_advantage_estimator


def validate_trainer_config(config: ExperimentConfig) -> None:
    """Checks that need to know what the trainer can run; raises ConfigError saying what to change."""
    section, device = config.deepspeed, config.experiment.device
    if section.precision == "fp16" and device == "cpu":
        raise ConfigError(
            "key 'deepspeed.precision': fp16 training needs a CUDA GPU (DeepSpeed's fp16 loss "
            "scaling is GPU-only); use 'fp32' or 'bf16' with experiment.device=cpu"
        )
    if section.offload_optimizer and section.zero_stage == 0:
        raise ConfigError(
            "key 'deepspeed.offload_optimizer': optimizer offload needs deepspeed.zero_stage >= 1"
        )
    if section.config_file and not Path(section.config_file).is_file():
        raise ConfigError(f"key 'deepspeed.config_file': '{section.config_file}' does not exist")
    try:
        get_advantage_estimator(config.grpo.advantage_estimator)
    except KeyError as error:
        raise ConfigError(f"key 'grpo.advantage_estimator': {error.args[0]}") from None


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = (
            _deep_merge(merged[key], value)
            if isinstance(value, dict) and isinstance(merged.get(key), dict)
            else value
        )
    return merged


def build_deepspeed_config(config: ExperimentConfig) -> dict[str, Any]:
    """The DeepSpeed JSON config derived from the experiment config; `deepspeed.config_file` keys win."""
    grpo, section = config.grpo, config.deepspeed
    optimizer_params: dict[str, Any] = {
        "lr": grpo.learning_rate,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
        "weight_decay": grpo.weight_decay,
    }
    if not section.offload_optimizer:
        optimizer_params["torch_adam"] = True  # torch.optim.AdamW: no DeepSpeed op to compile
    zero: dict[str, Any] = {"stage": section.zero_stage}
    if section.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": config.experiment.device == "cuda"}
    ds_config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": max(config.batch_size // grpo.minibatches_per_step, 1),
        "gradient_accumulation_steps": grpo.minibatches_per_step,
        "gradient_clipping": grpo.max_grad_norm,
        "zero_optimization": zero,
        "optimizer": {"type": "AdamW", "params": optimizer_params},
        "bf16": {"enabled": section.precision == "bf16"},
        "fp16": {"enabled": section.precision == "fp16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if grpo.warmup_steps > 0:
        ds_config["scheduler"] = {
            "type": "WarmupLR",
            "params": {
                "warmup_min_lr": 0.0,
                "warmup_max_lr": grpo.learning_rate,
                "warmup_num_steps": grpo.warmup_steps,
                "warmup_type": "linear",
            },
        }
    if section.config_file:
        try:
            from_file = json.loads(Path(section.config_file).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ConfigError(
                f"key 'deepspeed.config_file': cannot read '{section.config_file}': {error}"
            ) from None
        ds_config = _deep_merge(ds_config, from_file)
        offload = ds_config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
        if offload != "none" and "torch_adam" not in from_file.get("optimizer", {}).get("params", {}):
            ds_config["optimizer"]["params"].pop(
                "torch_adam", None
            )  # offloaded states need DeepSpeed's CPU Adam
    _check_runs_on_device(
        ds_config, config.experiment.device, section.config_file or "the derived DeepSpeed config"
    )
    return ds_config


def _check_runs_on_device(ds_config: dict[str, Any], device: str, where: str) -> None:
    if device == "cpu" and ds_config.get("fp16", {}).get("enabled", False):
        raise ConfigError(
            f"{where}: fp16 is enabled, but DeepSpeed supports fp16 only on GPUs "
            "('Type fp16 is not supported on your device'); use bf16 or fp32 on CPU"
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def init_distributed(device: str) -> None:
    """Join (or, alone, create) the process group: gloo on CPU, nccl on GPU; one process needs no launcher."""
    for key, default in (
        ("RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("LOCAL_RANK", "0"),
        ("MASTER_ADDR", "127.0.0.1"),
    ):
        os.environ.setdefault(key, default)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(_free_port())
    if os.environ["WORLD_SIZE"] == "1":
        # DeepSpeed JIT-compiles a shared-memory all-reduce op on CPU (~35 s the first time on a machine);
        # it only serves multi-process CPU jobs, so a single process opts out.
        with contextlib.suppress(Exception):
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="nccl" if device == "cuda" else "gloo", verbose=False)


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout probability to 0 (RL needs pi_old and pi_theta to be the same function)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


__all__ = ["build_deepspeed_config", "disable_dropout", "init_distributed", "validate_trainer_config"]
