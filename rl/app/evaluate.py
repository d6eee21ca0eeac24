"""Evaluation: one episode per held-out question, summarised per question structure.

`fanout eval CONFIG [--checkpoint PATH] [--out FILE] [--compare A B]` runs the agent loop (one trajectory
per question, at `rollout.eval_temperature`: 0, the default, is greedy) on the eval split of the generated
world (`data.source=world`, split `eval.split`) or on every file of `data.eval_files` (`data.source=files`),
prints a Markdown table and writes the contract JSON

    {"<dataset>": {"parallel"|"sequential"|"single"|"all":
                      {"n", "em", "f1", "model_calls", "tool_calls", "subqueries_per_round", "latency_s",
                       "format_valid", "em_ci95"}}}

`--group-by hops` keeps those rows and adds one per structure and number of gold sub-questions,
`"<structure>/<len(sub_questions)>"` ("parallel/2" = two-entity comparisons, "sequential/3" = 3-hop chains,
"single/1"; "<structure>/unknown" for a question without gold sub-questions), each with the same figures.
`--search-budget N` evaluates under a budget of N search rounds (the same as `rollout.max_turns=N`, below).

A mixed run (`data.source=mixed`, rl/app/mixed_env.py) reports both: the dataset "world" (the QA world's
split) and the dataset "apps" (the apps world's split). Apps tasks (dataset "apps") add `success` to every
row: 1 when the verifier accepts the episode's final app state and answer (data/apps/verify.py), averaged.
Their rows are the task's dependency structure ("independent", "chain", "mixed") and, always, that structure
and the task's number of gold calls ("independent/3" = three independent calls, "chain/2", "mixed/5");
`subqueries_per_round` is then the tool calls per tool-calling round (1 on a chain done right, the number of
calls on an independent task done in one round), and `em` compares the answer alone.

Definitions (per question, then averaged over the questions of a structure):
  em / f1            SQuAD-normalised exact match / token F1 of the final answer (no answer scores 0);
  model_calls        generation rounds of the episode; tool_calls: tool calls over all rounds;
  latency_s          wall seconds of the episode's rounds (generation + tools, as the agent loop measured
                     them; questions run in batches of eval.batch_questions, by default
                     rollout.questions_per_step x group_size, so a batched figure includes waiting
                     for the batch's other episodes: eval.batch_questions=1 times each question alone);
  format_valid       1 if the response follows the agent protocol (the reward package's validator);
  em_ci95            [low, high]: the 95% Wilson score interval of the EM proportion over the row's questions
                     (per-question EM is 0 or 1). It covers the question sample only: a policy trained with
                     another seed moves by more (scripts/fanout_grid.sh intervals over seeds).
  subqueries_per_round is a ratio of totals: all tool calls ÷ all rounds that made at least one call,
  so a model that fans out 3 sub-queries in one round scores 3 and a strictly sequential one scores 1.

Search budget: `rollout.max_turns` = N allows N search rounds (model calls whose searches are run), then
one forced-answer round, whose observation cue asks for the answer and in which a search is an invalid
turn (no answer, EM 0). An episode therefore makes at most N + 1 model calls, and may answer earlier.
This is how Search-R1 and ParallelSearch count `max_turns` (search turns, then one final generation
without search), so their "budget of 4 turns" is `--search-budget 4`, the quickstart's setting.

Simplifications on purpose: evaluation runs in this process (no Ray actors) with the engine named in
`rollout.engine`; with several eval datasets the model is loaded once and the datasets run in turn.

During training, `eval.every_steps` > 0 evaluates the current policy the same way every N steps on the
validation questions (the world's "validation" split, or `data.validation_files`) and logs the figures as
`eval/validation/<dataset>/<structure>/<figure>` in that step's metrics row (`PeriodicEvaluator`; the
driver holds one more engine for it, loaded with the trainer's weights at each evaluation).

    fanout eval configs/quickstart.yaml                       # the run's latest checkpoint
    fanout eval configs/quickstart.yaml --checkpoint runs/quickstart/checkpoints/checkpoint-60
    fanout eval configs/quickstart.yaml --compare runs/sync runs/async     # latest checkpoint of each run
    fanout eval configs/quickstart.yaml --group-by hops     # rows per structure and number of sub-questions too
    fanout eval configs/quickstart.yaml --search-budget 2   # at most 2 search rounds, then the answer
    fanout eval configs/quickstart.yaml --episodes runs/quickstart/episodes.jsonl   # every episode, to read

`--episodes FILE` writes one JSON line per episode: the checkpoint ("A"/"B" with --compare), dataset, question
id, structure, question, gold answers, prediction, the figures above, and each round's text, tool calls (name,
arguments, observation, error) and answer; apps tasks add their gold call rounds and the verifier's verdict
(state_ok, answer_ok and what differs).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Iterable

from rl.config import ConfigError, ExperimentConfig
from data.trajectory import Trajectory

METRIC_NAMES = (
    "n",
    "em",
    "f1",
    "model_calls",
    "tool_calls",
    "subqueries_per_round",
    "latency_s",
    "format_valid",
)
STRUCTURE_ORDER = ("parallel", "sequential", "single", "independent", "chain", "mixed", "all")
SUCCESS_NAME = "success"  # apps rows: share of episodes the verifier accepts (end state and answer)
INTERVAL_NAME = "em_ci95"  # [low, high] of each row, next to the METRIC_NAMES figures
Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile


def app_task_groups(question) -> list[str] | None:
    """An apps task's rows: its structure and "<structure>/<number of gold calls>"; None for other questions."""
    task = question.metadata.get("app_task")
    if not task:
        return None
    num_calls = sum(len(calls) for calls in task["gold_rounds"])
    return [task["structure"], f"{task['structure']}/{num_calls}"]


