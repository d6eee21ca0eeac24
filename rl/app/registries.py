"""Configured names checked against what is registered, once every extension has been imported.

The schema (rl/config.py) checks types, fixed choices and cross-field rules; it does not know which
protocols, engines, retrievers, presets, rewards, tools, datasets and advantage estimators exist, because extensions
register themselves when their module is imported. This module imports the built-in registries and
the config's `plugins` (data/plugins.py), then checks the config's names against them, so an extension
registered with its decorator (docs/EXTENDING.md) is accepted without editing any schema.
`load_experiment` is what the CLI uses: load, validate, import plugins, check names.

    config = load_experiment("configs/quickstart.yaml", ["rollout.protocol=function_call"])
"""

from __future__ import annotations

import os

import rewards  # noqa: F401  (importing the package registers the built-in rewards)
from data.errors import ConfigError
from data.loaders import STRUCTURE_MAPPERS, check_column_mapping
from data.plugins import import_plugins
from data.retriever import RETRIEVER_BUILDERS
from rewards.presets import PRESETS
from rewards.registry import REWARDS
from rl.config import ExperimentConfig, ValueSources, load_config, value_sources
from rl.grpo.core_algos import ADVANTAGE_ESTIMATORS
from rollouts.engine import ENGINE_MODULES, ENGINES
from rollouts.protocols import PROTOCOLS
from rollouts.tools import TOOL_BUILDERS


def registered_choices() -> dict[str, tuple[str, ...]]:
    """{dotted key: the names registered for it now}."""
    return {
        "retriever.backend": tuple(sorted(RETRIEVER_BUILDERS)),
        "rollout.protocol": tuple(sorted(PROTOCOLS)),
        # engines register when their module is imported (vLLM only on demand), so count both
        "rollout.engine": tuple(sorted(set(ENGINES) | set(ENGINE_MODULES))),
        "reward.preset": ("",) + tuple(sorted(PRESETS)),
        "grpo.advantage_estimator": tuple(sorted(ADVANTAGE_ESTIMATORS)),
    }


def check_registered_names(config: ExperimentConfig, where: str | ValueSources = "config") -> None:
    """Raise ConfigError naming the key and the registered names if the config names an unregistered one.

    where: the config's source name, or its ValueSources (blame the command line for what it gave).
    """
    sources = where if isinstance(where, ValueSources) else ValueSources(file=where)
    sections = {"retriever": config.retriever, "rollout": config.rollout, "reward": config.reward, "grpo": config.grpo}
    for dotted, choices in registered_choices().items():
        section, name = dotted.split(".")
        value = getattr(sections[section], name)
        if value not in choices:
            raise ConfigError(f"{sources.of(dotted)}: key '{dotted}' is {value!r}; valid choices: "
                              f"{', '.join(map(repr, choices))}")
    for environment, preset in config.reward.environment_presets.items():
        key = f"reward.environment_presets.{environment}"
        if preset not in PRESETS:
            raise ConfigError(f"{sources.of(key)}: key '{key}' is {preset!r}; valid choices: "
                              f"{', '.join(map(repr, sorted(PRESETS)))}")
    unknown_rewards = sorted(set(config.reward.weights) - set(REWARDS))
    if unknown_rewards:
        raise ConfigError(f"{sources.of('reward.weights')}: key 'reward.weights': unknown reward(s) {unknown_rewards}; "
                          f"registered: {REWARDS.names()}")
    if config.data.source == "files":
        check_dataset_names(config, sources)
    unknown_tools = [name for name in config.tools.enabled if name not in TOOL_BUILDERS]
    if unknown_tools:
        raise ConfigError(f"{sources.of('tools.enabled')}: key 'tools.enabled': unknown tool(s) {unknown_tools}; "
                          f"registered: {TOOL_BUILDERS.names()}")


def check_dataset_names(config: ExperimentConfig, sources: ValueSources) -> None:
    """Every file's dataset name is a registered benchmark or has its columns in data.columns."""
    for key in ("train_files", "eval_files", "validation_files"):
        unknown = sorted(name for name in getattr(config.data, key)
                         if name not in config.data.columns and name.lower() not in STRUCTURE_MAPPERS)
        if unknown:
            raise ConfigError(f"{sources.of(f'data.{key}')}: key 'data.{key}': unknown dataset(s) {unknown}; "
                              f"registered: {STRUCTURE_MAPPERS.names()}; any other file is read through its "
                              "columns: data.columns.<name>: {question: ..., answers: ...}")
    for dataset_name, columns in config.data.columns.items():
        try:
            check_column_mapping(columns, dataset_name)
        except ConfigError as error:
            raise ConfigError(f"{sources.of(f'data.columns.{dataset_name}')}: {error}") from None


def load_experiment(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """`rl.config.load_config` (YAML + overrides + validation), the plugins' imports, the registered-name check."""
    config = load_config(path, overrides)
    import_plugins(config.plugins)
    check_registered_names(config, where=value_sources(path, overrides))
    return config


__all__ = ["check_registered_names", "load_experiment", "registered_choices"]
