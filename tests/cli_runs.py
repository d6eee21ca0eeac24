"""`fanout` in a subprocess, as the end-to-end and reliability tests run it, and what a run writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from rl.bench.common import DISTRIBUTED_VARIABLES

ROOT = Path(__file__).resolve().parents[1]


def run_fanout(
    arguments: list[str],
    env: dict[str, str] | None = None,
    timeout_s: float = 600,
) -> subprocess.CompletedProcess:
    """`python -m rl ARGS` in its own session (run_in_session)."""
    environment = {
        # never the distributed variables of an in-process trainer test: its MASTER_PORT is still bound
        **{key: value for key, value in os.environ.items() if key not in DISTRIBUTED_VARIABLES},
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "RAY_DEDUP_LOGS": "0",
        **(env or {}),
    }
    return run_in_session([sys.executable, "-m", "rl", *arguments], environment, timeout_s)


def run_in_session(command: list[str], environment: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess:
    """`command` from the repository root in its own session; afterwards whatever it left running (Ray) is
    killed too.

    A process killed with SIGKILL cannot stop the Ray processes it started, so the session's process
    group is killed once the command is over (only processes this call started are in it).
    """
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=environment,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if process.poll() is None:
            process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def train_run(config: str, output_dir: Path, name: str, overrides: list[str], timeout_s: float = 900) -> Path:
    """`fanout train CONFIG` into output_dir/name, which it returns; a failed run fails the caller with its stderr."""
    result = run_fanout(["train", config, f"experiment.output_dir={output_dir}", f"experiment.name={name}",
                         *overrides], timeout_s=timeout_s)
    assert result.returncode == 0, result.stderr[-4000:]
    return Path(output_dir) / name


def metrics_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def step_rows(run_dir: Path) -> list[dict]:
    """The rows of training steps (evaluation rows carry no reward/total)."""
    return [row for row in metrics_rows(run_dir) if "reward/total" in row]
