"""The apps environment in the application: its world, its MCP server, its warm-start data (`data.source: apps`).

`prepare_apps(config)` writes (once) the apps world of `data.apps` into `data.apps_world_dir` (default
<run_dir>/apps_world) and plugs the apps MCP server serving that world's base state into `tools.mcp_servers`
as the source named "apps" (unless the config lists one already), so the rollout actors, the SFT solver and
eval all call the same server. Training, evaluation and the warm-start call it before they build tools.
`apps_split_questions` gives a split's tasks as questions that name their base state (what the rewards and
eval verify against).

The SFT warm-start (`apps_warm_start_source`) learns from the scripted solver (rl/app/apps_expert.py): it
plays `sft.num_trajectories` training tasks over the server, a `sft.parallel_fraction` share of the tasks
that have a round of several independent calls in the parallel style (one turn per gold round) and the rest
one call per turn, and keeps the episodes the verifier accepts. The tiny model's tokenizer is fitted on the
training tasks' instructions, answers, gold calls and the results those calls return.

    config = load_experiment("configs/apps_quickstart.yaml")
    world = prepare_apps(config)
    questions = apps_split_questions(config, world, "train")
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from pathlib import Path
from typing import Any

from data.apps.verify import replay_rounds
from data.apps.world import APPS_SOURCE_NAME, AppsWorld, apps_questions, ensure_apps_world
from data.types import Question
from rl.config import ExperimentConfig
from rollouts.config import McpServerConfig

logger = logging.getLogger(__name__)

APPS_SERVER_STARTUP_TIMEOUT_S = 180.0  # a loaded machine imports the mcp SDK slowly
APPS_DATASET_NAME = "apps"  # the dataset name of apps rows in eval results


def apps_world_directory(config: ExperimentConfig) -> Path:
    return Path(config.data.apps_world_dir) if config.data.apps_world_dir else config.run_dir / "apps_world"


def apps_server_config(world_dir: Path) -> McpServerConfig:
    """The apps MCP server over the base state of the world written in world_dir."""
    return McpServerConfig(name=APPS_SOURCE_NAME, command="python",
                           args=["-m", "data.apps.server", "--world-dir", str(world_dir.resolve())],
                           startup_timeout_s=APPS_SERVER_STARTUP_TIMEOUT_S)


def prepare_apps(config: ExperimentConfig) -> AppsWorld:
    """The apps world (written once) and its server in config.tools.mcp_servers (config is updated in place)."""
    world_dir = apps_world_directory(config)
    world = ensure_apps_world(world_dir, config.data.apps)
    if all(server.name != APPS_SOURCE_NAME for server in config.tools.mcp_servers):
        config.tools.mcp_servers = [*config.tools.mcp_servers, apps_server_config(world_dir)]
    return world


def apps_split_questions(config: ExperimentConfig, world: AppsWorld, split: str) -> list[Question]:
    return apps_questions(world.splits[split], apps_world_directory(config))


def apps_tokenizer_texts(world: AppsWorld) -> list[str]:
    """The base states' records, the training tasks' instructions, answers, gold calls and their results."""
    texts = [json.dumps(record, ensure_ascii=False) for state in world.all_states() for collection in state.values()
             if isinstance(collection, dict) for record in collection.values()]
    for task in world.splits["train"]:
        texts.append(task.instruction)
        texts.extend(task.answers)
        _, results = replay_rounds(world.state_of(task), task.gold_rounds)
        for calls, round_results in zip(task.gold_rounds, results):
            texts.extend(json.dumps(call) for call in calls)
            texts.extend(result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
                         for result in round_results)
    return texts


def apps_identifiers(world: AppsWorld) -> list[str]:
    """The base states' names a task's calls copy: contact names and e-mail addresses, and SKUs
    (model.tiny.whole_identifiers makes each one token of the tiny tokenizer). File paths and order ids are left
    to the tokenizer's pieces ("/notes/order-" "74" ".txt"): most of them name one note or one order, so a test
    task's path would be a token no training task copies, while its pieces are in every training task."""
    identifiers = set()
    for state in world.all_states():
        identifiers.add(state["user"]["email"])
        for contact in state["contacts"].values():
            identifiers.update((contact["name"], contact["email"]))
        identifiers.update(state["products"])
    return sorted(identifiers)


def choose_solver_modes(tasks: list, parallel_fraction: float, rng: random.Random) -> list[str]:
    """"parallel" for a parallel_fraction share of the tasks with a round of several calls; else "sequential"."""
    if not 0.0 <= parallel_fraction <= 1.0:
        raise ValueError(f"sft.parallel_fraction must be in [0, 1], got {parallel_fraction}")
    return ["parallel" if max(map(len, task.gold_rounds)) > 1 and rng.random() < parallel_fraction
            else "sequential" for task in tasks]


