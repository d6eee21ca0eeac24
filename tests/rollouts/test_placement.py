"""The rollout actors' bundles: what each reserves, what a cluster lacks, and the options that pin actor i
to bundle i (a real placement group on a local Ray; the two-node layout is in test_ray_cluster.py)."""

from __future__ import annotations

import logging

import pytest
import ray

from rollouts.config import RolloutConfig
from rollouts.manager import init_ray
from rollouts.placement import ActorPlacement, actor_bundle, missing_resources


def test_a_bundle_holds_the_actors_cpus_gpus_and_custom_resources_without_zero_amounts():
    rollout = RolloutConfig(worker_num_cpus=2, worker_num_gpus=4, tensor_parallel_size=4,
                            worker_resources={"rollout_node": 1})
    assert actor_bundle(rollout) == {"CPU": 2.0, "GPU": 4.0, "rollout_node": 1.0}
    assert actor_bundle(RolloutConfig(worker_num_cpus=1)) == {"CPU": 1.0}
    with pytest.raises(ValueError, match="worker_num_cpus"):
        actor_bundle(RolloutConfig(worker_num_cpus=0))


def test_missing_resources_add_up_the_bundles():
    bundles = [{"CPU": 1.0, "GPU": 2.0}] * 3
    assert missing_resources(bundles, {"CPU": 8.0, "GPU": 6.0}) == {}
    assert missing_resources(bundles, {"CPU": 8.0, "GPU": 4.0}) == {"GPU": 6.0}
    assert missing_resources([{"CPU": 1.0, "rollout_node": 1.0}], {"CPU": 2.0}) == {"rollout_node": 1.0}


@pytest.fixture(scope="module")
def local_ray():
    init_ray(num_cpus=2)
    yield
    ray.shutdown()


def test_actor_i_runs_in_bundle_i_of_one_group(local_ray):
    placement = ActorPlacement(RolloutConfig(num_workers=2, worker_num_cpus=1, placement_strategy="PACK"))
    try:
        @ray.remote
        class Probe:
            def bundle(self):
                context = ray.get_runtime_context()
                return context.get_placement_group_id(), context.get_assigned_resources()

        probes = [Probe.options(**placement.options_for(index)).remote() for index in range(2)]
        found = ray.get([probe.bundle.remote() for probe in probes], timeout=60)
        assert {group_id for group_id, _ in found} == {placement.group.id.hex()}
        assert all(resources.get("CPU") == 1.0 for _, resources in found)
        assert len(placement.bundle_nodes(timeout_s=10)) == 2
        assert placement.total() == {"CPU": 2.0}
    finally:
        placement.remove()


def test_a_group_the_cluster_cannot_hold_is_reported_at_start(local_ray, caplog):
    with caplog.at_level(logging.WARNING, logger="rollouts.placement"):
        placement = ActorPlacement(RolloutConfig(num_workers=3, worker_num_cpus=1))
    try:
        assert "lacks {'CPU': 3.0}" in caplog.text
        assert placement.bundle_nodes(timeout_s=1) == []  # pending: all or nothing
    finally:
        placement.remove()
