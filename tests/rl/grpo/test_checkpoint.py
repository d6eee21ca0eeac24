"""Checkpoints: atomic writes, pruning, the latest pointer, RNG state, and an exact resume of training."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from trainer_helpers import synthetic_groups, trainer_config

from rl.grpo.checkpoint import (
    LATEST_POINTER,
    atomic_checkpoint,
    capture_rng_state,
    check_loadable_state,
    find_latest_checkpoint,
    list_checkpoints,
    load_trainer_state,
    resolve_checkpoint,
    restore_rng_state,
    save_trainer_state,
)
from rollouts.model_loading import load_model_and_tokenizer
from rl.grpo.trainer import GRPOTrainer


def _write_checkpoint(checkpoints_dir, step, keep_last=3):
    with atomic_checkpoint(checkpoints_dir, step, keep_last=keep_last) as folder:
        (folder / "weights.bin").write_bytes(b"w" * step)
        save_trainer_state(folder, {"version": step, "step": step, "extra_state": {}})
    return checkpoints_dir / f"checkpoint-{step}"


# ------------------------------------------------------------------------------------------ files


def test_failed_write_leaves_the_previous_checkpoint_and_pointer_intact(tmp_path):
    checkpoints_dir = tmp_path / "checkpoints"
    first = _write_checkpoint(checkpoints_dir, 1)
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_checkpoint(checkpoints_dir, 2, keep_last=3) as folder:
            (folder / "weights.bin").write_bytes(b"partial")
            raise RuntimeError("disk full")
    assert sorted(p.name for p in checkpoints_dir.iterdir()) == ["checkpoint-1", LATEST_POINTER]
    assert (checkpoints_dir / LATEST_POINTER).read_text().strip() == "checkpoint-1"
    assert find_latest_checkpoint(tmp_path) == first
    assert (first / "weights.bin").read_bytes() == b"w"


def test_keep_last_prunes_oldest_and_latest_points_to_newest(tmp_path):
    for step in (5, 10, 15):
        _write_checkpoint(tmp_path, step, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-10", "checkpoint-15"]
    assert find_latest_checkpoint(tmp_path).name == "checkpoint-15"
    _write_checkpoint(tmp_path, 15, keep_last=2)  # re-saving a step replaces it
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-10", "checkpoint-15"]


def test_latest_falls_back_to_the_newest_complete_checkpoint(tmp_path):
    _write_checkpoint(tmp_path, 3)
    _write_checkpoint(tmp_path, 4)
    (tmp_path / LATEST_POINTER).write_text("checkpoint-99\n")  # pointer to something deleted
    (tmp_path / "checkpoint-7").mkdir()  # an incomplete folder (no trainer state) is ignored
    assert find_latest_checkpoint(tmp_path).name == "checkpoint-4"
    assert resolve_checkpoint(tmp_path / "checkpoint-3").name == "checkpoint-3"
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resolve_checkpoint(tmp_path / "empty")


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_trainer_state(tmp_path, {"rng": capture_rng_state(), "version": 4})
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    random.seed(10), np.random.seed(20), torch.manual_seed(30)
    state = load_trainer_state(tmp_path)  # torch.load(weights_only=True)
    restore_rng_state(state["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected
    assert state["version"] == 4


def test_extra_state_must_be_loadable_without_pickle():
    check_loadable_state({"cursor": [1, 2], "tensor": torch.zeros(2), "name": "x", "done": None})
    with pytest.raises(TypeError, match=r"extra_state\['cursor'\]\['sampler'\] is a object"):
        check_loadable_state({"cursor": {"sampler": object()}})


# ------------------------------------------------------------------------------------------ trainer


@pytest.fixture(scope="module")
def tokenizer_and_vocab(tiny_checkpoint):
    _, tokenizer = load_model_and_tokenizer(tiny_checkpoint)
    return tokenizer, len(tokenizer)


def test_resumed_run_takes_exactly_the_same_next_step(tmp_path, tiny_checkpoint, tokenizer_and_vocab):
    tokenizer, vocab_size = tokenizer_and_vocab
    config = trainer_config(zero_stage=1, epochs_per_batch=2, warmup_steps=2)
    first_batch = synthetic_groups(seed=11, vocab_size=vocab_size)
    second_batch = synthetic_groups(seed=12, vocab_size=vocab_size, policy_version=1)

    original = GRPOTrainer(config, model_path=tiny_checkpoint, tokenizer=tokenizer)
    original.step(first_batch)
    saved = original.save_checkpoint(tmp_path / "checkpoints", extra_state={"data_cursor": 7, "step": 1})
    random_after_save = torch.rand(4)
    expected_metrics = original.step(second_batch)
    expected_weights = original.export_weights()

    resumed = GRPOTrainer(config, model_path=tiny_checkpoint, tokenizer=tokenizer)
    extra_state = resumed.load_checkpoint(tmp_path)  # the run folder: resolves checkpoints/latest
    assert extra_state == {"data_cursor": 7, "step": 1} and resumed.version == 1
    assert torch.equal(torch.rand(4), random_after_save)
    metrics = resumed.step(second_batch)
    for key in ("loss/policy", "loss/grad_norm", "loss/learning_rate", "loss/clip_fraction"):
        assert metrics[key] == expected_metrics[key], key
    for name, tensor in resumed.export_weights().items():
        assert torch.equal(tensor, expected_weights[name]), name

    # The model folder is a plain HF model (+ tokenizer) with the weights of the saved version.
    model, saved_tokenizer = load_model_and_tokenizer(saved / "model")
    assert len(saved_tokenizer) == vocab_size
    fresh = GRPOTrainer(config, model_path=saved / "model")
    state = model.state_dict()
    for name, tensor in fresh.export_weights().items():
        assert torch.equal(tensor, state[name]), name


def test_a_save_failing_midway_keeps_the_previous_trainer_checkpoint(tmp_path, monkeypatch):
    from trainer_helpers import tiny_model

    trainer = GRPOTrainer(trainer_config(zero_stage=0), model=tiny_model())
    trainer.step(synthetic_groups())
    first = trainer.save_checkpoint(tmp_path, extra_state={"data_cursor": 1})
    trainer.step(synthetic_groups(seed=2))

    def fail(*args, **kwargs):
        raise RuntimeError("disk full while writing optimizer state")

    monkeypatch.setattr(trainer.engine, "save_checkpoint", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        trainer.save_checkpoint(tmp_path, extra_state={"data_cursor": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1", LATEST_POINTER]
    assert find_latest_checkpoint(tmp_path) == first
    assert load_trainer_state(first)["extra_state"] == {"data_cursor": 1}
