"""GRPOTrainer on CPU: DeepSpeed ZeRO stages, the learning signal, skipped steps, LoRA, config checks.

Each DeepSpeed engine costs about a second to build, so tests share a module-scoped trainer where
they can and compare relative changes only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import transformers
from trainer_helpers import parameters, synthetic_groups, tiny_model, trainer_config, trajectories_of

import rl.grpo.trainer as trainer_module
from rl.grpo.batch import collate, group_rewards, sequence_logprobs
from rl.config import ConfigError
from rl.grpo.core_algos import advantages_in_batch_order
from rl.grpo.deepspeed_setup import build_deepspeed_config, validate_trainer_config
from rl.grpo.trainer import GRPOTrainer


@pytest.fixture(scope="module")
def trainer():
    torch.set_num_threads(1)
    return GRPOTrainer(trainer_config(zero_stage=0), model=tiny_model())


def _loss_token_logprob_sums(trainer, groups) -> torch.Tensor:
    batch = collate(trajectories_of(groups), pad_token_id=0)
    with torch.no_grad():
        logprobs_BT = sequence_logprobs(trainer.module, batch)
    return (logprobs_BT * batch.loss_mask_BT).sum(dim=-1)


def _advantages(trainer, groups) -> torch.Tensor:
    """advantages_B the trainer's estimator gives these groups, in batch order."""
    return advantages_in_batch_order(
        [group_rewards(group) for group in groups],
        trainer.advantage_estimator,
        scale_by_std=trainer.config.grpo.scale_rewards,
    )


def test_step_updates_every_parameter_and_bumps_the_version(trainer):
    before, version = parameters(trainer.module), trainer.version
    metrics = trainer.step(synthetic_groups())
    after = parameters(trainer.module)
    assert all(not torch.equal(before[name], after[name]) for name in before)
    assert trainer.version == version + 1
    assert metrics["loss/skipped_nonfinite"] == 0.0
    # The trainer owns the policy version; staleness is the rollout manager's (measured at admission).
    assert metrics["async/policy_version"] == trainer.version
    assert not any(key.startswith("async/staleness") for key in metrics)
    assert metrics["perf/train_tokens"] == 2 * (4 + 5 + 4 + 5)  # 2 groups; 2 + 2 or 2 + 3 generated tokens
    for key in (
        "loss/policy",
        "loss/entropy",
        "loss/clip_fraction",
        "loss/grad_norm",
        "perf/train_step_s",
        "async/importance_weight_mean",
    ):
        assert key in metrics and math.isfinite(metrics[key])
    assert metrics["loss/grad_norm"] > 0


