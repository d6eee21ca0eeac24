"""Trainer interruption: `fanout train` is SIGKILLed between steps, after an optimizer update and inside a
checkpoint save; `experiment.resume=true` then continues from the last complete checkpoint.

The kills come from the FANOUT_FAULT_EXIT_AT test hook (rl/grpo/faults.py): the process sends itself SIGKILL
at a named point, so nothing gets to clean up, exactly as with `kill -9`. The runs are synchronous
(async.max_staleness=0), so step n trains exactly the next 2 questions of the seeded data cursor: after
step n the questions trained are the first 2n of the cursor's order, whatever was interrupted, a
figure computed by hand from `DataCursor`. Every run starts from the untrained tiny model (no SFT) and
shares one generated world, so one `fanout train` costs tens of seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from reliability_helpers import (
    SIGKILL_RETURN_CODE,
    TINY_TRAINING_OVERRIDES,
    metrics_rows,
    run_fanout,
    trainer_state,
)

from rl.grpo.checkpoint import find_latest_checkpoint, load_trainer_state
from rl.grpo.faults import FAULT_ENV, fault_point, parse_fault_spec
from rollouts.data_cursor import DataCursor

QUESTIONS_PER_STEP = 2
SECRET = "wandb-secret-0123456789abcdef"  # set as WANDB_API_KEY: it must not reach any file of the run


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shared_world")


def train(
    output_dir: Path,
    world_dir: Path,
    model_path: Path,
    total_steps: int,
    *extra: str,
    fault: str = "",
    env: dict | None = None,
):
    arguments = [
        "train",
        "configs/quickstart.yaml",
        f"experiment.output_dir={output_dir}",
        "experiment.name=run",
        f"data.world_dir={world_dir}",
        f"model.path={model_path}",
        f"grpo.total_steps={total_steps}",
        "async.max_staleness=0",
        *TINY_TRAINING_OVERRIDES,
        *extra,
    ]
    environment = {**(env or {}), **({FAULT_ENV: fault} if fault else {})}
    return run_fanout(arguments, env=environment)


def questions_trained(checkpoint_dir: Path) -> set[int]:
    """Indices of the questions trained on up to this checkpoint: handed out and not re-queued."""
    cursor_state = trainer_state(checkpoint_dir)["extra_state"]["rollout_manager"]["cursor"]
    assert cursor_state["epoch"] == 0
    handed_out = DataCursor(cursor_state["num_items"], seed=cursor_state["seed"]).take(
        cursor_state["position"]
    )
    return set(handed_out) - set(cursor_state["requeued"])


def first_questions_of_the_cursor(count: int) -> set[int]:
    return set(DataCursor(100, seed=0).take(count))  # data.world.num_train=100, experiment.seed=0


def training_steps(run_dir: Path) -> list[int]:
    return [row["step"] for row in metrics_rows(run_dir)]


# ------------------------------------------------------------------ the hook itself


def test_the_fault_hook_kills_only_at_its_point_and_refuses_a_malformed_spec(monkeypatch):
    assert parse_fault_spec("mid_step:12") == ("mid_step", 12)
    for malformed in ("mid-step:2", "step", "step:two", "save:-1"):
        with pytest.raises(ValueError, match=FAULT_ENV):
            parse_fault_spec(malformed)
    monkeypatch.setenv(FAULT_ENV, "save:3")
    fault_point("save", 2)  # another step or point: nothing happens
    fault_point("step", 3)
    program = (
        "from rl.grpo.faults import fault_point; fault_point('save', 2); fault_point('save', 3); print('alive')"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        env={**os.environ, FAULT_ENV: "save:3"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == SIGKILL_RETURN_CODE and "alive" not in result.stdout


# ------------------------------------------------------------------ kill between steps (default suite)


@dataclass
class InterruptedRun:
    run_dir: Path
    killed_returncode: int
    rows_after_kill: list[dict]
    latest_after_kill: str
    resumed_returncode: int
    resumed_stderr: str


@pytest.fixture(scope="module")
def killed_between_steps(tmp_path_factory, world_dir, tiny_checkpoint) -> InterruptedRun:
    output_dir = tmp_path_factory.mktemp("between_steps")
    run_dir = output_dir / "run"
    secret_env = {"WANDB_API_KEY": SECRET}
    killed = train(output_dir, world_dir, tiny_checkpoint, 2, fault="step:1", env=secret_env)
    assert killed.returncode == SIGKILL_RETURN_CODE, killed.stderr[-3000:]
    rows_after_kill = metrics_rows(run_dir)
    latest_after_kill = (run_dir / "checkpoints" / "latest").read_text().strip()
    resumed = train(output_dir, world_dir, tiny_checkpoint, 2, "experiment.resume=true", env=secret_env)
    return InterruptedRun(
        run_dir, killed.returncode, rows_after_kill, latest_after_kill, resumed.returncode, resumed.stderr
    )


def test_a_kill_between_steps_leaves_the_checkpoint_of_the_last_step(killed_between_steps):
    run = killed_between_steps
    assert [row["step"] for row in run.rows_after_kill] == [1]
    assert run.latest_after_kill == "checkpoint-1"
    state = trainer_state(run.run_dir / "checkpoints" / "checkpoint-1")
    assert (state["step"], state["version"]) == (1, 1)
    assert questions_trained(run.run_dir / "checkpoints" / "checkpoint-1") == first_questions_of_the_cursor(2)


def test_resume_continues_at_the_next_step_with_the_saved_cursor_and_version(killed_between_steps):
    run = killed_between_steps
    assert run.resumed_returncode == 0, run.resumed_stderr[-3000:]
    rows = metrics_rows(run.run_dir)
    assert [row["step"] for row in rows] == [1, 2]  # step 2 follows the checkpoint; nothing logged twice
    assert [row["async/policy_version"] for row in rows] == [1, 2]
    assert rows[0] == run.rows_after_kill[0]  # the resumed run did not redo step 1
    final = find_latest_checkpoint(run.run_dir)
    assert final.name == "checkpoint-2"
    state = trainer_state(final)
    assert (state["step"], state["version"]) == (2, 2)
    assert questions_trained(final) == first_questions_of_the_cursor(4)  # no question skipped or repeated
    assert rows[1]["rollout/groups_lost"] == 0


def test_no_secret_from_the_environment_reaches_the_run_folder(killed_between_steps):
    run = killed_between_steps
    assert run.resumed_returncode == 0, run.resumed_stderr[-3000:]
    written = [path for path in run.run_dir.rglob("*") if path.is_file()]
    assert {"config.yaml", "metrics.jsonl"} <= {path.name for path in written}
    assert [path for path in written if SECRET.encode() in path.read_bytes()] == []


# ------------------------------------------------------------------ kill inside a save, then mid-step (slow)


@pytest.mark.slow
def test_kills_inside_a_checkpoint_save_and_after_an_update_lose_nothing(
    tmp_path, world_dir, tiny_checkpoint
):
    run_dir = tmp_path / "run"
    checkpoints = run_dir / "checkpoints"
    secret_env = {"WANDB_API_KEY": SECRET}

    # 1. killed inside the save of checkpoint-2: files written, folder not renamed, `latest` not moved
    killed = train(tmp_path, world_dir, tiny_checkpoint, 3, fault="save:2", env=secret_env)
    assert killed.returncode == SIGKILL_RETURN_CODE, killed.stderr[-3000:]
    assert training_steps(run_dir) == [1, 2]  # step 2 was logged before its save
    assert (checkpoints / "latest").read_text().strip() == "checkpoint-1"
    half_written = [path for path in checkpoints.iterdir() if path.name.startswith(".tmp-checkpoint-2")]
    assert len(half_written) == 1 and (half_written[0] / "trainer_state.pt").is_file()
    assert not (checkpoints / "checkpoint-2").exists()
    assert find_latest_checkpoint(run_dir).name == "checkpoint-1"
    assert load_trainer_state(checkpoints / "checkpoint-1")["version"] == 1  # the previous one still loads

    # 2. resumed from checkpoint-1, killed after the optimizer update of step 3 (not logged, not saved)
    killed = train(
        tmp_path, world_dir, tiny_checkpoint, 3, "experiment.resume=true", fault="mid_step:3", env=secret_env
    )
    assert killed.returncode == SIGKILL_RETURN_CODE, killed.stderr[-3000:]
    assert training_steps(run_dir) == [1, 2]  # step 2 redone and logged once, step 3 never logged
    assert find_latest_checkpoint(run_dir).name == "checkpoint-2"
    assert not [path.name for path in checkpoints.iterdir() if path.name.startswith((".tmp-", ".old-"))]
    assert questions_trained(checkpoints / "checkpoint-2") == first_questions_of_the_cursor(4)

    # 3. resumed from checkpoint-2 (wandb offline this time): completes
    finished = train(
        tmp_path,
        world_dir,
        tiny_checkpoint,
        3,
        "experiment.resume=true",
        "logging.wandb_mode=offline",
        env={**secret_env, "WANDB_MODE": "offline"},
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    rows = metrics_rows(run_dir)
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert [row["async/policy_version"] for row in rows] == [1, 2, 3]
    final = find_latest_checkpoint(run_dir)
    assert final.name == "checkpoint-3" and trainer_state(final)["version"] == 3
    assert questions_trained(final) == first_questions_of_the_cursor(6)
    assert (run_dir / "wandb").is_dir()
    leaked = [path for path in run_dir.rglob("*") if path.is_file() and SECRET.encode() in path.read_bytes()]
    assert leaked == []