def hops_key(question) -> str:
    """"<structure>/<number of gold sub-questions>", e.g. "parallel/3"; "<structure>/unknown" without any."""
    count = len(question.sub_questions)
    return f"{question.structure}/{count if count else 'unknown'}"


def retrieval_key(trajectory: Trajectory) -> str:
    """"<structure>/retrieved" when the episode's searches returned every supporting passage of its question,
    "<structure>/missed" when one is missing, "<structure>/unknown" when the question names none."""
    question = trajectory.question
    if not question.supporting_doc_ids:
        return f"{question.structure}/unknown"
    retrieved = {doc_id for turn in trajectory.turns for call in turn.calls for doc_id in call.retrieved_doc_ids}
    missing = set(question.supporting_doc_ids) - retrieved
    return f"{question.structure}/{'missed' if missing else 'retrieved'}"


# `--group-by`: the row keys an episode counts in (besides "all"). "structure" is the contract; "hops" adds,
# per structure, a row per number of gold sub-questions; "retrieval" adds, per structure, the episodes whose
# searches found every supporting passage and those that missed one: failures to find against failures to read.
GROUPINGS: dict[str, Callable[[Trajectory], list[str]]] = {
    "structure": lambda trajectory: [trajectory.question.structure],
    "hops": lambda trajectory: [trajectory.question.structure, hops_key(trajectory.question)],
    "retrieval": lambda trajectory: [trajectory.question.structure, retrieval_key(trajectory)],
}
_COLUMN_TITLES = {
    "n": "n",
    "em": "EM",
    "f1": "F1",
    "model_calls": "model calls",
    "tool_calls": "tool calls",
    "subqueries_per_round": "sub-queries/round",
    "latency_s": "latency s",
    "format_valid": "format valid",
    SUCCESS_NAME: "success",
}


# ----------------------------------------------------------------------------------------------
# Pure aggregation
# ----------------------------------------------------------------------------------------------


def protocol_format_is_valid(trajectory: Trajectory) -> bool:
    """The reward package's episode grammar check (the `format` reward is 1.0 exactly when this holds)."""
    from rewards import parse_trajectory

    return parse_trajectory(trajectory).valid


