"""The GRPO trainer: advantages, decoupled clipped loss and a DeepSpeed optimizer step per batch.

`GRPOTrainer` owns the policy inside a DeepSpeed engine (ZeRO stage, precision, gradient clipping,
AdamW and the LR schedule come from the config) and turns the scored groups the rollout manager
returns (`data.trajectory.Group`) into one new policy version:

    trainer = GRPOTrainer(config, model_path="runs/x/sft")
    metrics = trainer.step(groups)                  # trainer.version += 1 when the weights changed
    weights = trainer.state_dict_for_rollout()      # push to rollout workers
    trainer.save_checkpoint(config.run_dir / "checkpoints", extra_state={"data_cursor": 123})

The trainer owns the policy version (`async/policy_version`); how stale the batch was is measured
by the rollout manager, which sees each group's version when it admits it.

One `step`:
 1. advantages per group with the registered estimator (rl/grpo/core_algos.py), in batch order; with
    `grpo.drop_zero_advantage_groups`, groups whose rewards are all equal are dropped first;
 2. the *proximal* log-probs: one no-grad forward with the weights at the start of the step;
 3. `grpo.epochs_per_batch` optimizer steps, each accumulating gradients over
    `grpo.minibatches_per_step` micro-batches: forward, decoupled policy loss (+ k3 KL to a frozen
    reference when kl_coef > 0, - entropy bonus), engine.backward, and one engine.step.
Micro-batch losses are normalised by the token/sequence counts of the whole batch, so gradient
accumulation gives the gradient of the batch loss exactly. A non-finite reward, log-prob or loss
skips the step (nothing is applied; `loss/skipped_nonfinite` counts it).

On one CPU process no launcher is needed: the distributed environment (RANK, WORLD_SIZE, a free
MASTER_PORT, ...) is set when absent and DeepSpeed runs on gloo. Under `torchrun --nproc_per_node=N`
or the `deepspeed` launcher the trainer is data-parallel (gloo on CPU, NCCL on GPU): every rank calls
`step` with the same global batch and trains on its share of whole groups (rl/grpo/distributed.py),
losses normalised by the global batch's counts and scaled by N against DeepSpeed's averaging over
ranks, so N ranks make the same update as one (tests/rl/grpo/test_data_parallel.py). Each rank runs
`micro_batches_per_rank` micro-batches (padded with zero-loss stand-ins when its share is short, since
DeepSpeed's collectives need every rank in every forward and backward); ZeRO-1/2 partition the
optimizer state (and gradients) and ZeRO-3 the parameters too. `step` returns the whole batch's
metrics on every rank; `export_weights` and the checkpoint calls are collective. The default
optimizer is torch's AdamW, so no DeepSpeed op is compiled (`deepspeed.offload_optimizer=true`
switches to DeepSpeed's CPU Adam, whose op build takes minutes).

Non-finite steps: a NaN/inf reward or log-prob is caught before any backward. A NaN/inf loss met
during accumulation is back-propagated (poisoning the gradients) and the optimizer step refused:
ZeRO >= 1 optimizers detect and clear non-finite gradients themselves; at ZeRO 0 the trainer drops
them. ZeRO stages 0-3 and bf16 run on CPU; fp16 does not (refused by validation).

What it simplifies on purpose: dropout is disabled in the policy (as in TRL/verl RL training), so
the first epoch's ratio is exactly 1; checkpoints resume at the world size that wrote them (DeepSpeed's
shards are per rank); rows are shared out by whole groups, not balanced by tokens; no sequence
packing. Every state file is loaded with weights_only=True, DeepSpeed's engine files included
(its own loader would unpickle anything; `rl.grpo.checkpoint.restrict_deepspeed_loads`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import deepspeed
import torch

from rl.grpo.batch import (
    TrainBatch,
    collate,
    group_rewards,
    response_logprobs_and_entropy,
    sequence_logprobs,
    split_micro_batches,
)
from rl.grpo.checkpoint import (
    atomic_checkpoint,
    capture_rng_state,
    checkpoint_name,
    load_trainer_state,
    resolve_checkpoint,
    restore_rng_state,
    restrict_deepspeed_loads,
    save_trainer_state,
)
from rl.config import ConfigError, ExperimentConfig
from rl.grpo.core_algos import (
    advantages_in_batch_order,
    aggregate_loss,
    get_advantage_estimator,
    groups_with_varied_rewards,
    is_finite_loss,
    kl_k3,
    policy_loss,
)
from rl.grpo.deepspeed_setup import (
    build_deepspeed_config,
    disable_dropout,
    held_bytes,
    init_distributed,
    micro_batches_per_rank,
    validate_trainer_config,
)
from rl.grpo.distributed import (
    all_ranks_true,
    gather_to_all,
    group_shares,
    is_main_process,
    merge_rank_metrics,
    rank,
    rows_of_groups,
    world_size,
)
from rl.grpo.lm_head import install_compact_lm_head
from rl.grpo.lora import adapter_config_dict, adapter_state_dict, apply_lora, is_lora_model, merged_state_dict
from data.trajectory import Group
from rollouts.model_loading import load_model

logger = logging.getLogger(__name__)

DEEPSPEED_CHECKPOINT_TAG = "state"


class GRPOTrainer:
    """Policy + optimizer in a DeepSpeed engine; `step(groups)` makes the next policy version."""

    def __init__(
        self,
        config: ExperimentConfig,
        model: torch.nn.Module | None = None,
        model_path: str | os.PathLike | None = None,
        tokenizer: Any = None,
    ) -> None:
        validate_trainer_config(config)
        self.config = config
        self.tokenizer = tokenizer
        self.version = 0
        self.skipped_steps = 0
        init_distributed(config.experiment.device)
        self.rank, self.world_size = rank(), world_size()
        self.micro_batches_per_rank = micro_batches_per_rank(config, self.world_size)
        if self.world_size > 1 and config.rollout.questions_per_step < self.world_size:
            logger.warning(
                "rollout.questions_per_step (%d) is smaller than the number of ranks (%d): some ranks have no "
                "group to train on and only keep step with the others", config.rollout.questions_per_step,
                self.world_size)
        # DeepSpeed prints its whole config at INFO for every engine; keep warnings and errors.
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        model = self._load_model(model, model_path)
        install_compact_lm_head(model)  # log-probs projected at loss-mask positions only (rl/grpo/lm_head.py)
        if self.tokenizer is None:
            self.tokenizer = self._tokenizer_next_to_model(model_path or config.model.path)
        self.pad_token_id = self._pad_token_id(model, self.tokenizer)
        disable_dropout(model)
        if config.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.reference_model = None
        if config.grpo.kl_coef > 0 and not config.model.lora.enabled:
            self.reference_model = copy.deepcopy(model).eval().requires_grad_(False)
        if config.model.lora.enabled:
            if config.model.lora.dropout > 0:
                logger.warning(
                    "model.lora.dropout=%s is not applied: dropout is disabled during RL so that the "
                    "first epoch's importance ratio is exactly 1",
                    config.model.lora.dropout,
                )
            if config.model.gradient_checkpointing:
                model.enable_input_require_grads()
            model = apply_lora(model, config.model.lora)
            disable_dropout(model)
        self.deepspeed_config = build_deepspeed_config(config, self.world_size)
        trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, model_parameters=trainable, config=self.deepspeed_config
        )
        self.engine.train()
        restrict_deepspeed_loads(self.engine)  # resuming never unpickles code from a checkpoint file
        if self.reference_model is not None:
            self.reference_model.to(self.engine.device)
        self.advantage_estimator = get_advantage_estimator(config.grpo.advantage_estimator)
        self.zero_stage = int(self.deepspeed_config["zero_optimization"]["stage"])

    # ------------------------------------------------------------------ construction helpers

    def _load_model(
        self, model: torch.nn.Module | None, model_path: str | os.PathLike | None
    ) -> torch.nn.Module:
        if model is not None:
            return model
        path = model_path or self.config.model.path
        if not path:
            raise ConfigError(
                "GRPOTrainer needs a model: pass model=..., model_path=..., or set model.path "
                "(rl.app.modeling.create_tiny_checkpoint writes the tiny default)"
            )
        return load_model(path, dtype=self.config.model.dtype)

    @staticmethod
    def _tokenizer_next_to_model(path: str | os.PathLike | None) -> Any:
        """The tokenizer saved beside a model folder (so checkpoints carry it), or None."""
        if not path or not (Path(path) / "tokenizer_config.json").is_file():
            return None
        from rollouts.model_loading import load_tokenizer

        return load_tokenizer(path)

    @staticmethod
    def _pad_token_id(model: torch.nn.Module, tokenizer: Any) -> int:
        for candidate in (
            getattr(tokenizer, "pad_token_id", None),
            getattr(model.config, "pad_token_id", None),
            getattr(model.config, "eos_token_id", None),
        ):
            if isinstance(candidate, int):
                return candidate
        return 0  # padding positions are masked out everywhere; any valid id works

    @property
    def module(self) -> torch.nn.Module:
        """The trained model (a peft model with LoRA), unwrapped from the engine."""
        return self.engine.module

    def held_bytes(self) -> dict[str, int]:
        """Bytes of parameters and of optimizer state this rank holds (ZeRO partitions shrink them)."""
        return held_bytes(self.engine)

    @property
    def lora_enabled(self) -> bool:
        return is_lora_model(self.engine.module)

    @property
    def sampling_temperature(self) -> float:
        temperature = self.config.rollout.temperature
        return temperature if temperature > 0 else 1.0

    # ------------------------------------------------------------------ one training step

    def step(self, groups: Sequence[Group]) -> dict[str, float]:
        """Train on one batch of scored groups (as the rollout manager returns them); returns metrics.

        The version moves by one when the weights changed; a skipped step leaves it where it was. On N ranks
        every rank calls it with the same global batch (the train loop broadcasts rank 0's); each rank trains
        on its share of whole groups and every rank returns the metrics of the whole batch.
        """
        started = time.perf_counter()
        _check_groups(groups)
        metrics: dict[str, float] = {}
        rewards_by_group = [group_rewards(group) for group in groups]
        if not any(rewards_G.numel() for rewards_G in rewards_by_group):
            return self._skipped(metrics, started, reason="no trajectories", nonfinite=False)
        if not is_finite_loss(*rewards_by_group):
            return self._skipped(metrics, started, reason="non-finite reward")
        if self.config.grpo.drop_zero_advantage_groups:
            kept = groups_with_varied_rewards(rewards_by_group)
            metrics["loss/dropped_zero_advantage_groups"] = float(len(groups) - len(kept))
            groups, rewards_by_group = [groups[i] for i in kept], [rewards_by_group[i] for i in kept]
            if not groups:
                return self._skipped(
                    metrics, started, reason="every group had equal rewards", nonfinite=False
                )
        advantages_B = advantages_in_batch_order(
            rewards_by_group, self.advantage_estimator, scale_by_std=self.config.grpo.scale_rewards, eps=1e-6
        )
        trajectories = [trajectory for group in groups for trajectory in group.trajectories]
        batch = collate(trajectories, self.pad_token_id, advantages_B)
        micro_batches = [
            micro_batch.to(self.engine.device) for micro_batch in self._micro_batches_of_this_rank(groups, batch)
        ]
        if self._needs_proximal_pass():
            metrics.update(self._fill_proximal_and_reference(micro_batches))
        if not all_ranks_true(self._inputs_are_finite(micro_batches)):
            return self._skipped(metrics, started, reason="non-finite log-probs or advantages")
        counts = self._global_counts(batch)
        epoch_metrics = []
        for _ in range(self.config.grpo.epochs_per_batch):
            applied, optimizer_step_metrics = self._optimizer_step(micro_batches, counts)
            if not applied:
                break
            epoch_metrics.append(optimizer_step_metrics)
        if not epoch_metrics:
            return self._skipped(metrics, started, reason="non-finite loss or gradient")
        # A later epoch may still fail; the weights changed already, so this is a new version either way.
        self.version += 1
        for key in epoch_metrics[0]:
            values = [m[key] for m in epoch_metrics]
            metrics[key] = max(values) if key.endswith("_max") else sum(values) / len(values)
        metrics.update(
            {
                "loss/skipped_nonfinite": float(len(epoch_metrics) < self.config.grpo.epochs_per_batch),
                "loss/learning_rate": float(self.engine.get_lr()[0]),
                "loss/advantage_abs_mean": float(advantages_B.abs().mean()),
                "async/policy_version": float(self.version),
                "perf/train_tokens": float(batch.num_loss_tokens),
                "perf/train_step_s": time.perf_counter() - started,
            }
        )
        return metrics

    def _micro_batches_of_this_rank(self, groups: Sequence[Group], batch: TrainBatch) -> list[TrainBatch]:
        """This rank's share of the global batch, in micro-batches.

        One rank: the whole batch in `grpo.minibatches_per_step` micro-batches. N ranks: the rows of this
        rank's whole groups (rl.grpo.distributed.group_shares) in `micro_batches_per_rank` micro-batches,
        topped up with stand-ins (the batch's first row, its loss counted zero): DeepSpeed's collectives
        (ZeRO-3's parameter gathers in every forward, the gradient reduction in every backward) need every
        rank to run as many forward and backward passes as the others.
        """
        group_sizes = [len(group.trajectories) for group in groups]
        rows = rows_of_groups(group_sizes, group_shares(group_sizes, self.world_size)[self.rank])
        share = batch if len(rows) == batch.batch_size else batch.select(torch.tensor(rows, dtype=torch.long))
        micro_batches = split_micro_batches(share, self.micro_batches_per_rank) if rows else []
        while self.world_size > 1 and len(micro_batches) < self.micro_batches_per_rank:
            micro_batches.append(replace(batch.select(slice(0, 1)), stand_in=True))
        return micro_batches

    def _skipped(
        self, metrics: dict[str, float], started: float, reason: str, nonfinite: bool = True
    ) -> dict[str, float]:
        self.skipped_steps += 1
        logger.warning("training step skipped (%s); policy version stays %d", reason, self.version)
        metrics.update(
            {
                "loss/skipped_nonfinite": 1.0 if nonfinite else 0.0,
                "loss/skipped_steps": float(self.skipped_steps),
                "async/policy_version": float(self.version),
                "perf/train_step_s": time.perf_counter() - started,
            }
        )
        return metrics

    def _needs_proximal_pass(self) -> bool:
        """A separate no-grad pass is only needed when the weights move within the step (several epochs)
        or a reference model is used. With one optimizer step per batch, every micro-batch sees the
        weights of the start of the step, so the training forward's own log-probs (detached) are the
        proximal log-probs, exactly, and one forward pass is saved."""
        return self.config.grpo.epochs_per_batch > 1 or self.config.grpo.kl_coef > 0

    @torch.no_grad()
    def _fill_proximal_and_reference(self, micro_batches: list[TrainBatch]) -> dict[str, float]:
        """Log-probs under the weights at the start of the step (pi_prox) and the reference; entropy."""
        entropy_sum, token_count = 0.0, 0
        for micro_batch in micro_batches:
            proximal_BT, entropy_BT = response_logprobs_and_entropy(
                self.engine, micro_batch, self.sampling_temperature, compute_entropy=True
            )
            micro_batch.proximal_logprobs_BT = proximal_BT
            if not micro_batch.stand_in:
                entropy_sum += float((entropy_BT * micro_batch.loss_mask_BT).sum())
                token_count += micro_batch.num_loss_tokens
            if self.config.grpo.kl_coef > 0:
                micro_batch.reference_logprobs_BT = self._reference_logprobs(micro_batch)
        if self.world_size > 1:
            entropy_sum, token_count = (sum(values) for values in zip(*gather_to_all((entropy_sum, token_count))))
        return {"loss/entropy": entropy_sum / max(token_count, 1)}

    def _reference_logprobs(self, micro_batch: TrainBatch) -> torch.Tensor:
        if self.reference_model is not None:
            return sequence_logprobs(self.reference_model, micro_batch, self.sampling_temperature)
        with self.engine.module.disable_adapter():  # LoRA: the frozen base is the reference
            return sequence_logprobs(self.engine, micro_batch, self.sampling_temperature)

    @staticmethod
    def _inputs_are_finite(micro_batches: list[TrainBatch]) -> bool:
        for micro_batch in micro_batches:
            mask = micro_batch.loss_mask_BT.bool()
            tensors = [micro_batch.behaviour_logprobs_BT[mask], micro_batch.advantages_B]
            if micro_batch.proximal_logprobs_BT is not None:
                tensors.append(micro_batch.proximal_logprobs_BT[mask])
            if micro_batch.reference_logprobs_BT is not None:
                tensors.append(micro_batch.reference_logprobs_BT[mask])
            if not is_finite_loss(*tensors):
                return False
        return True

    def _global_counts(self, batch: TrainBatch) -> dict[str, float]:
        aggregation = self.config.grpo.loss_aggregation
        sequences = batch.batch_size if aggregation == "constant" else batch.num_sequences_with_loss_tokens
        return {
            "num_tokens": float(batch.num_loss_tokens),
            "num_sequences": float(sequences),
            "constant_length": self.config.rollout.max_context_tokens,
        }

    def _optimizer_step(
        self, micro_batches: list[TrainBatch], counts: dict[str, float]
    ) -> tuple[bool, dict[str, float]]:
        """Accumulate gradients over the micro-batches, then one optimizer step; False if it was skipped."""
        sums: dict[str, float] = defaultdict(float)
        all_finite = True
        for index, micro_batch in enumerate(micro_batches):
            self.engine.set_gradient_accumulation_boundary(index == len(micro_batches) - 1)
            loss, terms = self._micro_batch_loss(micro_batch, counts)
            if micro_batch.stand_in:
                loss = loss * 0.0  # takes part in the collectives, adds nothing to the gradient
            all_finite = all_finite and is_finite_loss(loss)
            # Losses are already normalised by whole-batch counts: no division by accumulation steps. On N
            # ranks DeepSpeed averages the ranks' gradients; each rank's share of the batch loss is scaled by
            # N so that the average is their sum, the gradient of the whole batch's loss.
            self.engine.backward(loss * self.world_size if self.world_size > 1 else loss, scale_wrt_gas=False)
            if micro_batch.stand_in:
                continue
            weight = micro_batch.num_loss_tokens / max(counts["num_tokens"], 1.0)
            for key, value in terms.items():
                if key.endswith("_max"):
                    sums[key] = max(sums[key], value)
                elif key in ("loss/policy", "loss/kl", "loss/total"):
                    sums[key] += value  # partial sums of the batch loss
                else:
                    sums[key] += value * weight  # token-weighted mean of per-token metrics
        if self.world_size > 1:  # every rank's partial sums: the whole batch's metrics
            sums = merge_rank_metrics(gather_to_all(dict(sums)))
        all_finite = all_ranks_true(all_finite)
        grad_norm = self._grad_norm_before_step() if self.zero_stage == 0 else None  # of the reduced gradients
        gradients_finite = grad_norm is None or is_finite_loss(grad_norm)
        if self.zero_stage == 0 and not (all_finite and gradients_finite):
            self.engine.zero_grad()  # plain optimizer: drop the poisoned gradients ourselves
            return False, dict(sums)
        self.engine.step()  # ZeRO optimizers skip (and clear) non-finite gradients themselves
        if not self.engine.was_step_applied():
            return False, dict(sums)
        if grad_norm is None:
            grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is not None:
            sums["loss/grad_norm"] = float(grad_norm)
        return True, dict(sums)

    def _grad_norm_before_step(self) -> float | None:
        gradients = [
            p.grad for p in self.engine.module.parameters() if p.requires_grad and p.grad is not None
        ]
        if not gradients:
            return None
        return float(torch.nn.utils.get_total_norm(gradients, norm_type=2.0))

    def _micro_batch_loss(
        self, micro_batch: TrainBatch, counts: dict[str, float]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        grpo, async_ = self.config.grpo, self.config.async_
        single_pass = micro_batch.proximal_logprobs_BT is None
        logprobs_BT, entropy_BT = response_logprobs_and_entropy(
            self.engine, micro_batch, self.sampling_temperature,
            compute_entropy=grpo.entropy_coef > 0 or single_pass,
            entropy_grad=grpo.entropy_coef > 0,  # otherwise a metric: kept out of the backward pass
        )
        proximal_BT = logprobs_BT.detach() if single_pass else micro_batch.proximal_logprobs_BT
        policy, policy_metrics = policy_loss(
            logprobs_BT,
            proximal_BT,
            micro_batch.behaviour_logprobs_BT,
            micro_batch.advantages_B,
            micro_batch.loss_mask_BT,
            clip_eps_low=grpo.clip_eps_low,
            clip_eps_high=grpo.clip_eps_high,
            behaviour_ratio_cap=async_.behaviour_ratio_cap,
            behaviour_ratio_mode=async_.behaviour_ratio_mode,
            off_policy_correction=async_.off_policy_correction,
            aggregation=grpo.loss_aggregation,
            **counts,
        )
        loss = policy
        terms = {"loss/policy": float(policy.detach())}
        if grpo.kl_coef > 0:
            kl = aggregate_loss(
                kl_k3(logprobs_BT, micro_batch.reference_logprobs_BT),
                micro_batch.loss_mask_BT,
                grpo.loss_aggregation,
                **counts,
            )
            loss = loss + grpo.kl_coef * kl
            terms["loss/kl"] = float(kl.detach())
        if grpo.entropy_coef > 0:
            entropy = aggregate_loss(entropy_BT, micro_batch.loss_mask_BT, grpo.loss_aggregation, **counts)
            loss = loss - grpo.entropy_coef * entropy
        terms["loss/total"] = float(loss.detach())
        if single_pass:  # the entropy metric the skipped proximal pass would have logged
            terms["loss/entropy"] = float((entropy_BT.detach() * micro_batch.loss_mask_BT).sum()
                                          / max(micro_batch.num_loss_tokens, 1))
        terms.update(
            {
                "loss/clip_fraction": float(policy_metrics["clip_fraction"]),
                "loss/approx_kl": float(policy_metrics["approx_kl"]),
                "async/importance_weight_mean": float(policy_metrics["importance_weight_mean"]),
                "async/importance_weight_max": float(policy_metrics["importance_weight_max"]),
                "async/behaviour_masked_fraction": float(policy_metrics["behaviour_masked_fraction"]),
                "async/behaviour_truncated_fraction": float(policy_metrics["behaviour_truncated_fraction"]),
            }
        )
        return loss, terms

    # ------------------------------------------------------------------ weights for rollouts

    def _gathered(self) -> contextlib.AbstractContextManager:
        """Under ZeRO-3 parameters are partitioned: gather them (read-only) to export or save."""
        if self.zero_stage == 3:
            return deepspeed.zero.GatheredParameters(
                list(self.engine.module.parameters()), modifier_rank=None
            )
        return contextlib.nullcontext()

    def export_weights(self, kind: str = "full", main_process_only: bool = False) -> dict[str, torch.Tensor] | None:
        """CPU copies of the weights: "full" (LoRA merged in, base-model names) or "adapter" (LoRA only).

        Under ZeRO-3 on N ranks this is collective (every rank holds a part of each parameter): all ranks
        call it. With `main_process_only`, rank 0 gets the weights and the other ranks, having taken part
        in the gather, get None (the weight push and the model folder need one copy).
        """
        if kind not in ("full", "adapter"):
            raise ValueError(f"export_weights(kind={kind!r}): valid kinds are 'full' and 'adapter'")
        if kind == "adapter" and not self.lora_enabled:
            raise ValueError("export_weights(kind='adapter') needs model.lora.enabled=true; use kind='full'")
        with self._gathered():
            if main_process_only and not is_main_process():
                return None
            if kind == "adapter":
                return adapter_state_dict(self.engine.module)
            if self.lora_enabled:
                return merged_state_dict(self.engine.module)
            return {
                name: tensor.detach().to("cpu", copy=True)
                for name, tensor in self.engine.module.state_dict().items()
            }

    def state_dict_for_rollout(self) -> dict[str, torch.Tensor]:
        """Full weights (merged when LoRA is on) that load into the base architecture with load_state_dict."""
        return self.export_weights("full")

    def merge_for_rollout(self) -> dict[str, torch.Tensor]:
        """LoRA: W + scaling * B @ A for each adapted layer, computed without touching the trained weights."""
        return self.export_weights("full")

    def adapter_config(self) -> dict:
        return adapter_config_dict(self.engine.module) if self.lora_enabled else {}

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(
        self, checkpoints_dir: str | os.PathLike, extra_state: dict | None = None, step: int | None = None
    ) -> Path:
        """Atomically write checkpoint-<step> (default step: the policy version); returns its folder."""
        step = self.version if step is None else step
        with atomic_checkpoint(checkpoints_dir, step, keep_last=self.config.checkpoint.keep_last) as folder:
            self._save_model(folder)
            # Collective: every rank writes its own shards (ZeRO partitions of the optimizer, and of the
            # weights under ZeRO-3); rank 0 also writes the replicated module state.
            self.engine.save_checkpoint(
                str(folder / "deepspeed"), tag=DEEPSPEED_CHECKPOINT_TAG, save_latest=False
            )
            rng_by_rank = gather_to_all(capture_rng_state())
            if is_main_process():
                state = {
                    "version": self.version,
                    "step": step,
                    "skipped_steps": self.skipped_steps,
                    "world_size": self.world_size,
                    "rng": rng_by_rank[0],
                    "extra_state": extra_state or {},
                }
                if self.world_size > 1:
                    state["rng_by_rank"] = rng_by_rank
                save_trainer_state(folder, state)
        return Path(checkpoints_dir) / checkpoint_name(step)

    def _save_model(self, folder: Path) -> None:
        """The HF model folder (and the LoRA adapter), written by rank 0 from the gathered weights."""
        weights = self.export_weights("full", main_process_only=True)  # every rank: a gather under ZeRO-3
        if is_main_process():
            base_model = self.engine.module.get_base_model() if self.lora_enabled else self.engine.module
            base_model.save_pretrained(folder / "model", state_dict=weights)
        if self.lora_enabled:
            with self._gathered():
                if is_main_process():
                    self.engine.module.save_pretrained(folder / "adapter")
        if self.tokenizer is not None and is_main_process():
            self.tokenizer.save_pretrained(folder / "model")

    def load_checkpoint(self, path: str | os.PathLike) -> dict:
        """Restore weights, optimizer, scheduler, RNG and version from a checkpoint (or a run's latest one).

        Returns the `extra_state` given to save_checkpoint (e.g. the data cursor). Collective on N ranks:
        each rank loads its own shards; the number of ranks must be the one that wrote the checkpoint.
        """
        folder = resolve_checkpoint(path)
        state = load_trainer_state(folder)
        saved_world_size = int(state.get("world_size", 1))
        if saved_world_size != self.world_size:
            raise ConfigError(
                f"checkpoint '{folder}' was written by {saved_world_size} rank(s) and this run has "
                f"{self.world_size}: resume with the same number of ranks (torchrun --nproc_per_node="
                f"{saved_world_size} ...), or start a new run from its weights (model.path={folder / 'model'})"
            )
        load_path, _ = self.engine.load_checkpoint(
            str(folder / "deepspeed"),
            tag=DEEPSPEED_CHECKPOINT_TAG,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if load_path is None:
            raise FileNotFoundError(
                f"checkpoint '{folder}' has no DeepSpeed state under deepspeed/{DEEPSPEED_CHECKPOINT_TAG}"
            )
        self.version = int(state["version"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        restore_rng_state(state["rng_by_rank"][self.rank] if "rng_by_rank" in state else state["rng"])
        return dict(state.get("extra_state", {}))


def _check_groups(groups: Sequence[Group]) -> None:
    """Refuse a flat list of trajectories: the groups define the advantages, never a group_id string."""
    for index, group in enumerate(groups):
        if not isinstance(group, Group):
            raise TypeError(
                f"GRPOTrainer.step takes groups (data.trajectory.Group, as RolloutManager.get_batch returns "
                f"them); item {index} is a {type(group).__name__}: wrap each group's trajectories in a Group"
            )


__all__ = ["GRPOTrainer"]
