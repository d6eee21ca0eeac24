"""Where the rollout actors run: one Ray placement group, one bundle per actor.

The manager reserves every actor's resources at once, as one placement group of `rollout.num_workers`
bundles, each `{CPU: rollout.worker_num_cpus, GPU: rollout.worker_num_gpus, **rollout.worker_resources}`,
laid out by `rollout.placement_strategy` (Ray's PACK, SPREAD, STRICT_PACK or STRICT_SPREAD). Actor i
runs in bundle i; a replacement for a dead actor takes the same bundle. A vLLM actor with
`rollout.tensor_parallel_size` = t reserves t GPUs in its bundle (rollout.worker_num_gpus = t) and runs
vLLM's t workers as its own processes on them, so a bundle never spans nodes. Child tasks an actor
starts stay inside the group.

Reserving all bundles together is gang scheduling: a cluster that cannot hold them all runs none,
instead of some actors running while others wait forever. A group that no node can hold yet (a
custom resource no node offers, more GPUs than the cluster has) is reported in a warning at start;
the actors wait for nodes to join, as on an autoscaling cluster.

What it simplifies on purpose: the trainer is not part of the group (it is the driver, or torchrun ranks
outside Ray), so "colocated" placement (actors sharing the trainer's GPUs) is expressed by fractional
rollout.worker_num_gpus and gpu_memory_utilization, and "separate" by giving Ray only the rollout GPUs
(docs/SCALING.md).

    placement = ActorPlacement(config.rollout)
    actor = actor_class.options(**placement.options_for(0)).remote(...)
    placement.remove()
"""

from __future__ import annotations

import logging
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rollouts.config import RolloutConfig

logger = logging.getLogger(__name__)


def actor_bundle(rollout: RolloutConfig) -> dict[str, float]:
    """The resources one actor reserves (Ray refuses bundles with zero amounts, so those are left out)."""
    bundle = {"CPU": float(rollout.worker_num_cpus), "GPU": float(rollout.worker_num_gpus),
              **{name: float(amount) for name, amount in rollout.worker_resources.items()}}
    bundle = {name: amount for name, amount in bundle.items() if amount > 0}
    if not bundle:
        raise ValueError("a rollout actor reserves nothing (rollout.worker_num_cpus = 0, no GPUs, no custom "
                         "resources); give it at least rollout.worker_num_cpus > 0")
    return bundle


def missing_resources(bundles: list[dict[str, float]], cluster: dict[str, float]) -> dict[str, float]:
    """Resources the bundles need in total beyond what the cluster has now (empty: they may fit)."""
    needed: dict[str, float] = {}
    for bundle in bundles:
        for name, amount in bundle.items():
            needed[name] = needed.get(name, 0.0) + amount
    return {name: amount for name, amount in needed.items() if cluster.get(name, 0.0) < amount}


class ActorPlacement:
    """The rollout actors' placement group and the Ray options that put actor i in bundle i."""

    def __init__(self, rollout: RolloutConfig):
        self.strategy = rollout.placement_strategy
        self.bundles = [actor_bundle(rollout) for _ in range(rollout.num_workers)]
        missing = missing_resources(self.bundles, ray.cluster_resources())
        if missing:
            logger.warning("the rollout actors' placement group needs %s in total (rollout.num_workers x "
                           "worker_num_cpus / worker_num_gpus / worker_resources) and the Ray cluster lacks %s "
                           "now; the actors wait until nodes with them join", self.total(), missing)
        self.group = placement_group(self.bundles, strategy=self.strategy, name="")

    def total(self) -> dict[str, float]:
        return {name: sum(bundle.get(name, 0.0) for bundle in self.bundles) for name in self.bundles[0]}

    def options_for(self, index: int) -> dict[str, Any]:
        """`actor_class.options(...)` arguments for the actor of slot `index`."""
        bundle = self.bundles[index]
        return {
            "num_cpus": bundle.get("CPU", 0.0),
            "num_gpus": bundle.get("GPU", 0.0),
            "resources": {name: amount for name, amount in bundle.items() if name not in ("CPU", "GPU")} or None,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=self.group, placement_group_bundle_index=index,
                placement_group_capture_child_tasks=True),
        }

    def bundle_nodes(self, timeout_s: float = 0.0) -> list[str]:
        """The Ray node id of each bundle once the group is placed ([] if not placed within timeout_s)."""
        ready, _ = ray.wait([self.group.ready()], timeout=timeout_s)
        if not ready:
            return []
        table = ray.util.placement_group_table(self.group)
        return [table["bundles_to_node_id"][index] for index in range(len(self.bundles))]

    def remove(self) -> None:
        try:
            remove_placement_group(self.group)
        except Exception as error:  # Ray already gone at shutdown
            logger.debug("removing the rollout placement group failed: %s", error)


__all__ = ["ActorPlacement", "actor_bundle", "missing_resources"]
