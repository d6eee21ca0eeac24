"""`torchrun --nproc_per_node=2 -m rl train` on CPU: a data-parallel run that is killed and resumes.

The tiny run of the reliability tests (untrained tiny model, no SFT, 2 questions x 2 samples, one short
turn, synchronous) under ZeRO-3 on 2 ranks over gloo. The first launch is SIGKILLed after step 1 and its
checkpoint (FANOUT_FAULT_EXIT_AT, rl/grpo/faults.py: every rank kills itself at the same point); the
second resumes with experiment.resume=true and finishes step 2. Each launch costs 30 to 45 s on 2 shared
CPU cores (two DeepSpeed ranks and a Ray rollout actor), so the default suite runs the first launch and
the resume is `slow` (`pytest -m slow tests/rl/app/test_train_data_parallel.py`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli_runs import ROOT, metrics_rows, run_in_session
from rl.grpo.checkpoint import load_trainer_state
from rl.grpo.distributed import DISTRIBUTED_VARIABLES
from rl.grpo.faults import FAULT_ENV

TINY_RUN = [
    "data.world.num_entities_per_kind=20", "data.world.num_train=100", "data.world.num_validation=10",
    "data.world.num_test=30", "sft.enabled=false", "model.tiny.pretrain_steps=0", "rollout.questions_per_step=2",
    "rollout.group_size=2",
    "rollout.max_turns=1", "rollout.max_new_tokens_per_turn=16", "async.max_staleness=0",
    "deepspeed.zero_stage=3", "grpo.total_steps=2", "checkpoint.every_steps=1", "eval.at_end=false",
    "logging.plots=false", "logging.progress_bar=false", "logging.wandb_mode=disabled",
]


def torchrun_train(output_dir: Path, *overrides: str, fault: str = "") -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 -m rl train` in its own session, killed whole afterwards
    (a SIGKILLed rank 0 cannot stop the Ray processes it started)."""
    environment = {key: value for key, value in os.environ.items() if key not in DISTRIBUTED_VARIABLES}
    environment.update(PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), environment.get("PYTHONPATH")])),
                       OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    if fault:
        environment[FAULT_ENV] = fault
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "rl",
               "train", "configs/quickstart.yaml", f"experiment.output_dir={output_dir}", "experiment.name=dp",
               *TINY_RUN, *overrides]
    return run_in_session(command, environment, timeout_s=600)


@dataclass
class KilledRun:
    output_dir: Path
    run_dir: Path
    killed: subprocess.CompletedProcess
    rows_after_kill: list[dict]
    latest_after_kill: str


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory) -> KilledRun:
    output_dir = tmp_path_factory.mktemp("data_parallel_run")
    run_dir = output_dir / "dp"
    killed = torchrun_train(output_dir, fault="step:1")
    assert (run_dir / "metrics.jsonl").is_file(), killed.stderr[-4000:]
    latest_after_kill = (run_dir / "checkpoints" / "latest").read_text().strip()
    return KilledRun(output_dir, run_dir, killed, metrics_rows(run_dir), latest_after_kill)


def test_two_ranks_train_and_log_the_world_size(killed_run):
    run = killed_run
    assert run.killed.returncode != 0  # every rank was SIGKILLed after step 1
    assert [row["step"] for row in run.rows_after_kill] == [1]
    assert run.rows_after_kill[0]["perf/world_size"] == 2.0
    assert run.latest_after_kill == "checkpoint-1"
    state = load_trainer_state(run.run_dir / "checkpoints" / "checkpoint-1")
    assert state["world_size"] == 2 and len(state["rng_by_rank"]) == 2


@pytest.mark.slow
def test_the_resumed_run_finishes_on_two_ranks_from_the_checkpoint(killed_run):
    run = killed_run
    resumed = torchrun_train(run.output_dir, "experiment.resume=true")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    rows = metrics_rows(run.run_dir)
    assert [row["step"] for row in rows] == [1, 2]
    assert all(row["perf/world_size"] == 2.0 for row in rows)
    resumed_row = rows[1]
    assert resumed_row["async/policy_version"] == 2.0  # version 1 from the checkpoint, then one step
    # Synchronous: the resumed batch was generated with the checkpoint's weights (version 1), nothing dropped.
    assert resumed_row["async/staleness_mean"] == 0.0 and resumed_row["async/dropped_groups"] == 0.0
    final = run.run_dir / "checkpoints" / "checkpoint-2"
    assert load_trainer_state(final)["version"] == 2
    shards = sorted(path.name for path in (final / "deepspeed" / "state").iterdir())
    assert shards == [f"zero_pp_rank_{rank}_mp_rank_00_{kind}_states.pt" for rank in (0, 1)
                      for kind in ("model", "optim")]
    assert (final / "model" / "model.safetensors").is_file()  # the full weights, gathered by rank 0


def test_the_deepspeed_launchers_local_rank_option_is_accepted():
    """`deepspeed --module rl train ...` runs `python -m rl --local_rank=N train ...` (the rank itself comes
    from the environment the launcher sets)."""
    from rl.cli import build_parser

    args = build_parser().parse_args(["--local_rank=1", "train", "configs/quickstart.yaml", "grpo.total_steps=1"])
    assert args.command == "train" and args.overrides == ["grpo.total_steps=1"]
