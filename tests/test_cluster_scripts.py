"""The cluster scripts for real on this machine: a two-node Ray cluster, a submitted job that trains, its metrics.

- scripts/ray_cluster.sh: `head` and `worker` start the two nodes (the worker with the custom resource
  `rollout_node`), `submit` hands a tiny quickstart to the cluster with `ray job submit` and waits for it.
- scripts/slurm_ray.sbatch: run by a stand-in `sbatch` that executes the batch script here and, like
  Slurm at the end of a job, stops what it started; its `srun` runs each step locally and `hostname`
  gives the fake nodes the address 127.0.0.1.

Both check that the job trained its steps, that the rollout actor ran on the worker node
(`rollout.worker_resources`) and not beside the trainer, and that the actor's output reached the job's
logs (`rollout.actor_logs=all`). Other Ray sessions may share the machine, so the test's Ray stays apart:
nodes run with `--block` in their own process group and teardown stops exactly them (never `ray stop`,
which would stop every Ray on the machine), ports are picked free, and RAY_TMPDIR gives the test's Ray a
private temp folder (`ray start` records its address in <temp>/ray/ray_current_cluster, where any plain
`ray.init()` on the machine would otherwise find it and join). Slow: about 2 min each on 2 shared CPU cores.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from rl.app.metrics import read_metrics
from rl.bench.common import DISTRIBUTED_VARIABLES

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
STEPS = 2
TINY_RUN = [
    "data.world.num_entities_per_kind=20", "data.world.num_train=100", "data.world.num_validation=10",
    "data.world.num_test=24", "model.tiny.hidden_size=64", "model.tiny.intermediate_size=128",
    "model.tiny.vocab_size=1024", "model.tiny.pretrain_steps=0", "sft.num_trajectories=40", "sft.max_steps=20",
    "sft.comparison_drills=12",
    "sft.batch_size=8", f"grpo.total_steps={STEPS}", "rollout.questions_per_step=2", "rollout.group_size=2",
    "rollout.max_new_tokens_per_turn=24", "rollout.max_turns=2", "eval.num_questions=8",
    "logging.wandb_mode=disabled", "logging.progress_bar=false",
    "rollout.worker_resources={rollout_node: 1}", "rollout.actor_logs=all",
]
NODE_ARGS = ["--object-store-memory", "300000000", "--disable-usage-stats"]
JOB_TIMEOUT_S = 900


def free_ports(count: int) -> list[int]:
    """Ports free now, from the ephemeral range (never Ray's worker port range 10002-19999)."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.fixture
def ray_tmpdir():
    """A private root for Ray's temp folder: short, because Ray's unix socket paths must stay under 108 bytes."""
    path = tempfile.mkdtemp(prefix="fanout-ray-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def script_environment(tmp_path: Path, ray_tmpdir: str, **extra: str) -> dict[str, str]:
    inherited = {key: value for key, value in os.environ.items()
                 if key not in DISTRIBUTED_VARIABLES and not key.startswith(("SLURM_", "RAY_ADDRESS", "RAY_JOB_"))}
    return {**inherited, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled", "RAY_TMPDIR": ray_tmpdir,
            "FANOUT_OUTPUT_DIR": str(tmp_path / "runs"), **extra}


class ProcessGroup:
    """A command in its own process group (session); stop() sends SIGTERM to the group, then SIGKILL."""

    def __init__(self, command: list[str], log_path: Path, environment: dict[str, str]):
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def wait_for_output(self, text: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.log_path.read_text():
            assert self.process.poll() is None, f"{self.log_path.name} exited:\n{self.log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no '{text}' in {self.log_path.name}:\n{self.log_path.read_text()[-3000:]}"
            time.sleep(0.5)

    def stop(self, timeout_s: float = 60) -> None:
        """Ray's `start --block` stops the processes it started on SIGTERM; whatever is left is killed."""
        group = self.process.pid
        for signal_number, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10)):
            try:
                os.killpg(group, signal_number)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and group_is_alive(group):
                self.process.poll()
                time.sleep(0.5)
        self.process.wait(timeout=10)
        self._log.close()


def group_is_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def node_ids_with_resource(environment: dict[str, str], dashboard_port: int, resource: str) -> set[str]:
    """The ids of the live nodes that offer `resource`, from Ray's state API (with the scripts' auth rule)."""
    command = (f"source scripts/lib/ray_job.sh && use_ray_token_auth > /dev/null && "
               f"ray list nodes --address http://127.0.0.1:{dashboard_port} --format json")
    listed = subprocess.run(["bash", "-c", command], cwd=ROOT, env=environment, capture_output=True, text=True,
                            timeout=120, check=True)
    return {node["node_id"] for node in json.loads(listed.stdout)
            if node["state"] == "ALIVE" and resource in node["resources_total"]}


def check_trained_with_the_actor_on_the_worker_node(run_dir: Path, job_output: str) -> str:
    """The run's steps, the actor's placement (from the metrics) and its node id (from its info line)."""
    rows = [row for row in read_metrics(run_dir / "metrics.jsonl") if "reward/total" in row]
    assert [row["step"] for row in rows] == list(range(1, STEPS + 1))
    assert all(row["rollout/groups_generated"] > 0 for row in rows)
    # the job's driver (the trainer) runs on the head node, the actor only where `rollout_node` is
    assert all(row["rollout/actors_on_driver_node"] == 0 and row["rollout/actor_nodes"] == 1 for row in rows)
    assert (run_dir / "eval.json").is_file()
    # rollout.actor_logs=all: the actor's info line reached the job's logs
    marker = "rollout actor 0 on Ray node "
    actor_lines = [line for line in job_output.splitlines() if marker in line]
    assert actor_lines, job_output[-6000:]
    return actor_lines[0].split(marker)[1].split(":")[0]


def token_auth_expected() -> bool:
    """use_ray_token_auth (scripts/lib/ray_job.sh) turns token auth on: a token and no explicit mode."""
    has_token = bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                     or (Path.home() / ".ray" / "auth_token").is_file())
    return has_token and not os.environ.get("RAY_AUTH_MODE")