def question_figures(
    trajectory: Trajectory, format_validator: Callable[[Trajectory], bool]
) -> dict[str, float]:
    """The per-question numbers that `summarize` averages (plus the search-round count it pools)."""
    from rewards import exact_match, f1_score
    from rewards.apps import verify_trajectory

    prediction = trajectory.final_answer or ""
    golds = trajectory.question.answers
    answered = trajectory.final_answer is not None
    verdict = verify_trajectory(trajectory)  # None unless an apps task
    success = {} if verdict is None else {SUCCESS_NAME: float(verdict.success)}
    return success | {
        "em": exact_match(prediction, golds) if answered else 0.0,
        "f1": f1_score(prediction, golds) if answered else 0.0,
        "model_calls": float(trajectory.model_calls),
        "tool_calls": float(trajectory.tool_calls),
        "search_rounds": float(trajectory.search_rounds),
        "latency_s": float(trajectory.generate_s + trajectory.tools_s),
        "format_valid": 1.0 if format_validator(trajectory) else 0.0,
    }


def wilson_interval(successes: float, count: int, z: float = Z_95) -> list[float]:
    """[low, high]: the Wilson score interval of a proportion successes/count ([0, 1] when count is 0).

    Unlike the normal approximation it stays inside [0, 1] and is not empty at 0 or count successes.
    """
    if count == 0:
        return [0.0, 1.0]
    proportion = successes / count
    denominator = 1 + z * z / count
    centre = (proportion + z * z / (2 * count)) / denominator
    half_width = z * math.sqrt(proportion * (1 - proportion) / count + z * z / (4 * count * count)) / denominator
    low = 0.0 if successes <= 0 else max(0.0, centre - half_width)  # exact at the ends (no rounding residue)
    high = 1.0 if successes >= count else min(1.0, centre + half_width)
    return [low, high]


def aggregate(per_question: list[dict[str, float]]) -> dict[str, float]:
    """Means over questions; sub-queries per round pooled as total calls ÷ total rounds with calls; the EM
    interval (wilson_interval over the questions)."""
    count = len(per_question)
    if count == 0:
        return {name: 0.0 for name in METRIC_NAMES} | {"n": 0, INTERVAL_NAME: wilson_interval(0, 0)}

    def mean(name: str) -> float:
        return sum(figures[name] for figures in per_question) / count

    total_rounds = sum(figures["search_rounds"] for figures in per_question)
    total_calls = sum(figures["tool_calls"] for figures in per_question)
    success = {}
    if all(SUCCESS_NAME in figures for figures in per_question):  # apps tasks
        success = {SUCCESS_NAME: mean(SUCCESS_NAME)}
    return success | {
        "n": count,
        "em": mean("em"),
        "f1": mean("f1"),
        "model_calls": mean("model_calls"),
        "tool_calls": mean("tool_calls"),
        "subqueries_per_round": total_calls / total_rounds if total_rounds else 0.0,
        "latency_s": mean("latency_s"),
        "format_valid": mean("format_valid"),
        INTERVAL_NAME: wilson_interval(sum(figures["em"] for figures in per_question), count),
    }


def summarize(
    trajectories: Iterable[Trajectory],
    dataset_name: str,
    format_validator: Callable[[Trajectory], bool] | None = None,
    group_by: str = "structure",
) -> dict[str, dict[str, dict[str, float]]]:
    """`{dataset_name: {group | "all": figures}}` for one greedy trajectory per question.

    Groups are question structures (the contract), plus structure/hops rows with group_by="hops" and
    structure/retrieved and structure/missed rows with group_by="retrieval" (GROUPINGS).
    Only the groups present appear: each structure (parallel, sequential, single) followed by its
    structure/hops rows in the order of their number, other groups sorted, then "all".
    """
    if group_by not in GROUPINGS:
        raise ConfigError(f"--group-by {group_by!r} is not one of {', '.join(GROUPINGS)}")
    validator = format_validator or protocol_format_is_valid
    group_of = GROUPINGS[group_by]
    by_group: dict[str, list[dict[str, float]]] = {}
    everything = []
    for trajectory in trajectories:
        figures = question_figures(trajectory, validator)
        for group in app_task_groups(trajectory.question) or group_of(trajectory):
            by_group.setdefault(group, []).append(figures)
        everything.append(figures)
    summary = {group: aggregate(by_group[group]) for group in ordered_groups(by_group)}
    summary["all"] = aggregate(everything)
    return {dataset_name: summary}


