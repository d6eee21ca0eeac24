"""The rollout manager on a two-node Ray cluster (ray.cluster_utils.Cluster: a head and a worker node in
this machine's processes): actors placed by `rollout.worker_resources`, their node reported in the
metrics, their logs streamed to the driver per `rollout.actor_logs`, and a driver that joins as a
submitted job would, without repeating the job's env vars (Ray refuses to merge them).

Model-free stand-in actors keep this to seconds; tests/test_cluster_scripts.py trains for real through
scripts/ray_cluster.sh and scripts/slurm_ray.sbatch (slow).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

from data.types import Question
from rl.app.rollout_setup import build_rollout_manager
from rl.config import ExperimentConfig
from rollouts.manager import ACTOR_ENV_VARS, JOB_CONFIG_VARIABLE, driver_runtime_env, init_ray, warn_if_no_node_has

QUESTIONS = [Question(id=f"q{index}", question=f"Question {index}?", answers=["a"]) for index in range(8)]
# What a `ray job submit --runtime-env-json` of scripts/ray_cluster.sh hands the driver (plus a marker).
JOB_ENV_VARS = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "FANOUT_TEST_JOB_VARIABLE": "from-the-job"}


def make_reporting_worker_class():
    """RolloutWorker's methods without a model; it logs one error and one info line when it starts and
    reports its environment (defined here so Ray pickles it by value)."""

    class ReportingRolloutWorker:
        def __init__(self, config, setup):
            import logging as logging_module

            from rollouts.worker import configure_actor_logging

            self.setup = setup
            configure_actor_logging(config.rollout.actor_logs)
            log = logging_module.getLogger("rollouts.test_actor")
            log.error("ACTOR-ERROR-LINE worker %d", setup.worker_id)
            log.info("ACTOR-INFO-LINE worker %d", setup.worker_id)

        def generate(self, questions, group_size, version, seed):
            from data.trajectory import Group, Trajectory
            from rollouts.worker import current_node_id, tag_groups

            groups = [Group(group_id=f"{question.id}-{seed}", question=question, policy_version=version,
                            trajectories=[Trajectory(question=question, prompt_ids=[1], policy_version=version,
                                                     reward=1.0) for _ in range(group_size)])
                      for question in questions]
            return tag_groups(groups, self.setup.worker_id, 0.0, current_node_id())

        def update_weights(self, weights, version):
            return 0.0

        def node_id(self):
            from rollouts.worker import current_node_id

            return current_node_id()

        def environment(self, names):
            import os

            return {name: os.environ.get(name) for name in names}

    return ray.remote(ReportingRolloutWorker)


@pytest.fixture(scope="module")
def two_node_cluster():
    """A head (the driver's node) and a worker node with the custom resource `rollout_node`.

    RAY_TMPDIR keeps the cluster's temp folder private: Cluster records its address in
    <temp>/ray/ray_current_cluster, where a plain `ray.init()` of any other process on the machine would
    otherwise find it and join it instead of starting its own Ray.
    """
    if ray.is_initialized():
        ray.shutdown()
    ray_tmpdir = tempfile.mkdtemp(prefix="fanout-ray-", dir="/tmp")  # short: unix socket paths < 108 bytes
    patch = pytest.MonkeyPatch()
    patch.setenv("RAY_TMPDIR", ray_tmpdir)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker_node = cluster.add_node(num_cpus=2, resources={"rollout_node": 2})
    cluster.wait_for_nodes()
    patch.setenv("RAY_ADDRESS", cluster.address)
    patch.setenv(JOB_CONFIG_VARIABLE, json.dumps({"runtime_env": {"env_vars": JOB_ENV_VARS}}))
    init_ray()  # raises "Failed to merge the Job's runtime env" if it repeats a name of the job's
    yield cluster, worker_node
    ray.shutdown()
    cluster.shutdown()
    patch.undo()
    shutil.rmtree(ray_tmpdir, ignore_errors=True)


def cluster_config(actor_logs: str = "errors", num_workers: int = 2) -> ExperimentConfig:
    config = ExperimentConfig()
    config.rollout.num_workers = num_workers
    config.rollout.worker_num_cpus = 0.5
    config.rollout.worker_resources = {"rollout_node": 1}
    config.rollout.actor_logs = actor_logs
    config.rollout.group_size = 2
    config.rollout.questions_per_step = 2
    config.rollout.questions_per_worker_call = 1
    config.async_.max_staleness = 0
    config.async_.max_buffered_groups = 8
    return config


def test_driver_runtime_env_leaves_the_jobs_names_to_the_job(monkeypatch):
    monkeypatch.delenv(JOB_CONFIG_VARIABLE, raising=False)
    assert driver_runtime_env() == {"env_vars": ACTOR_ENV_VARS}
    monkeypatch.setenv(JOB_CONFIG_VARIABLE, json.dumps({"runtime_env": {"env_vars": JOB_ENV_VARS}, "metadata": {}}))
    assert driver_runtime_env() == {"env_vars": {"TRANSFORMERS_OFFLINE": "1"}}
    monkeypatch.setenv(JOB_CONFIG_VARIABLE, json.dumps({"runtime_env": {"env_vars": ACTOR_ENV_VARS}}))
    assert driver_runtime_env() is None
    monkeypatch.setenv(JOB_CONFIG_VARIABLE, json.dumps({"runtime_env": {"working_dir": "gcs://x.zip"}}))
    assert driver_runtime_env() == {"env_vars": ACTOR_ENV_VARS}


def test_a_local_ray_is_its_own_even_after_ray_start_on_this_machine(tmp_path, monkeypatch):
    """`ray start` records its cluster in <temp>/ray/ray_current_cluster; a laptop run must not join it."""
    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.setenv("RAY_TMPDIR", tempfile.mkdtemp(prefix="fanout-ray-", dir="/tmp"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (Path(os.environ["RAY_TMPDIR"]) / "ray").mkdir()
    (Path(os.environ["RAY_TMPDIR"]) / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")  # nobody there
    try:
        init_ray(num_cpus=1)
        assert ray.cluster_resources()["CPU"] == 1
    finally:
        ray.shutdown()
        shutil.rmtree(os.environ["RAY_TMPDIR"], ignore_errors=True)


def test_actors_run_on_the_worker_node_with_the_jobs_and_the_drivers_env_vars(two_node_cluster):
    cluster, worker_node = two_node_cluster
    assert ray.get_runtime_context().get_node_id() == cluster.head_node.node_id
    with build_rollout_manager(cluster_config(), QUESTIONS, model_path="unused",
                               actor_class=make_reporting_worker_class()) as manager:
        batch = manager.get_batch(2, current_version=0, timeout=120)
        assert {group.node_id for group in batch} == {worker_node.node_id}
        stats = manager.stats()
        assert stats["rollout/actors_on_driver_node"] == 0
        assert stats["rollout/actor_nodes"] == 1
        environment = ray.get(manager.worker_handles()[0].environment.remote(list({**JOB_ENV_VARS, **ACTOR_ENV_VARS})))
    assert environment == {**ACTOR_ENV_VARS, **JOB_ENV_VARS}  # the job's variables and the driver's addition


def test_resources_no_node_has_are_reported(two_node_cluster, caplog):
    with caplog.at_level(logging.WARNING, logger="rollouts.manager"):
        warn_if_no_node_has({"rollout_node": 1})
        assert not caplog.records
        warn_if_no_node_has({"gpu_node": 1})
    assert "gpu_node" in caplog.text and "ray start --resources" in caplog.text


def read_driver_output_until(capfd, marker: str, output: str = "", timeout_s: float = 30.0) -> str:
    """`output` plus what the driver printed since (Ray prints the actors' streamed output to the driver's
    stdout and stderr), read until `marker` is in it or `timeout_s` passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        captured = capfd.readouterr()
        output += captured.out + captured.err
        if marker in output or time.monotonic() > deadline:
            return output
        time.sleep(0.5)


@pytest.mark.parametrize("actor_logs", ["errors", "all"])
def test_actor_logs_reach_the_driver(two_node_cluster, capfd, actor_logs):
    with build_rollout_manager(cluster_config(actor_logs, num_workers=1), QUESTIONS, model_path="unused",
                               actor_class=make_reporting_worker_class()) as manager:
        manager.get_batch(2, current_version=0, timeout=120)
        output = read_driver_output_until(capfd, "ACTOR-ERROR-LINE")
        # the info line is written right after the error line: 2 s more is plenty for it to arrive
        output = read_driver_output_until(capfd, "ACTOR-INFO-LINE", output, timeout_s=2 if actor_logs == "errors" else 30)
    assert "ACTOR-ERROR-LINE worker 0" in output
    assert ("ACTOR-INFO-LINE worker 0" in output) == (actor_logs == "all")


def test_strict_spread_puts_one_actor_per_node_and_a_replacement_takes_its_predecessors_bundle(two_node_cluster):
    cluster, worker_node = two_node_cluster
    config = cluster_config(num_workers=2)
    config.rollout.worker_resources = {}
    config.rollout.placement_strategy = "STRICT_SPREAD"
    with build_rollout_manager(config, QUESTIONS, model_path="unused",
                               actor_class=make_reporting_worker_class()) as manager:
        bundle_nodes = manager._placement.bundle_nodes(timeout_s=60)
        assert sorted(bundle_nodes) == sorted([cluster.head_node.node_id, worker_node.node_id])
        batch = manager.get_batch(2, current_version=0, timeout=120)
        nodes_by_worker = {group.worker_id: group.node_id for group in batch}
        for slot_index, worker_id in enumerate(manager.worker_ids()):
            if worker_id in nodes_by_worker:
                assert nodes_by_worker[worker_id] == bundle_nodes[slot_index]
        ray.kill(manager.worker_handles()[0], no_restart=True)
        manager.push_weights({}, version=1)
        deadline = time.monotonic() + 120
        while manager.worker_ids()[0] == 0 and time.monotonic() < deadline:  # replaced once a call fails
            manager.get_batch(2, current_version=1, timeout=120)
            manager.push_weights({}, version=manager.latest_version + 1)
        assert manager.worker_ids()[0] != 0
        assert ray.get(manager.worker_handles()[0].node_id.remote(), timeout=60) == bundle_nodes[0]
        table = ray.util.placement_group_table(manager._placement.group)
        assert table["state"] == "CREATED" and table["strategy"] == "STRICT_SPREAD"