def test_ray_cluster_script_trains_on_a_two_node_cluster(tmp_path, ray_tmpdir):
    gcs_port, dashboard_port, head_agent_port, worker_agent_port, client_port = free_ports(5)
    environment = script_environment(tmp_path, ray_tmpdir)
    started = time.monotonic()
    head = ProcessGroup(
        ["bash", str(SCRIPTS / "ray_cluster.sh"), "head", "--port", str(gcs_port), "--dashboard-port",
         str(dashboard_port), "--dashboard-host", "127.0.0.1", "--num-cpus", "1", "--", "--block",
         "--dashboard-agent-listen-port", str(head_agent_port), "--ray-client-server-port", str(client_port),
         *NODE_ARGS],
        tmp_path / "head.log", environment)
    nodes = [head]
    try:
        head.wait_for_output("Ray runtime started")
        worker = ProcessGroup(
            ["bash", str(SCRIPTS / "ray_cluster.sh"), "worker", "--address", f"127.0.0.1:{gcs_port}", "--num-cpus",
             "1", "--resources", '{"rollout_node": 1}', "--", "--block", "--dashboard-agent-listen-port",
             str(worker_agent_port), *NODE_ARGS],
            tmp_path / "worker.log", environment)
        nodes.append(worker)
        worker.wait_for_output("Ray runtime started")
        cluster_up_s = time.monotonic() - started
        submit = subprocess.run(
            ["bash", str(SCRIPTS / "ray_cluster.sh"), "submit", "--address", "127.0.0.1", "--dashboard-port",
             str(dashboard_port), "--trainer-gpus", "0", "configs/quickstart.yaml", "experiment.name=cluster",
             *TINY_RUN],
            cwd=ROOT, env=environment, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
        assert submit.returncode == 0, submit.stdout[-6000:] + submit.stderr[-3000:]
        assert ("RAY_AUTH_MODE=token" in submit.stdout) == token_auth_expected()
        worker_node_ids = node_ids_with_resource(environment, dashboard_port, "rollout_node")
    finally:
        for node in reversed(nodes):
            node.stop()
    print(f"cluster up in {cluster_up_s:.0f} s, whole test {time.monotonic() - started:.0f} s", file=sys.stderr)
    actor_node_id = check_trained_with_the_actor_on_the_worker_node(tmp_path / "runs" / "cluster", submit.stdout)
    assert {actor_node_id} == worker_node_ids


FAKE_SRUN = """#!/usr/bin/env bash
# Stand-in srun: run the step here (every fake node is this machine); srun's own options are dropped.
set -euo pipefail
while [[ $# -gt 0 && "$1" == -* ]]; do
  case "$1" in
    -w|--nodelist|-N|-n|--nodes|--ntasks) shift 2 ;;
    *) shift ;;
  esac
done
exec "$@"
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
# Stand-in scontrol: only `scontrol show hostnames A,B,...`.
set -euo pipefail
[[ "$1 $2" == "show hostnames" ]] || { echo "fake scontrol: only 'show hostnames'" >&2; exit 2; }
tr ',' '\\n' <<< "$3"
"""
FAKE_HOSTNAME = """#!/usr/bin/env bash
# Stand-in hostname: the fake nodes live at 127.0.0.1.
set -euo pipefail
if [[ "${1:-}" == "--ip-address" || "${1:-}" == "-i" ]]; then echo 127.0.0.1; else PATH="${PATH#*:}" exec hostname "$@"; fi
"""
FAKE_SBATCH = """#!/usr/bin/env python3
# Stand-in sbatch: runs the batch script here, now (like `sbatch --wait`), from a spool copy as Slurm does,
# with the SLURM_* variables of a 2-node allocation; at the end stops the job's processes as Slurm does.
import os, shutil, signal, subprocess, sys, tempfile, time

arguments = sys.argv[1:]
while arguments and arguments[0].startswith("-"):
    arguments = arguments[2:] if "=" not in arguments[0] else arguments[1:]
script, script_arguments = arguments[0], arguments[1:]
spool = tempfile.mkdtemp(prefix="fake-slurm-spool-")
shutil.copy(script, os.path.join(spool, "slurm_script"))
job_id = str(os.getpid())
environment = {**os.environ, "SLURM_JOB_ID": job_id, "SLURM_JOB_NODELIST": "node-0,node-1",
               "SLURM_SUBMIT_DIR": os.getcwd(), "SLURM_CPUS_PER_TASK": "1", "SLURM_GPUS_ON_NODE": "0"}
print(f"Submitted batch job {job_id}", flush=True)
job = subprocess.Popen(["bash", os.path.join(spool, "slurm_script"), *script_arguments], env=environment,
                       start_new_session=True)
signal.signal(signal.SIGTERM, lambda *_: os.killpg(job.pid, signal.SIGTERM))  # scancel: the job ends, cleanup runs
status = job.wait()
for signal_number, wait_s in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
    deadline = time.monotonic() + wait_s
    try:
        os.killpg(job.pid, signal_number)
        while time.monotonic() < deadline:
            os.killpg(job.pid, 0)
            time.sleep(0.5)
    except ProcessLookupError:
        break
shutil.rmtree(spool)
sys.exit(status)
"""


def install_fake_slurm(bin_dir: Path) -> None:
    bin_dir.mkdir()
    for name, text in {"srun": FAKE_SRUN, "scontrol": FAKE_SCONTROL, "hostname": FAKE_HOSTNAME,
                       "sbatch": FAKE_SBATCH}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)


