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
import math
import os
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import deepspeed
import torch

from rl.config import ConfigError, ExperimentConfig
from rl.grpo.core_algos import get_advantage_estimator
from rl.grpo.distributed import is_initialized, world_size


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


def micro_batches_per_rank(config: ExperimentConfig, num_ranks: int) -> int:
    """Gradient-accumulation micro-batches on each of `num_ranks` ranks: `grpo.minibatches_per_step` shared
    out, so that N ranks together run as many micro-batches of the same size as one rank alone (at least one
    each). The global batch is always `rollout.questions_per_step` groups, whatever the number of ranks."""
    return max(1, math.ceil(config.grpo.minibatches_per_step / num_ranks))


def build_deepspeed_config(config: ExperimentConfig, num_ranks: int | None = None) -> dict[str, Any]:
    """The DeepSpeed JSON config derived from the experiment config; `deepspeed.config_file` keys win.

    `num_ranks` (default: the current world size) sets the per-rank micro-batch and accumulation so that
    micro-batch x accumulation x ranks is the global batch, `rollout.questions_per_step * group_size`.
    """
    grpo, section = config.grpo, config.deepspeed
    num_ranks = world_size() if num_ranks is None else num_ranks
    accumulation = micro_batches_per_rank(config, num_ranks)
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
        "train_micro_batch_size_per_gpu": max(1, math.ceil(config.batch_size / (accumulation * num_ranks))),
        "gradient_accumulation_steps": accumulation,
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


# How long a rank waits for the others in a collective: the other ranks wait for rank 0's SFT warm-start
# (minutes on CPU) and for each batch of rollouts; DeepSpeed's default is 10 minutes.
DEFAULT_TIMEOUT_MINUTES = 60


def process_group_timeout() -> timedelta:
    """DEEPSPEED_TIMEOUT (minutes) when set, else DEFAULT_TIMEOUT_MINUTES."""
    return timedelta(minutes=int(os.environ.get("DEEPSPEED_TIMEOUT", DEFAULT_TIMEOUT_MINUTES)))


def init_distributed(device: str) -> None:
    """Join the launcher's process group (torchrun or `deepspeed` set RANK, WORLD_SIZE, MASTER_ADDR/PORT) or,
    alone, create a one-process one: gloo on CPU, nccl on GPU. Calling it again is a no-op."""
    if is_initialized():
        return
    for key, default in (
        ("RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("LOCAL_RANK", "0"),
        ("MASTER_ADDR", "127.0.0.1"),
    ):
        os.environ.setdefault(key, default)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(_free_port())
    if device == "cpu" or os.environ["WORLD_SIZE"] == "1":
        # DeepSpeed JIT-compiles a shared-memory all-reduce op on CPU (35 s to 3 min the first time on a
        # machine) that replaces gloo's all-reduce in multi-process CPU jobs; its kernels need AVX2/AVX-512 and
        # a fault there hangs the peers. gloo does every collective instead: slower, but nothing to build.
        with contextlib.suppress(Exception):
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="nccl" if device == "cuda" else "gloo", verbose=False,
                               timeout=process_group_timeout())


def leave_distributed() -> None:
    """Leave the process group when this process is done (a no-op without one). A rank that exits with its gloo
    group alive can abort in the group's teardown while its peers still run (rank 0's final eval)."""
    if is_initialized():
        torch.distributed.destroy_process_group()


def held_bytes(engine: Any) -> dict[str, int]:
    """Bytes this rank holds of the parameters and of the optimizer (Adam moments + fp32 master copies).

    Under ZeRO-3 a parameter's local storage is its partition (`ds_tensor`); ZeRO-1/2/3 keep the optimizer
    state and master weights of this rank's partition only. Counted from the tensors, not process memory.
    """
    parameter_bytes, parameter_storage = 0, set()
    for parameter in engine.module.parameters():
        local = getattr(parameter, "ds_tensor", parameter)
        parameter_bytes += local.numel() * local.element_size()
        parameter_storage.add(local.data_ptr())
    optimizer = engine.optimizer
    while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer  # DeepSpeed's ZeRO wrappers hold the torch optimizer
    tensors = [tensor for state in optimizer.state.values() for tensor in state.values()
               if isinstance(tensor, torch.Tensor)]
    # master weights: what the optimizer updates, when it is not the module's own storage (ZeRO's fp32 partitions)
    tensors += [parameter for group in optimizer.param_groups for parameter in group["params"]
                if parameter.data_ptr() not in parameter_storage]
    unique = {id(tensor): tensor for tensor in tensors}.values()
    return {"parameter_bytes": parameter_bytes,
            "optimizer_bytes": sum(tensor.numel() * tensor.element_size() for tensor in unique)}


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout probability to 0 (RL needs pi_old and pi_theta to be the same function)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


__all__ = ["build_deepspeed_config", "disable_dropout", "held_bytes", "init_distributed", "leave_distributed",
           "micro_batches_per_rank", "validate_trainer_config"]