def _format_number(name: str, value: float) -> str:
    return str(int(value)) if name == "n" else f"{value:.3f}"


def format_interval(interval: list[float] | None) -> str:
    return "—" if interval is None else f"{interval[0]:.3f}–{interval[1]:.3f}"


def format_table(results: dict) -> str:
    """Markdown table: one row per dataset and group, one column per metric (success for apps), then the EM
    interval."""
    has_success = any(SUCCESS_NAME in figures for rows in results.values() for figures in rows.values())
    names = METRIC_NAMES + ((SUCCESS_NAME,) if has_success else ())
    header = "| dataset | structure | " + " | ".join(_COLUMN_TITLES[name] for name in names) + " | EM 95% CI |"
    lines = [header, "|" + "---|" * (len(names) + 3)]
    for dataset, by_structure in results.items():
        for structure in ordered_groups(by_structure):
            figures = by_structure[structure]
            cells = " | ".join(_format_number(name, figures[name]) if name in figures else "—" for name in names)
            lines.append(f"| {dataset} | {structure} | {cells} | {format_interval(figures.get(INTERVAL_NAME))} |")
    return "\n".join(lines)


def ratio(value_a: float, value_b: float) -> float | None:
    """B ÷ A, or None when A is zero."""
    return value_b / value_a if value_a else None


def compare_table(results_a: dict, results_b: dict) -> str:
    """Markdown table of A and B side by side with B ÷ A, for every dataset/structure both contain."""
    lines = ["| dataset | structure | metric | A | B | B ÷ A |", "|---|---|---|---|---|---|"]
    for dataset, by_structure_a in results_a.items():
        by_structure_b = results_b.get(dataset, {})
        for structure in ordered_groups(by_structure_a):
            if structure not in by_structure_b:
                continue
            both_apps = SUCCESS_NAME in by_structure_a[structure] and SUCCESS_NAME in by_structure_b[structure]
            for name in METRIC_NAMES + ((SUCCESS_NAME,) if both_apps else ()):
                value_a, value_b = by_structure_a[structure][name], by_structure_b[structure][name]
                quotient = ratio(value_a, value_b)
                quotient_text = "—" if quotient is None else f"{quotient:.2f}×"
                lines.append(
                    f"| {dataset} | {structure} | {_COLUMN_TITLES[name]} | {_format_number(name, value_a)} | "
                    f"{_format_number(name, value_b)} | {quotient_text} |"
                )
    return "\n".join(lines)


def ordered_groups(by_group: dict) -> list[str]:
    """Structures in STRUCTURE_ORDER, each followed by its "<structure>/<hops>" rows (numbers ascending,
    "unknown" last), then any other group sorted, then "all"."""

    def hops_order(group: str) -> tuple[int, str]:
        hops = group.split("/", 1)[1]
        return (int(hops), "") if hops.isdigit() else (10**9, hops)

    ordered = []
    for structure in STRUCTURE_ORDER[:-1]:
        if structure in by_group:
            ordered.append(structure)
        ordered.extend(sorted((group for group in by_group if group.startswith(f"{structure}/")), key=hops_order))
    ordered.extend(sorted(group for group in by_group if group not in ordered and group != "all"))
    return ordered + (["all"] if "all" in by_group else [])


# ----------------------------------------------------------------------------------------------
# Running an evaluation
# ----------------------------------------------------------------------------------------------


def world_directory(config: ExperimentConfig) -> Path:
    """Where the generated world is cached: data.world_dir, or <run_dir>/world."""
    return Path(config.data.world_dir) if config.data.world_dir else config.run_dir / "world"


