"""End-to-end on the apps environment: `fanout train configs/apps_quickstart.yaml` on a tiny apps world and
model — apps world and MCP server → SFT warm-start on the scripted solver's verified episodes → async GRPO
on Ray actors whose episodes call the apps server → eval with `success` per dependency structure.

A few steps of a tiny model, so the figures it checks are the pipeline's (every solver episode verified,
the apps rewards logged in their ranges, staleness held, eval rows per structure and number of calls that
add up), not the policy's quality (docs/RESULTS.md measures that with the full config).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_runs import step_rows, train_run

# About a minute idle: behind -m slow (CI budget); tests/rl/app/test_train_e2e.py is the default suite's end-to-end run,
# and the apps pieces (MCP server, solver, verifiers, rewards, eval rows) have fast tests of their own.
pytestmark = [pytest.mark.slow, pytest.mark.e2e]

STEPS = 2
NUM_TEST = 8
NUM_SFT = 40
PRETRAIN_STEPS = 5
TINY_APPS_RUN = [
    "data.apps.num_train=30", "data.apps.num_validation=6", f"data.apps.num_test={NUM_TEST}",
    "model.tiny.hidden_size=64", "model.tiny.intermediate_size=128", "model.tiny.vocab_size=1024",
    f"model.tiny.pretrain_steps={PRETRAIN_STEPS}",
    # every task with a round of several calls in the parallel style (at most 3 tool turns), chains one call per
    # turn (at most 3 calls): every solver episode fits max_turns=3, so none is dropped
    f"sft.num_trajectories={NUM_SFT}", "sft.parallel_fraction=1.0", "sft.max_steps=12", "sft.batch_size=8",
    f"grpo.total_steps={STEPS}", "rollout.questions_per_step=2", "rollout.group_size=4", "rollout.max_turns=3",
    "rollout.max_new_tokens_per_turn=160", "async.max_staleness=1", "eval.num_questions=0",
    "checkpoint.every_steps=0", "logging.wandb_mode=disabled", "logging.progress_bar=false", "logging.plots=false",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return train_run("configs/apps_quickstart.yaml", tmp_path_factory.mktemp("runs"), "apps_e2e", TINY_APPS_RUN)


def test_the_warm_start_learned_from_every_solver_episode_verified(run_dir):
    summary = json.loads((run_dir / "sft" / "sft_summary.json").read_text())
    assert summary["num_trajectories"] == NUM_SFT  # none rejected by the verifier or the rollout limits
    assert summary["steps"] == 12 and summary["final_loss"] < summary["train_loss"]
    config = (run_dir / "config.yaml").read_text()
    assert "data.apps.server" in config and "--world-dir" in config  # the apps server joined tools.mcp_servers
    pretraining = json.loads((run_dir / "base" / "copy_pretraining.json").read_text())
    assert pretraining["steps"] == PRETRAIN_STEPS and set(pretraining["held_out_copy_accuracy"]) == {"repeat", "list"}


def test_every_step_logs_the_apps_rewards_in_range(run_dir):
    training_rows = step_rows(run_dir)
    assert [row["step"] for row in training_rows] == list(range(1, STEPS + 1))
    for row in training_rows:
        for key in ("reward/apps_success", "reward/format", "reward/apps_efficiency"):
            assert 0.0 <= row[key] <= 1.0, key
        assert "reward/exact_match" not in row  # the apps preset replaces the QA weights
        assert 1 <= row["rollout/model_calls"] <= 4  # max_turns 3 + the forced answer
        assert row["async/staleness_max"] <= 1
        assert row["rollout/groups_lost"] == 0
        # apps_success 1.0, format 0.1, efficiency 0.3, decomposition 0.1: the total is at most 1.5
        assert 0.0 <= row["reward/total"] <= 1.5


def test_eval_reports_success_by_structure_and_number_of_calls(run_dir):
    results = json.loads((run_dir / "eval.json").read_text())
    rows = results["apps"]
    assert rows["all"]["n"] == NUM_TEST
    structures = [name for name in ("independent", "chain", "mixed") if name in rows]
    assert sum(rows[name]["n"] for name in structures) == NUM_TEST
    for name in structures:
        by_calls = [group for group in rows if group.startswith(f"{name}/")]
        assert by_calls and sum(rows[group]["n"] for group in by_calls) == rows[name]["n"]
    for figures in rows.values():
        assert 0.0 <= figures["success"] <= 1.0 and 0.0 <= figures["format_valid"] <= 1.0
        assert 1.0 <= figures["model_calls"] <= 4.0
