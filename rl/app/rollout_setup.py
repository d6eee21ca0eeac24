"""From the experiment config to the rollout side: each actor's typed sections and the rollout manager.

rollouts/ takes its own sections (`WorkerConfig`: rollout, tools, retriever, reward) and plain values
for the staleness window; this module is where the application hands them over, so no lower package
ever sees `ExperimentConfig`.

    manager = build_rollout_manager(config, questions, model_path="runs/x/sft", corpus_path="world/corpus.jsonl")
"""

from __future__ import annotations

from typing import Any

from data.plugins import resolve_plugin_specs
from data.types import Question
from rl.config import ExperimentConfig
from rollouts.manager import RolloutManager
from rollouts.worker import WorkerConfig


def worker_config(config: ExperimentConfig) -> WorkerConfig:
    """The sections a rollout actor (or any process that plays episodes) runs on."""
    return WorkerConfig(rollout=config.rollout, tools=config.tools, retriever=config.retriever, reward=config.reward,
                        dtype=config.model.dtype, device=config.experiment.device,
                        plugins=resolve_plugin_specs(config.plugins))


def build_rollout_manager(config: ExperimentConfig, questions: list[Question], model_path: str, corpus_path: str = "",
                          initial_version: int = 0, actor_class: Any = None,
                          model_version: int | None = None) -> RolloutManager:
    """The manager of `rollout.num_workers` Ray actors inside the `async.max_staleness` window.

    `initial_version`: the policy version training starts at; `model_version`: the version of the weights in
    `model_path` (default: the same). See RolloutManager."""
    return RolloutManager(worker_config(config), questions, model_path=model_path, corpus_path=corpus_path,
                          initial_version=initial_version, actor_class=actor_class, model_version=model_version,
                          max_staleness=config.async_.max_staleness,
                          max_buffered_groups=config.async_.max_buffered_groups, seed=config.experiment.seed)


__all__ = ["build_rollout_manager", "worker_config"]