def generated_split_questions(config: ExperimentConfig, split: str) -> dict[str, list]:
    """{dataset name: questions} of a generated world's split: "world" (data.source=world), "apps" (apps) or
    both (mixed, rl/app/mixed_env.py). An apps world's server joins config.tools.mcp_servers."""
    if config.data.source == "mixed":
        from rl.app.mixed_env import mixed_split_questions, prepare_mixed

        worlds = prepare_mixed(config)
        splits = set(worlds.qa_world.splits) & set(worlds.apps_world.splits)
        if split in splits:
            return mixed_split_questions(config, worlds, split)
    elif config.data.source == "apps":
        from rl.app.apps_env import APPS_DATASET_NAME, apps_split_questions, prepare_apps

        apps_world = prepare_apps(config)
        splits = set(apps_world.splits)
        if split in splits:
            return {APPS_DATASET_NAME: apps_split_questions(config, apps_world, split)}
    else:
        from data.world import ensure_world

        world = ensure_world(world_directory(config), config.data.world)
        splits = set(world.splits)
        if split in splits:
            return {"world": world.splits[split]}
    raise ConfigError(f"key 'eval.split' is {split!r}; the generated world of data.source={config.data.source} has "
                      f"splits {', '.join(sorted(splits))}")


def load_eval_questions(config: ExperimentConfig) -> dict[str, list]:
    """{dataset name: questions}: the eval split of the generated world(s), or every data.eval_files entry.

    eval.structures keeps the questions of those structures (a dataset with none of them is an error), then
    eval.num_questions > 0 keeps the first N questions of each dataset (files are read in their order).
    """
    if config.data.source != "files":
        questions_by_dataset = generated_split_questions(config, config.eval.split)
    else:
        from data.loaders import load_questions

        if not config.data.eval_files:
            raise ConfigError(
                "key 'data.eval_files' is empty: data.source=files evaluates on data.eval_files "
                "({name: path.jsonl|.parquet})"
            )
        questions_by_dataset = {
            name: load_questions(path, name, config.data.on_malformed_row, config.data.columns.get(name))
            for name, path in config.data.eval_files.items()
        }
    structures = set(config.eval.structures)
    if structures:
        kept = {name: [question for question in questions if question.structure in structures]
                for name, questions in questions_by_dataset.items()}
        for name, questions in kept.items():
            if not questions:
                present = sorted({question.structure for question in questions_by_dataset[name]})
                raise ConfigError(f"key 'eval.structures' is {sorted(structures)}, but dataset {name!r} has only "
                                  f"{', '.join(present) or 'no'} questions")
        questions_by_dataset = kept
    limit = config.eval.num_questions
    return {
        name: questions[:limit] if limit > 0 else questions
        for name, questions in questions_by_dataset.items()
    }


def use_fresh_world(config: ExperimentConfig, seed: int) -> Path:
    """Point `config` at worlds generated with another seed: entities, names (the same ones with
    data.world.names=shared) and facts that no training question asked about, read through the same
    checkpoint and tokenizer. Returns the folder the evaluation writes beside (the QA world's, or the apps
    world's for data.source=apps); the run's own worlds are left as they are.

    The QA world (data.source world or mixed): only its base set is built (the test and validation splits
    depend neither on data.world.train_worlds nor on num_train), cached in <run_dir>/world-seed<N>. The apps
    world (apps or mixed): its contacts, calendars, mail, files, shop and tasks drawn with that seed, cached in
    <run_dir>/apps_world-seed<N>, and served by an apps server of its own (the run's saved server entry, which
    serves the run's apps world, is dropped from tools.mcp_servers and added again for the fresh one)."""
    source = config.data.source
    if source not in ("world", "apps", "mixed"):
        raise ConfigError(f"--fresh-world needs a generated world: data.source=world, apps or mixed (it is {source!r})")
    folder = None
    if source in ("world", "mixed"):
        if seed == config.data.world.seed:
            raise ConfigError(f"--fresh-world {seed} is the run's own world seed (data.world.seed); pick another")
        config.data.world.seed = seed
        config.data.world.train_worlds = 0
        config.data.world.num_train = 0  # the test split does not depend on it; the base set alone could not hold it
        config.data.world_dir = str(config.run_dir / f"world-seed{seed}")
        folder = Path(config.data.world_dir)
    if source in ("apps", "mixed"):
        from data.apps.world import APPS_SOURCE_NAME

        if seed == config.data.apps.seed:
            raise ConfigError(f"--fresh-world {seed} is the run's own apps world seed (data.apps.seed); pick another")
        config.data.apps.seed = seed
        config.data.apps.train_worlds = 0  # its test split does not depend on them
        config.data.apps_world_dir = str(config.run_dir / f"apps_world-seed{seed}")
        config.tools.mcp_servers = [server for server in config.tools.mcp_servers if server.name != APPS_SOURCE_NAME]
        folder = folder or Path(config.data.apps_world_dir)
    return folder


