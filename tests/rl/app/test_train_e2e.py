"""End-to-end: `fanout train` on a tiny world and model — SFT warm-start → async GRPO on Ray → eval.

One honest training run of the whole pipeline through the CLI, in a subprocess, in a minute or two on
2 CPU cores. It checks the run's outputs against the contracts (metrics.jsonl keys, checkpoints,
eval.json), that the staleness bound held, that the policy version advanced once per step and that
GRPO changed the weights of the warm-start.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cli_runs import metrics_rows, step_rows, train_run
from rl.app.modeling import COPY_PRETRAINING_FILE

STEPS = 3
MAX_STALENESS = 1
TINY_RUN = [
    "data.world.num_entities_per_kind=20", "data.world.num_train=100", "data.world.num_validation=10",
    "data.world.num_test=24", "model.tiny.hidden_size=64", "model.tiny.intermediate_size=128",
    "model.tiny.vocab_size=1024", "model.tiny.pretrain_steps=20", "sft.num_trajectories=200",
    "sft.comparison_drills=64",  # the quickstart's share of drills (4000 to 12000 demonstrations)
    "sft.max_steps=100", "sft.batch_size=8", "sft.learning_rate=5e-3",
    f"grpo.total_steps={STEPS}", "rollout.questions_per_step=4", "rollout.group_size=4",
    "rollout.max_new_tokens_per_turn=24", "rollout.max_turns=3", f"async.max_staleness={MAX_STALENESS}",
    "eval.num_questions=12", "checkpoint.every_steps=2", "logging.wandb_mode=disabled",
    "logging.progress_bar=false",
]
REQUIRED_KEYS = ["reward/total", "reward/exact_match", "reward/format", "reward/efficiency", "reward/decomposition",
                 "rollout/model_calls", "async/staleness_mean", "perf/samples_per_s", "loss/policy"]
EVAL_FIELDS = {"n", "em", "f1", "model_calls", "tool_calls", "subqueries_per_round", "latency_s", "format_valid",
               "em_ci95"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return train_run("configs/quickstart.yaml", tmp_path_factory.mktemp("runs"), "e2e", TINY_RUN)


def test_every_step_logs_the_contract_metrics(run_dir):
    training_rows = step_rows(run_dir)
    assert [row["step"] for row in training_rows] == list(range(1, STEPS + 1))
    for row in training_rows:
        for key in REQUIRED_KEYS:
            assert key in row, key
        assert row["async/policy_version"] == row["step"]
        assert 0 <= row["async/staleness_mean"] <= MAX_STALENESS
        assert row["perf/samples_per_s"] > 0
        assert row["rollout/model_calls"] >= 1
        # an engine batch holds at most the actor's in-flight trajectories (4 calls x 2 questions x G=4)
        assert 1 <= row["rollout/engine_batch_rows"] <= 4 * 2 * 4


def test_staleness_bound_held_and_nothing_was_lost(run_dir):
    for row in metrics_rows(run_dir):
        if "async/staleness_max" in row:
            assert row["async/staleness_max"] <= MAX_STALENESS
        if "rollout/groups_lost" in row:
            assert row["rollout/groups_lost"] == 0


def test_grpo_changed_the_warm_start_weights(run_dir):
    latest = run_dir / "checkpoints" / "checkpoint-3"
    assert (run_dir / "checkpoints" / "checkpoint-2").is_dir()  # periodic checkpoint (every 2 steps)
    trained = load_file(latest / "model" / "model.safetensors")
    warm_start = load_file(run_dir / "sft" / "model.safetensors")
    base = load_file(run_dir / "base" / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(warm_start[name], base[name]), "SFT did not change the base model"
    assert not torch.equal(trained[name], warm_start[name]), "GRPO did not change the warm-start"
    state = json.loads((latest / "trainer_state.json").read_text())
    assert state["version"] == STEPS


def test_the_base_model_was_copy_pretrained_on_the_quickstart_world(run_dir):
    """The quickstart's reader world (training sets with the test names, facts drawn anew), pretrained."""
    pretraining = json.loads((run_dir / "base" / COPY_PRETRAINING_FILE).read_text())
    assert pretraining["steps"] == 20
    assert set(pretraining["held_out_copy_accuracy"]) == {"repeat"}  # the QA world has no list items
    assert 0 <= pretraining["held_out_copy_accuracy"]["repeat"] <= 1
    config = (run_dir / "config.yaml").read_text()
    assert "train_worlds: 40" in config and "names: shared" in config


def test_sft_loss_went_down(run_dir):
    rows = [json.loads(line) for line in (run_dir / "sft" / "sft_log.jsonl").read_text().splitlines()]
    losses = [row["sft/loss"] for row in rows if "sft/loss" in row]
    assert len(losses) >= 2 and losses[-1] < losses[0]


def test_eval_json_follows_the_contract(run_dir):
    results = json.loads((run_dir / "eval.json").read_text())
    assert set(results) == {"world"}
    assert "all" in results["world"]
    assert results["world"]["all"]["n"] == 12
    assert sum(figures["n"] for structure, figures in results["world"].items() if structure != "all") == 12
    for figures in results["world"].values():
        assert set(figures) == EVAL_FIELDS
        assert 0 <= figures["em"] <= 1 and 0 <= figures["format_valid"] <= 1


def test_run_writes_config_and_plots(run_dir):
    assert "max_staleness: 1" in (run_dir / "config.yaml").read_text()
    plots = list((run_dir / "plots").glob("*.png"))
    assert any(plot.name == "reward__total.png" for plot in plots)
    assert all(plot.stat().st_size > 1000 for plot in plots)
