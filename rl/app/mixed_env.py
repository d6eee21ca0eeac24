"""Mixed training in the application: QA and apps tasks in one run (`data.source: mixed`).

Both worlds are generated as in their own runs: the QA world into `data.world_dir` (default <run_dir>/world),
the apps world into `data.apps_world_dir` (default <run_dir>/apps_world), whose MCP server joins
`tools.mcp_servers` (rl/app/apps_env.py `prepare_apps`). One protocol (`function_call`) and one tool executor
serve every episode: QA's `search` is one more function next to the apps tools, and each question carries
its environment (`Question.metadata["environment"]`: "apps" for an apps task, none for QA, which
data/types.py `question_environment` reads as "qa"), which routes its reward (`reward.environment_presets`,
rewards/presets.py) and splits the step metrics (`reward/total/qa`, `reward/total/apps`, ...; rl/app/train.py).

- **Training questions**: `data.mixed.apps_fraction` of the list the rollout manager draws from are apps
  tasks, the rest QA questions (data/mixture.py `mix_questions`).
- **Warm-start**: the tiny model's tokenizer is fitted on both worlds' texts; the SFT data is the same share of
  the apps solver's verified episodes (rl/app/apps_env.py `solver_dataset`) next to the QA expert's
  demonstrations in the function-call protocol (rl/app/expert.py), both played over the one environment
  (so their prompts list the same tools as the rollouts'); the rows carry an `environment` column, counted in
  the warm-start's `sft_summary.json`.
- **Eval**: the datasets `world` (the QA world's split) and `apps` (the apps world's split), a table row each.

What it simplifies on purpose: one share for the whole run (no schedule; each step's batch holds it on
average), and one tool set for every episode (a QA episode may call an apps tool and an apps episode search;
the rewards of its own environment judge what it did).

    config = load_experiment("configs/mixed_quickstart.yaml")
    worlds = prepare_mixed(config)
    questions = mixed_training_questions(config, worlds)
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from data.apps.tasks import APPS_ENVIRONMENT
from data.apps.world import AppsWorld
from data.mixture import mix_questions, share_counts
from data.types import QA_ENVIRONMENT, Question
from rl.app.apps_env import (APPS_DATASET_NAME, apps_identifiers, apps_split_questions, apps_tokenizer_texts,
                              prepare_apps)
from rl.config import ExperimentConfig

logger = logging.getLogger(__name__)

QA_DATASET_NAME = "world"  # the dataset name of the QA world's rows in eval results (as in data.source=world)


@dataclass
class MixedWorlds:
    qa_world: Any  # data.world.World
    apps_world: AppsWorld


def prepare_mixed(config: ExperimentConfig) -> MixedWorlds:
    """Both worlds (each written once) and the apps server in config.tools.mcp_servers (config updated in place)."""
    from data.world import ensure_world
    from rl.app.evaluate import world_directory

    return MixedWorlds(qa_world=ensure_world(world_directory(config), config.data.world),
                       apps_world=prepare_apps(config))


def environment_shares(config: ExperimentConfig) -> dict[str, float]:
    apps_fraction = config.data.mixed.apps_fraction
    return {QA_ENVIRONMENT: 1.0 - apps_fraction, APPS_ENVIRONMENT: apps_fraction}


def mixed_training_questions(config: ExperimentConfig, worlds: MixedWorlds) -> list[Question]:
    """The QA world's and the apps world's training questions, apps tasks making up data.mixed.apps_fraction."""
    questions_by_environment = {QA_ENVIRONMENT: worlds.qa_world.splits["train"],
                                APPS_ENVIRONMENT: apps_split_questions(config, worlds.apps_world, "train")}
    return mix_questions(questions_by_environment, environment_shares(config), seed=config.experiment.seed)


def mixed_split_questions(config: ExperimentConfig, worlds: MixedWorlds, split: str) -> dict[str, list[Question]]:
    """{"world": the QA world's split, "apps": the apps world's split}: the datasets an evaluation reports."""
    return {QA_DATASET_NAME: worlds.qa_world.splits[split],
            APPS_DATASET_NAME: apps_split_questions(config, worlds.apps_world, split)}


def demonstration_counts(config: ExperimentConfig) -> dict[str, int]:
    """sft.num_trajectories split between the environments by data.mixed.apps_fraction (at least one each)."""
    total = config.sft.num_trajectories
    apps_count = min(total - 1, max(1, share_counts(total, environment_shares(config))[APPS_ENVIRONMENT]))
    return {QA_ENVIRONMENT: total - apps_count, APPS_ENVIRONMENT: apps_count}


def build_mixed_sft_dataset(config: ExperimentConfig, tokenizer: Any) -> Any:
    """The QA expert's and the apps solver's demonstrations in one dataset, played over one environment."""
    from datasets import concatenate_datasets

    from rl.app.apps_env import solver_dataset
    from rl.app.expert import FORCED_ANSWER_COLUMN, write_expert_dataset
    from rl.app.sft import ENVIRONMENT_COLUMN
    from rollouts.environment import build_environment

    worlds = prepare_mixed(config)
    counts = demonstration_counts(config)
    environment = build_environment(config.rollout, config.tools, config.retriever,
                                    documents=worlds.qa_world.documents)
    try:
        qa_rows = write_expert_dataset(
            worlds.qa_world.splits["train"], environment.protocol, tokenizer, environment.executor, config.rollout,
            num_trajectories=counts[QA_ENVIRONMENT], parallel_fraction=config.sft.parallel_fraction,
            seed=config.experiment.seed, think=config.sft.expert_think,
            forced_answer_fraction=config.sft.forced_answer_fraction)
        apps_rows = solver_dataset(config, tokenizer, environment, worlds.apps_world, counts[APPS_ENVIRONMENT])
    finally:
        environment.executor.close()
    # the apps solver never plays to a budget: its rows get the QA expert's forced_answer column as False
    apps_rows = apps_rows.add_column(FORCED_ANSWER_COLUMN, [False] * len(apps_rows))
    dataset = concatenate_datasets([
        qa_rows.add_column(ENVIRONMENT_COLUMN, [QA_ENVIRONMENT] * len(qa_rows)),
        apps_rows.add_column(ENVIRONMENT_COLUMN, [APPS_ENVIRONMENT] * len(apps_rows)),
    ])
    logger.info("mixed warm-start: demonstrations by environment %s", dict(Counter(dataset[ENVIRONMENT_COLUMN])))
    return dataset


def mixed_warm_start_source(config: ExperimentConfig, worlds: MixedWorlds, questions: list[Question]) -> Any:
    """What the SFT warm-start learns from on data.source=mixed (rl/app/sft.py WarmStartSource)."""
    from rl.app.sft import WarmStartSource, world_texts

    return WarmStartSource(questions=questions, world=worlds.qa_world,
                           texts=world_texts(worlds.qa_world) + apps_tokenizer_texts(worlds.apps_world),
                           identifiers=apps_identifiers(worlds.apps_world),
                           dataset_builder=build_mixed_sft_dataset)


__all__ = ["MixedWorlds", "QA_DATASET_NAME", "build_mixed_sft_dataset", "demonstration_counts",
           "environment_shares", "mixed_split_questions", "mixed_training_questions", "mixed_warm_start_source",
           "prepare_mixed"]