def eval_corpus_path(config: ExperimentConfig) -> str:
    """The corpus the retriever indexes ("" when a retrieval server holds it)."""
    if config.retriever.backend == "http":
        return ""
    if config.data.source in ("world", "mixed"):
        return str(world_directory(config) / "corpus.jsonl")
    return config.data.corpus_path


def resolve_model_path(config: ExperimentConfig, checkpoint: str | None) -> str:
    """The HF model folder to evaluate; raises ConfigError naming what is missing.

    checkpoint may be a training checkpoint (checkpoint-<step>/, whose model/ is used), its `latest`
    pointer, a run or checkpoints folder (its latest checkpoint), any saved HF model folder, or a hub id
    (rollouts.model_loading.local_model_folder). Without it: the run's latest checkpoint, else model.path.
    """
    from rl.grpo.checkpoint import LATEST_POINTER, find_latest_checkpoint
    from rollouts.model_loading import is_hub_id, local_model_folder

    if not checkpoint:
        latest = find_latest_checkpoint(config.run_dir)
        if latest is not None:
            return str(latest / "model")
        if config.model.path:  # a hub id is fetched (or found in the cache) here, before any work
            return str(local_model_folder(config.model.path)) if is_hub_id(config.model.path) else config.model.path
        raise ConfigError(
            f"nothing to evaluate: no checkpoint in {config.run_dir / 'checkpoints'} and model.path is "
            "empty; pass --checkpoint PATH or train first"
        )
    if is_hub_id(checkpoint):
        return str(local_model_folder(checkpoint))
    path = Path(checkpoint)
    if not path.exists():
        raise ConfigError(
            f"checkpoint '{checkpoint}' does not exist (pass a checkpoint folder written by `fanout "
            f"train`, e.g. under {config.run_dir / 'checkpoints'}, or any saved HF model folder)"
        )
    if path.is_file() and path.name == LATEST_POINTER:
        path = path.parent
    if (path / "model").is_dir():
        return str(path / "model")
    if (path / "config.json").is_file():
        return str(path)
    latest = find_latest_checkpoint(path)
    if latest is not None:
        return str(latest / "model")
    raise ConfigError(
        f"checkpoint '{checkpoint}' is not a model folder (no config.json), a training checkpoint "
        "(no model/) or a run folder with checkpoints"
    )


def build_eval_components(config: ExperimentConfig, model_path: str):
    """Engine, protocol and tools in this process, for the model at model_path."""
    from rl.app.rollout_setup import worker_config
    from rollouts.worker import WorkerSetup, build_rollout_components

    setup = WorkerSetup(worker_id=0, model_path=str(model_path), corpus_path=eval_corpus_path(config))
    return build_rollout_components(worker_config(config), setup)