def sample_passes(tasks: list, count: int, rng: random.Random) -> list[list]:
    """`count` tasks as shuffled passes over `tasks` (each pass holds a task at most once)."""
    passes, remaining = [], count
    while remaining > 0:
        order = list(tasks)
        rng.shuffle(order)
        passes.append(order[:remaining])
        remaining -= len(passes[-1])
    return passes


def distinct_instruction_batches(tasks: list) -> list[list]:
    """`tasks` in order, cut into batches that hold an instruction at most once (training worlds share
    instructions such as "Cancel the order named in /notes/order-3.txt", and the solver's scripted engine
    finds a task's turns by its prompt)."""
    batches: list[list] = [[]]
    seen: set[str] = set()
    for task in tasks:
        if task.instruction in seen:
            batches.append([])
            seen = set()
        batches[-1].append(task)
        seen.add(task.instruction)
    return [batch for batch in batches if batch]


def solver_dataset(config: ExperimentConfig, tokenizer: Any, environment: Any, world: AppsWorld,
                   num_trajectories: int) -> Any:
    """The solver's verified episodes on `num_trajectories` training tasks, played in `environment` (whose tools
    include the apps server), as TRL's pre-tokenised rows (input_ids, completion_mask and columns to inspect)."""
    from datasets import Dataset

    from rl.app.apps_expert import solve_apps_tasks
    from rl.app.expert import trajectory_to_example

    rng = random.Random(config.experiment.seed)
    columns: dict[str, list] = {name: [] for name in ("input_ids", "completion_mask", "question_id", "structure",
                                                      "mode", "model_calls")}
    rejected = 0
    passes = sample_passes(world.splits["train"], num_trajectories, rng)
    for tasks in (batch for tasks in passes for batch in distinct_instruction_batches(tasks)):
        modes = choose_solver_modes(tasks, config.sft.parallel_fraction, rng)
        for episode, mode in zip(solve_apps_tasks(tasks, modes, environment.protocol, tokenizer,
                                                  environment.executor, world, config.rollout,
                                                  notes=config.sft.expert_think == "notes"), modes):
            if not episode.verdict.success or episode.trajectory.truncated:
                rejected += 1
                continue
            input_ids, completion_mask = trajectory_to_example(episode.trajectory)
            for name, value in (("input_ids", input_ids), ("completion_mask", completion_mask),
                                ("question_id", episode.task.id), ("structure", episode.task.structure),
                                ("mode", mode), ("model_calls", episode.trajectory.model_calls)):
                columns[name].append(value)
    if not columns["input_ids"]:
        raise ValueError("the apps solver's episodes all failed verification or exceed the rollout limits "
                         "(rollout.max_context_tokens / max_new_tokens_per_turn / max_turns); raise them")
    if rejected:
        logger.warning("apps warm-start: %d of %d solver episodes rejected (failed verification or truncated)",
                       rejected, num_trajectories)
    logger.info("apps warm-start: %d demonstrations, modes %s", len(columns["input_ids"]), dict(Counter(columns["mode"])))
    return Dataset.from_dict(columns)


def build_apps_sft_dataset(config: ExperimentConfig, tokenizer: Any) -> Any:
    """The solver's verified episodes on `sft.num_trajectories` training tasks (`solver_dataset`)."""
    from rollouts.environment import build_environment

    world = prepare_apps(config)
    environment = build_environment(config.rollout, config.tools, config.retriever)
    try:
        return solver_dataset(config, tokenizer, environment, world, config.sft.num_trajectories)
    finally:
        environment.executor.close()


def apps_warm_start_source(config: ExperimentConfig, world: AppsWorld) -> Any:
    """What the SFT warm-start learns from on data.source=apps (rl/app/sft.py WarmStartSource)."""
    from rl.app.sft import WarmStartSource

    return WarmStartSource(questions=apps_split_questions(config, world, "train"),
                           texts=apps_tokenizer_texts(world), identifiers=apps_identifiers(world),
                           dataset_builder=build_apps_sft_dataset)


__all__ = ["APPS_DATASET_NAME", "apps_identifiers", "apps_server_config", "apps_split_questions",
           "apps_tokenizer_texts", "apps_warm_start_source", "apps_world_directory", "build_apps_sft_dataset",
           "choose_solver_modes", "distinct_instruction_batches", "prepare_apps", "solver_dataset"]