def test_on_policy_step_has_unit_importance_weight_and_no_clipping(trainer):
    groups = synthetic_groups(seed=5)
    trajectories = trajectories_of(groups)
    batch = collate(trajectories, pad_token_id=0)
    with torch.no_grad():
        logprobs_BT = sequence_logprobs(trainer.module, batch)
    for row, trajectory in enumerate(trajectories):  # behaviour log-probs = the current policy's
        trajectory.behaviour_logprobs = [
            value if mask else 0.0 for value, mask in zip(logprobs_BT[row].tolist(), trajectory.loss_mask)
        ]
    metrics = trainer.step(groups)
    assert metrics["async/importance_weight_mean"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["loss/clip_fraction"] == 0.0  # one epoch: the ratio is exactly 1
    # ratio 1 and weight 1: the loss is minus the token-weighted mean advantage. Rewards 0,1,0,1 in each
    # group of 4: mean 0.5, unbiased std sqrt(1/3), so the advantages are -/+ 0.5 / sqrt(1/3).
    advantages = torch.tensor([-1.0, 1.0, -1.0, 1.0] * 2) * 0.5 / math.sqrt(1 / 3)
    expected = -float((advantages * batch.loss_mask_BT.sum(dim=-1)).sum() / batch.loss_mask_BT.sum())
    assert metrics["loss/policy"] == pytest.approx(expected, abs=1e-5)


def test_step_raises_the_log_prob_of_the_rewarded_sample(trainer):
    groups = synthetic_groups(seed=7, num_groups=1, group_size=2)  # rewards [0, 1]
    before = _loss_token_logprob_sums(trainer, groups)
    trainer.step(groups)
    after = _loss_token_logprob_sums(trainer, groups)
    assert after[1] > before[1]  # positive advantage: more likely
    assert after[0] < before[0]  # negative advantage: less likely


def test_nan_reward_skips_the_step_and_changes_nothing(trainer):
    groups = synthetic_groups(seed=9)
    groups[0].trajectories[2].reward = float("nan")
    before, version = parameters(trainer.module), trainer.version
    metrics = trainer.step(groups)
    assert metrics["loss/skipped_nonfinite"] == 1.0
    assert trainer.version == version
    assert all(torch.equal(before[name], parameter) for name, parameter in trainer.module.named_parameters())


def test_group_advantages_are_computed_within_each_group(trainer):
    groups = synthetic_groups(num_groups=2, group_size=4)  # rewards 0,1,0,1 in each group
    groups[1].trajectories[0].reward = groups[1].trajectories[2].reward = 1.0  # group 1 is all ones
    advantages = _advantages(trainer, groups)
    torch.testing.assert_close(
        advantages[:4], torch.tensor([-0.866025, 0.866025, -0.866025, 0.866025]), atol=1e-5, rtol=0
    )
    assert torch.equal(advantages[4:], torch.zeros(4))


def test_step_refuses_a_flat_list_of_trajectories(trainer):
    with pytest.raises(TypeError, match=r"takes groups.*item 0 is a Trajectory"):
        trainer.step(trajectories_of(synthetic_groups()))


def _one_equal_and_one_varied_group() -> list:
    groups = synthetic_groups(seed=13, num_groups=2, group_size=4)  # rewards 0,1,0,1 in each group
    for trajectory in groups[0].trajectories:
        trajectory.reward = 0.5  # group 0: all equal, advantage 0 for every member
    return groups


def test_zero_advantage_filter_trains_on_the_varied_group_rows_only():
    filtered = GRPOTrainer(trainer_config(drop_zero_advantage_groups=True), model=tiny_model())
    metrics = filtered.step(_one_equal_and_one_varied_group())
    assert metrics["loss/dropped_zero_advantage_groups"] == 1.0
    assert metrics["perf/train_tokens"] == 4 + 5 + 4 + 5  # group 1's rows only
    assert filtered.version == 1
    varied_only = GRPOTrainer(trainer_config(), model=tiny_model())
    expected = varied_only.step(_one_equal_and_one_varied_group()[1:])
    for key in ("loss/policy", "loss/grad_norm", "loss/advantage_abs_mean"):
        assert metrics[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-7), key
    expected_weights = varied_only.export_weights()
    for name, tensor in filtered.export_weights().items():
        torch.testing.assert_close(tensor, expected_weights[name], atol=0, rtol=0)


def test_zero_advantage_filter_skips_a_batch_of_equal_reward_groups(trainer, monkeypatch):
    monkeypatch.setattr(trainer.config.grpo, "drop_zero_advantage_groups", True)
    groups = synthetic_groups(seed=14, num_groups=2, group_size=4)
    for group_index, group in enumerate(groups):
        for trajectory in group.trajectories:
            trajectory.reward = float(group_index)  # all 0 in group 0, all 1 in group 1
    before, version, skipped = parameters(trainer.module), trainer.version, trainer.skipped_steps
    metrics = trainer.step(groups)
    assert metrics["loss/dropped_zero_advantage_groups"] == 2.0
    assert metrics["loss/skipped_nonfinite"] == 0.0 and trainer.skipped_steps == skipped + 1
    assert trainer.version == version and metrics["async/policy_version"] == version
    assert all(torch.equal(before[name], parameter) for name, parameter in trainer.module.named_parameters())


@pytest.mark.parametrize("zero_stage", [0, 1])
def test_nonfinite_loss_during_the_step_is_never_applied(zero_stage, monkeypatch):
    trainer = GRPOTrainer(trainer_config(zero_stage=zero_stage), model=tiny_model())
    real_policy_loss = trainer_module.policy_loss
    calls = {"count": 0}

    def poisoned_on_second_micro_batch(*args, **kwargs):
        loss, metrics = real_policy_loss(*args, **kwargs)
        calls["count"] += 1
        return (loss * float("nan") if calls["count"] == 2 else loss), metrics

    monkeypatch.setattr(trainer_module, "policy_loss", poisoned_on_second_micro_batch)
    before = parameters(trainer.module)
    metrics = trainer.step(synthetic_groups())
    assert metrics["loss/skipped_nonfinite"] == 1.0 and trainer.version == 0
    assert all(torch.equal(before[name], parameter) for name, parameter in trainer.module.named_parameters())
    monkeypatch.setattr(trainer_module, "policy_loss", real_policy_loss)
    metrics = trainer.step(synthetic_groups())  # the optimizer state was not poisoned
    assert metrics["loss/skipped_nonfinite"] == 0.0 and trainer.version == 1
    assert all(bool(torch.isfinite(parameter).all()) for parameter in trainer.module.parameters())


def test_a_failing_later_epoch_keeps_the_applied_one_as_a_new_version(monkeypatch):
    trainer = GRPOTrainer(trainer_config(zero_stage=0, epochs_per_batch=2), model=tiny_model())
    real_policy_loss = trainer_module.policy_loss
    calls = {"count": 0}

    def poisoned_in_second_epoch(*args, **kwargs):
        loss, metrics = real_policy_loss(*args, **kwargs)
        calls["count"] += 1
        return (loss * float("inf") if calls["count"] == 3 else loss), metrics

    monkeypatch.setattr(trainer_module, "policy_loss", poisoned_in_second_epoch)
    before = parameters(trainer.module)
    metrics = trainer.step(synthetic_groups())
    assert metrics["loss/skipped_nonfinite"] == 1.0
    assert trainer.version == 1  # epoch 1 was applied: the weights are a new policy version
    assert any(
        not torch.equal(before[name], parameter) for name, parameter in trainer.module.named_parameters()
    )
    assert all(bool(torch.isfinite(parameter).all()) for parameter in trainer.module.parameters())


@pytest.fixture(scope="module")
def stage0_update():
    trainer = GRPOTrainer(trainer_config(zero_stage=0, epochs_per_batch=2), model=tiny_model())
    metrics = trainer.step(synthetic_groups())
    return metrics, trainer.export_weights()


@pytest.mark.parametrize("zero_stage", [1, 2, 3])
def test_zero_stages_run_on_cpu_and_match_stage_0(zero_stage, stage0_update):
    expected_metrics, expected_weights = stage0_update
    trainer = GRPOTrainer(trainer_config(zero_stage=zero_stage, epochs_per_batch=2), model=tiny_model())
    metrics = trainer.step(synthetic_groups())
    weights = trainer.export_weights()
    assert trainer.version == 1 and sorted(weights) == sorted(expected_weights)
    # Adam's update is about lr * g / (|g| + eps): where a gradient is near eps, the rounding of a differently
    # ordered reduction moves that weight by up to ~1e-5 (one element of 2048, once, in a full suite run). A
    # stage that got the update wrong moves weights by about lr = 1e-2, a hundred times the tolerance.
    for name, tensor in weights.items():
        torch.testing.assert_close(tensor, expected_weights[name], atol=1e-4, rtol=1e-4)
    for key in ("loss/policy", "loss/grad_norm", "loss/clip_fraction"):
        assert metrics[key] == pytest.approx(expected_metrics[key], rel=1e-4, abs=1e-6)


def test_gradient_accumulation_equals_one_big_batch():
    updates = []
    for minibatches in (1, 4):
        trainer = GRPOTrainer(
            trainer_config(minibatches_per_step=minibatches, loss_aggregation="seq_mean"), model=tiny_model()
        )
        metrics = trainer.step(synthetic_groups())
        updates.append((metrics["loss/policy"], metrics["loss/grad_norm"], trainer.export_weights()))
    assert updates[0][0] == pytest.approx(updates[1][0], abs=1e-6)
    assert updates[0][1] == pytest.approx(updates[1][1], rel=1e-5)
    for name, tensor in updates[0][2].items():
        torch.testing.assert_close(tensor, updates[1][2][name], atol=1e-6, rtol=1e-5)


def test_kl_to_a_frozen_reference_grows_after_the_first_epoch():
    trainer = GRPOTrainer(
        trainer_config(kl_coef=0.1, epochs_per_batch=2, entropy_coef=0.01), model=tiny_model()
    )
    metrics = trainer.step(synthetic_groups())
    assert metrics["loss/kl"] > 0  # epoch 1 is at the reference (0), epoch 2 has moved away
    assert all(not parameter.requires_grad for parameter in trainer.reference_model.parameters())


def test_lora_trains_only_adapters_and_exports_adapter_and_merged_weights(tmp_path):
    config = trainer_config(kl_coef=0.1)
    config.model.lora.enabled = True
    config.model.lora.r = 4
    config.model.lora.target_modules = ["q_proj", "v_proj"]
    base = tiny_model()
    base_names = set(base.state_dict())
    trainer = GRPOTrainer(config, model=base)
    before = parameters(trainer.module)
    metrics = trainer.step(synthetic_groups())
    assert metrics["loss/kl"] == pytest.approx(0.0, abs=1e-6)  # B = 0 at init: policy == reference
    changed = {
        name
        for name, parameter in trainer.module.named_parameters()
        if not torch.equal(before[name], parameter)
    }
    assert changed and all("lora_B" in name or "lora_A" in name for name in changed)

    adapter = trainer.export_weights("adapter")
    assert adapter and all(".lora_A." in name or ".lora_B." in name for name in adapter)
    assert trainer.adapter_config()["r"] == 4

    merged = trainer.merge_for_rollout()
    assert set(merged) == base_names
    plain = tiny_model(seed=123)
    plain.load_state_dict(merged)
    batch = collate(trajectories_of(synthetic_groups(seed=3)), pad_token_id=0)
    model_tokens_BT = batch.loss_mask_BT.bool()  # the trainer's compact head projects only these
    with torch.no_grad():
        torch.testing.assert_close(
            sequence_logprobs(plain, batch)[model_tokens_BT], sequence_logprobs(trainer.module, batch)[model_tokens_BT],
            atol=1e-5, rtol=0,
        )
    with pytest.raises(ValueError, match="kind"):
        trainer.export_weights("everything")

    saved = trainer.save_checkpoint(tmp_path)
    assert json.loads((saved / "adapter" / "adapter_config.json").read_text())["r"] == 4
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(saved / "model")  # merged: a plain HF model
    for name, tensor in reloaded.state_dict().items():
        torch.testing.assert_close(tensor, merged[name])


def test_full_export_loads_into_the_base_architecture(trainer):
    plain = tiny_model(seed=99)
    plain.load_state_dict(trainer.state_dict_for_rollout())
    batch = collate(trajectories_of(synthetic_groups(seed=4)), pad_token_id=0)
    model_tokens_BT = batch.loss_mask_BT.bool()
    with torch.no_grad():
        torch.testing.assert_close(sequence_logprobs(plain, batch)[model_tokens_BT],
                                   sequence_logprobs(trainer.module, batch)[model_tokens_BT])
    with pytest.raises(ValueError, match="lora.enabled"):
        trainer.export_weights("adapter")


# ------------------------------------------------------------------------------------------ configuration


def test_validation_names_the_key_and_the_fix(tmp_path):
    config = trainer_config()
    config.deepspeed.precision = "fp16"
    with pytest.raises(ConfigError, match=r"deepspeed.precision.*fp32' or 'bf16"):
        validate_trainer_config(config)
    config = trainer_config()
    config.deepspeed.offload_optimizer = True
    with pytest.raises(ConfigError, match="zero_stage >= 1"):
        validate_trainer_config(config)
    config = trainer_config(advantage_estimator="ppo")
    with pytest.raises(ConfigError, match="grpo.advantage_estimator.*registered: grpo, rloo"):
        validate_trainer_config(config)
    config = trainer_config()
    config.deepspeed.config_file = str(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="deepspeed.config_file"):
        validate_trainer_config(config)


def test_deepspeed_config_is_derived_from_the_experiment_and_the_file_wins(tmp_path):
    config = trainer_config(zero_stage=2, max_grad_norm=0.5, warmup_steps=3)
    derived = build_deepspeed_config(config)
    assert derived["zero_optimization"] == {"stage": 2}
    assert derived["gradient_clipping"] == 0.5
    assert derived["gradient_accumulation_steps"] == 2 and derived["train_micro_batch_size_per_gpu"] == 4
    assert derived["optimizer"]["params"]["torch_adam"] is True
    assert derived["scheduler"]["params"]["warmup_num_steps"] == 3
    override = tmp_path / "ds.json"
    override.write_text(json.dumps({"zero_optimization": {"overlap_comm": True}, "gradient_clipping": 2.0}))
    config.deepspeed.config_file = str(override)
    merged = build_deepspeed_config(config)
    assert merged["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    assert merged["gradient_clipping"] == 2.0
    config.deepspeed.offload_optimizer = True
    offloaded = build_deepspeed_config(config)
    assert "torch_adam" not in offloaded["optimizer"]["params"]  # DeepSpeed's CPU Adam
    assert offloaded["zero_optimization"]["offload_optimizer"]["device"] == "cpu"


@pytest.mark.parametrize(
    "path",
    sorted(Path(__file__).resolve().parents[3].glob("configs/deepspeed/*.json")),
    ids=lambda path: path.name,
)
def test_shipped_deepspeed_files_merge_into_a_valid_deepspeed_config(path):
    from deepspeed.runtime.config import DeepSpeedConfig

    config = trainer_config()
    config.deepspeed.config_file = str(path)
    validate_trainer_config(config)
    merged = build_deepspeed_config(config)
    parsed = DeepSpeedConfig(merged)
    assert parsed.zero_optimization_stage == json.loads(path.read_text())["zero_optimization"]["stage"]
    assert parsed.train_batch_size == config.batch_size


def test_fp16_from_a_deepspeed_file_is_refused_on_cpu(tmp_path):
    config_file = tmp_path / "fp16.json"
    config_file.write_text(json.dumps({"fp16": {"enabled": True}}))
    config = trainer_config()
    config.deepspeed.config_file = str(config_file)
    with pytest.raises(ConfigError, match=r"fp16.json: fp16 is enabled.*bf16 or fp32"):
        build_deepspeed_config(config)


def test_single_pass_step_equals_the_step_with_a_separate_proximal_pass(monkeypatch):
    """With one epoch the training forward's detached log-probs are the proximal ones: same update."""
    updates = []
    for separate_pass in (False, True):
        monkeypatch.setattr(GRPOTrainer, "_needs_proximal_pass", lambda self, value=separate_pass: value)
        trainer = GRPOTrainer(trainer_config(), model=tiny_model())
        metrics = trainer.step(synthetic_groups(policy_version=0))
        updates.append((metrics, trainer.export_weights()))
    (single, single_weights), (separate, separate_weights) = updates
    for key in ("loss/policy", "loss/entropy", "async/importance_weight_mean", "loss/grad_norm"):
        assert single[key] == pytest.approx(separate[key], rel=1e-5, abs=1e-7), key
    for name, tensor in single_weights.items():
        torch.testing.assert_close(tensor, separate_weights[name], atol=1e-6, rtol=1e-5)
