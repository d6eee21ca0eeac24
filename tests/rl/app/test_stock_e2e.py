"""End-to-end on a stock-shaped model: `fanout train configs/stock_cpu.yaml` — SFT → GRPO on Ray → eval.

The stock-model recipe pointed at `qwen2_checkpoint` (the real Qwen2 tokenizer and chat template, a random
tiny Qwen2 of the full 151,936-token vocabulary): the expert's demonstrations are rendered in the chat
template and SFT'd, a few GRPO steps run on a Ray rollout actor, and the final policy is evaluated, all
through the CLI in a subprocess. It is kept small (a few SFT steps, two GRPO steps of four episodes, four
eval questions) because every generated token is projected onto the whole vocabulary. What it checks: the run's outputs follow
the contracts and the stock model went through its own chat template (prompt_style "auto" became
"full"; the tokenizer and its template travel with every checkpoint).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cli_runs import metrics_rows, train_run

GRPO_STEPS = 2  # the recipe's grpo.total_steps
# Smaller still than the recipe: a random model fills every turn's budget, and each of those tokens is
# projected onto 151,936 rows in the trainer, so the budget and the group are cut; SFT is a few steps,
# at a learning rate for random weights (a pretrained model's is the recipe's 1e-5).
SMOKE_OVERRIDES = ["sft.max_steps=4", "sft.batch_size=4", "sft.num_trajectories=16", "sft.learning_rate=3e-3",
                   "rollout.group_size=2", "rollout.max_new_tokens_per_turn=48", "grpo.learning_rate=1e-4",
                   "eval.num_questions=4", "logging.wandb_mode=disabled", "logging.progress_bar=false"]
EVAL_FIELDS = {"n", "em", "f1", "model_calls", "tool_calls", "subqueries_per_round", "latency_s", "format_valid",
               "em_ci95"}


@pytest.fixture(scope="module")
def stock_run(tmp_path_factory, qwen2_checkpoint) -> Path:
    started = time.perf_counter()
    run_dir = train_run("configs/stock_cpu.yaml", tmp_path_factory.mktemp("stock_runs"), "stock_cpu",
                        [f"model.path={qwen2_checkpoint}", *SMOKE_OVERRIDES], timeout_s=600)
    print(f"stock_cpu recipe: {time.perf_counter() - started:.1f} s")
    return run_dir


def test_grpo_steps_are_logged(stock_run):
    rows = metrics_rows(stock_run)
    training_rows = [row for row in rows if "reward/total" in row]
    assert [row["step"] for row in training_rows] == list(range(1, GRPO_STEPS + 1))
    for row in training_rows:
        assert row["async/policy_version"] == row["step"] and "loss/policy" in row
        assert row["rollout/model_calls"] >= 1 and row["perf/samples_per_s"] > 0


def test_eval_json_has_the_contract_fields(stock_run):
    results = json.loads((stock_run / "eval.json").read_text())
    assert results["world"]["all"]["n"] == 4
    for figures in results["world"].values():
        assert set(figures) == EVAL_FIELDS and 0 <= figures["format_valid"] <= 1


def test_the_stock_model_ran_through_its_chat_template(stock_run, qwen2_checkpoint):
    config = (stock_run / "config.yaml").read_text()
    assert "prompt_style: full" in config and "protocol: function_call" in config  # "auto" for a stock model
    summary = json.loads((stock_run / "sft" / "sft_summary.json").read_text())
    assert summary["steps"] == 4 and summary["num_trajectories"] > 0
    template = (Path(qwen2_checkpoint) / "chat_template.jinja").read_text()
    for folder in (stock_run / "sft", stock_run / "checkpoints" / f"checkpoint-{GRPO_STEPS}" / "model"):
        assert (folder / "chat_template.jinja").read_text() == template  # the template travels with the model
    name = "model.layers.0.self_attn.q_proj.weight"
    base = load_file(Path(qwen2_checkpoint) / "model.safetensors")[name]
    assert not torch.equal(base, load_file(stock_run / "sft" / "model.safetensors")[name]), "SFT changed nothing"