def play_and_summarize(config: ExperimentConfig, components, questions_by_dataset: dict[str, list],
                       group_by: str = "structure", episodes: list | None = None) -> dict:
    """One episode per question at rollout.eval_temperature (0: greedy), in batches; the contract summary.
    `episodes`, if given, receives (dataset name, trajectory) for every episode played."""
    from rollouts.agent_loop import run_episodes

    batch_questions = config.eval.batch_questions or config.batch_size  # default: the training batch
    temperature = config.rollout.eval_temperature
    results: dict = {}
    for dataset_name, questions in questions_by_dataset.items():
        trajectories = []
        for start in range(0, len(questions), batch_questions):
            groups = run_episodes(
                components.engine,
                components.protocol,
                components.executor,
                questions[start : start + batch_questions],
                group_size=1,
                rollout_config=config.rollout,
                policy_version=components.engine.version,
                seed=config.experiment.seed,
                greedy=temperature == 0,
                temperature=temperature,
            )
            trajectories.extend(group.trajectories[0] for group in groups)
        results.update(summarize(trajectories, dataset_name, group_by=group_by))
        if episodes is not None:
            episodes.extend((dataset_name, trajectory) for trajectory in trajectories)
    return results


def evaluate(
    config: ExperimentConfig, checkpoint_path: str, questions_by_dataset: dict[str, list] | None = None,
    group_by: str = "structure", episodes: list | None = None,
) -> dict:
    """One episode per question with the model at checkpoint_path; the contract summary (`episodes`: as in
    play_and_summarize)."""
    if questions_by_dataset is None:
        questions_by_dataset = load_eval_questions(config)
    return play_and_summarize(config, build_eval_components(config, checkpoint_path), questions_by_dataset, group_by,
                              episodes)


def episode_row(dataset: str, trajectory: Trajectory, checkpoint: str) -> dict:
    """One line of `fanout eval --episodes`: the question, what the policy did round by round, and its figures."""
    question = trajectory.question
    row = {
        "checkpoint": checkpoint, "dataset": dataset, "id": question.id, "structure": question.structure,
        "question": question.question, "answers": list(question.answers), "prediction": trajectory.final_answer,
        "figures": question_figures(trajectory, protocol_format_is_valid), "truncated": trajectory.truncated,
        "turns": [
            {"text": turn.text, "answer": turn.answer, "invalid": turn.invalid,
             "calls": [{"name": call.name, "arguments": call.arguments, "observation": call.observation,
                        "error": call.error} for call in turn.calls]}
            for turn in trajectory.turns
        ],
    }
    task = question.metadata.get("app_task")
    if task:
        from rewards.apps import verify_trajectory

        verdict = verify_trajectory(trajectory)
        row["gold_rounds"] = task["gold_rounds"]
        row["verdict"] = {"state_ok": verdict.state_ok, "answer_ok": verdict.answer_ok, "problems": verdict.problems}
    return row


def write_episodes(episodes: list[tuple[str, Trajectory, str]], path: str | Path) -> Path:
    """`fanout eval --episodes FILE`: one JSON line per episode (episode_row), in evaluation order."""
    from data.corpus import write_jsonl

    return write_jsonl(path, (episode_row(dataset, trajectory, checkpoint)
                              for dataset, trajectory, checkpoint in episodes))


def flat_metrics(results: dict, prefix: str = "eval") -> dict[str, float]:
    """{"<prefix>/<dataset>/<structure>/<figure>": value} for a metrics row; the EM interval as
    `.../em_ci95_low` and `.../em_ci95_high`."""
    flat = {}
    for dataset, by_structure in results.items():
        for structure, figures in by_structure.items():
            for name, value in figures.items():
                key = f"{prefix}/{dataset}/{structure}/{name}"
                if isinstance(value, (list, tuple)):
                    flat[f"{key}_low"], flat[f"{key}_high"] = value
                else:
                    flat[key] = value
    return flat


def load_validation_questions(config: ExperimentConfig) -> dict[str, list]:
    """{dataset: questions} checked during training: the generated world(s)' validation split, or
    data.validation_files."""
    if config.data.source != "files":
        questions_by_dataset = generated_split_questions(config, "validation")
    else:
        from data.loaders import load_questions

        questions_by_dataset = {
            name: load_questions(path, name, config.data.on_malformed_row, config.data.columns.get(name))
            for name, path in config.data.validation_files.items()
        }
    limit = config.eval.num_questions
    return {name: questions[:limit] if limit > 0 else questions for name, questions in questions_by_dataset.items()}