def test_slurm_batch_script_trains_on_two_fake_nodes(tmp_path, ray_tmpdir):
    install_fake_slurm(tmp_path / "bin")
    gcs_port, dashboard_port, head_agent_port, worker_agent_port, client_port = free_ports(5)
    environment = script_environment(
        tmp_path, ray_tmpdir, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}", FANOUT_RAY_PORT=str(gcs_port),
        FANOUT_DASHBOARD_PORT=str(dashboard_port), FANOUT_DASHBOARD_HOST="127.0.0.1",
        FANOUT_RAY_HEAD_ARGS=" ".join(["--dashboard-agent-listen-port", str(head_agent_port),
                                       "--ray-client-server-port", str(client_port), *NODE_ARGS]),
        FANOUT_RAY_WORKER_ARGS=" ".join(['--resources={"rollout_node":1}', "--dashboard-agent-listen-port",
                                         str(worker_agent_port), *NODE_ARGS]))
    started = time.monotonic()
    job = ProcessGroup(["sbatch", "scripts/slurm_ray.sbatch", "configs/quickstart.yaml", "experiment.name=slurm",
                        *TINY_RUN], tmp_path / "slurm.out", environment)
    try:
        job.process.wait(timeout=JOB_TIMEOUT_S)
    finally:
        job.stop()
    output = job.log_path.read_text()
    assert job.process.returncode == 0, output[-6000:]
    print(f"whole test {time.monotonic() - started:.0f} s", file=sys.stderr)
    assert "+ srun --nodes=1 --ntasks=1 -w node-1 ray start --address 127.0.0.1:" in output
    assert ("RAY_AUTH_MODE=token" in output) == token_auth_expected()
    assert output.count("Ray runtime started") == 2  # the head and the worker node, each by its srun
    check_trained_with_the_actor_on_the_worker_node(tmp_path / "runs" / "slurm", output)
