"""End-to-end mixed training: `fanout train configs/mixed_quickstart.yaml` on tiny QA and apps worlds and a tiny
model — both worlds and the apps MCP server → SFT warm-start on QA expert and apps solver demonstrations →
async GRPO on Ray actors whose episodes call search or the apps server → eval of both test splits.

A few steps of a tiny model, so the figures it checks are the pipeline's (both kinds of demonstrations in the
warm-start, each environment's rewards logged under its own keys and in their ranges, one eval dataset per
environment), not the policy's quality. Synchronous (async.max_staleness=0), so each step trains on the next
questions of the seeded order: the first step's 4 are 3 QA questions and 1 apps task.

Slow (`python -m pytest -m slow tests/rl/app/test_mixed_train_e2e.py`): it plays a third tiny pipeline next to
tests/rl/app/test_train_e2e.py (QA) and tests/rl/app/test_apps_train_e2e.py (apps), which cover each part.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_runs import step_rows, train_run

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

STEPS = 2
NUM_QA_TEST, NUM_APPS_TEST = 4, 4
NUM_SFT = 24
TINY_MIXED_RUN = [
    "data.world.num_entities_per_kind=20", "data.world.num_train=40", "data.world.num_validation=4",
    f"data.world.num_test={NUM_QA_TEST}", "data.apps.num_train=20", "data.apps.num_validation=4",
    f"data.apps.num_test={NUM_APPS_TEST}", "data.mixed.apps_fraction=0.5",
    "model.tiny.hidden_size=64", "model.tiny.intermediate_size=128", "model.tiny.vocab_size=2048",
    f"sft.num_trajectories={NUM_SFT}", "sft.parallel_fraction=1.0", "sft.max_steps=8", "sft.batch_size=8",
    f"grpo.total_steps={STEPS}", "rollout.questions_per_step=4", "rollout.group_size=2", "rollout.max_turns=3",
    "rollout.max_new_tokens_per_turn=160", "async.max_staleness=0", "eval.num_questions=0",
    "checkpoint.every_steps=0", "logging.wandb_mode=disabled", "logging.progress_bar=false", "logging.plots=false",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return train_run("configs/mixed_quickstart.yaml", tmp_path_factory.mktemp("runs"), "mixed_e2e", TINY_MIXED_RUN)


def test_the_warm_start_learned_from_both_kinds_of_demonstrations(run_dir):
    summary = json.loads((run_dir / "sft" / "sft_summary.json").read_text())
    environments = summary["environments"]
    # half of the demonstrations of each kind were played (data.mixed.apps_fraction=0.5); the ones that do not fit
    # the tiny run's limits (a fanned-out turn over max_new_tokens_per_turn, an apps solution over max_turns) are dropped
    assert 1 <= environments["qa"] <= NUM_SFT // 2 and 1 <= environments["apps"] <= NUM_SFT // 2
    assert summary["num_trajectories"] == environments["qa"] + environments["apps"]
    config = (run_dir / "config.yaml").read_text()
    assert "data.apps.server" in config  # the apps server joined tools.mcp_servers next to search


def test_every_step_logs_each_environments_rewards_under_its_own_keys(run_dir):
    training_rows = step_rows(run_dir)
    assert [row["step"] for row in training_rows] == list(range(1, STEPS + 1))
    seen = set()
    for row in training_rows:
        if "reward/total/qa" in row:
            seen.add("qa")
            assert 0.0 <= row["reward/exact_match/qa"] <= 1.0
            assert "reward/apps_success/qa" not in row  # QA samples are scored with the QA weights
            assert 0.0 <= row["reward/total/qa"] <= 1.5  # the QA weights sum to 1.5
        if "reward/total/apps" in row:
            seen.add("apps")
            assert 0.0 <= row["reward/apps_success/apps"] <= 1.0
            assert "reward/exact_match/apps" not in row  # apps samples are scored with the apps preset
            assert 0.0 <= row["reward/total/apps"] <= 1.5
        assert 1 <= row["rollout/model_calls"] <= 4  # max_turns 3 + the forced answer
        assert row["async/staleness_max"] == 0 and row["rollout/groups_lost"] == 0
    assert seen == {"qa", "apps"}
    assert "reward/total/apps" in training_rows[0] and "reward/total/qa" in training_rows[0]


def test_eval_reports_one_dataset_per_environment(run_dir):
    results = json.loads((run_dir / "eval.json").read_text())
    assert set(results) == {"world", "apps"}
    assert results["world"]["all"]["n"] == NUM_QA_TEST and results["apps"]["all"]["n"] == NUM_APPS_TEST
    assert "success" not in results["world"]["all"] and 0.0 <= results["apps"]["all"]["success"] <= 1.0
    for rows in results.values():
        for figures in rows.values():
            assert 0.0 <= figures["em"] <= 1.0 and 0.0 <= figures["format_valid"] <= 1.0
            assert 1.0 <= figures["model_calls"] <= 4.0