class PeriodicEvaluator:
    """eval.every_steps: the trainer's current weights evaluated on the validation questions, in the driver.

    The questions load when the evaluator is made (bad files fail before training starts); the engine is
    built from `model_path` (the model GRPO started from) at the first evaluation and then takes each
    evaluated version's weights.
    """

    def __init__(self, config: ExperimentConfig):
        self.config = config
        self.every_steps = config.eval.every_steps
        self.questions_by_dataset = load_validation_questions(config) if self.every_steps > 0 else {}
        self.components = None

    def is_due(self, step: int) -> bool:
        return self.every_steps > 0 and step % self.every_steps == 0

    def evaluate(self, model_path: str, weights: dict, version: int) -> dict[str, float]:
        """`eval/validation/...` figures of the policy with these weights, and `perf/eval_s`."""
        import time

        started = time.perf_counter()
        if self.components is None:
            self.components = build_eval_components(self.config, str(model_path))
        self.components.engine.load_weights(weights, version)
        results = play_and_summarize(self.config, self.components, self.questions_by_dataset)
        return {**flat_metrics(results, prefix="eval/validation"), "perf/eval_s": time.perf_counter() - started}


def search_budget_overrides(overrides: list[str], search_budget: int | None) -> list[str]:
    """The overrides with `rollout.max_turns=<search_budget>` appended (`--search-budget N`).

    Raises ConfigError when the overrides already set rollout.max_turns to another value: two budgets on
    one command line is a mistake, not a precedence question.
    """
    if search_budget is None:
        return list(overrides)
    if search_budget < 1:
        raise ConfigError(f"--search-budget {search_budget}: a budget is at least 1 search round")
    for override in overrides:
        key, _, value = override.partition("=")
        if key.strip() == "rollout.max_turns" and value.strip() != str(search_budget):
            raise ConfigError(
                f"--search-budget {search_budget} contradicts the override '{override}': "
                "pass one of them (--search-budget N is rollout.max_turns=N)"
            )
    return [*overrides, f"rollout.max_turns={search_budget}"]


def budget_line(config: ExperimentConfig) -> str:
    turns = config.rollout.max_turns
    return (f"search budget: {turns} search round{'s' if turns != 1 else ''} + 1 forced-answer round "
            f"(rollout.max_turns={turns})")


def write_results(results: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


def evaluate_command(
    config: ExperimentConfig,
    checkpoint: str | None = None,
    out: str | None = None,
    compare: list[str] | tuple[str, str] | None = None,
    group_by: str = "structure",
    episodes: str | None = None,
) -> int:
    """`fanout eval`: print the table (or the A/B comparison) and write the JSON (and, with `episodes`, every
    episode as a JSON line, write_episodes); returns the exit code."""
    if group_by not in GROUPINGS:
        raise ConfigError(f"--group-by {group_by!r} is not one of {', '.join(GROUPINGS)}")
    played: dict[str, list] = {}

    def run(path: str, label: str) -> dict:
        collected = played.setdefault(label, []) if episodes else None
        return evaluate(config, path, group_by=group_by, episodes=collected)

    if compare:
        path_a, path_b = (resolve_model_path(config, path) for path in compare)
        results_a, results_b = run(path_a, "A"), run(path_b, "B")
        print(budget_line(config))
        print(compare_table(results_a, results_b))
        written = write_results(
            {"checkpoints": {"A": compare[0], "B": compare[1]}, "A": results_a, "B": results_b},
            out or config.run_dir / "eval_compare.json",
        )
    else:
        model_path = resolve_model_path(config, checkpoint)
        results = run(model_path, model_path)
        print(budget_line(config))
        print(format_table(results))
        written = write_results(results, out or config.run_dir / "eval.json")
    print(f"wrote {written}")
    if episodes:
        rows = [(dataset, trajectory, label) for label, pairs in played.items() for dataset, trajectory in pairs]
        print(f"wrote {write_episodes(rows, episodes)} ({len(rows)} episodes)")
    return 0
