"""Shared setup of the benchmark suites: a small world and a tiny (warm-started) model, built once and cached.

Every suite measures ratios side by side in one run, on inputs built here:

- `bench_config(quick, overrides)`: the quickstart experiment (configs/quickstart.yaml) shrunk so a suite
  runs in minutes ("full") or seconds (`--quick`), with logging, plots, final eval and periodic
  checkpoints off. Suites add their own `key=value` overrides on top.
- `prepare_assets(quick)`: the generated world and the tiny model of that config, built once into a cache
  folder (`$FANOUT_BENCH_CACHE`, default `<system temp>/fanout-bench`) and reused by every later suite.
  The full setting also runs a short SFT warm-start (TRL SFTTrainer on scripted-expert trajectories,
  rl/app/sft.py) so the policy follows the protocol and actually calls the search tool; `--quick` uses the
  untrained tiny model (figures are not meaningful then, only well formed).
- small helpers: a timer, a Markdown table printer, the trajectories' token counts.

What it simplifies on purpose: the cache is keyed by the setting name ("quick"/"full") and a hash of
the config sections the world and the warm-start depend on (`assets_key`), so an edit to
configs/quickstart.yaml rebuilds them; two benchmark processes building the same cache at the same
moment would both build it (the last writer wins, each file is complete when written).

    from rl.bench.common import bench_config, prepare_assets
    assets = prepare_assets(quick=True)
    config = bench_config(quick=True, overrides=[f"model.path={assets.model_path}"])
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from rl.app.registries import load_experiment
from rl.config import ExperimentConfig
from rl.grpo import distributed

CACHE_ENV = "FANOUT_BENCH_CACHE"
QUICKSTART_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"

# What the benchmarks measured before configs/quickstart.yaml became the reader's recipe: one world, no copy
# pretraining, no written-out comparisons or drills. Reading changes what a policy answers, not what a step
# costs, and these keep the suites' figures in docs/BENCHMARKS.md reproducible and their warm-starts short.
MEMORY_WORLD_OVERRIDES = [
    "data.world.train_worlds=0",
    "data.world.names=per_set",
    "model.tiny.pretrain_steps=0",
    "sft.expert_think=none",
    "sft.forced_answer_fraction=0",
    "sft.comparison_drills=0",
]
# The world, model and SFT settings of each setting (they decide what is cached).
ASSET_OVERRIDES = {
    "full": [
        *MEMORY_WORLD_OVERRIDES,
        "data.world.num_entities_per_kind=40",
        "data.world.num_train=600",
        "data.world.num_validation=20",
        "data.world.num_test=60",
        "model.tiny.hidden_size=128",
        "model.tiny.num_hidden_layers=2",
        "model.tiny.intermediate_size=512",
        "model.tiny.vocab_size=2048",
        "sft.enabled=true",
        "sft.num_trajectories=600",
        "sft.max_steps=200",
        "sft.batch_size=16",
        "sft.parallel_fraction=0.3",
    ],
    "quick": [
        *MEMORY_WORLD_OVERRIDES,
        "data.world.num_entities_per_kind=12",
        "data.world.num_train=40",
        "data.world.num_validation=6",
        "data.world.num_test=10",
        "model.tiny.hidden_size=32",
        "model.tiny.num_hidden_layers=1",
        "model.tiny.num_attention_heads=2",
        "model.tiny.num_key_value_heads=1",
        "model.tiny.intermediate_size=64",
        "model.tiny.vocab_size=512",
        "sft.enabled=false",
    ],
}
# Rollout and training sizes of each setting (not cached: suites may change them).
RUN_OVERRIDES = {
    "full": [
        "rollout.group_size=4",
        "rollout.questions_per_step=4",
        "rollout.questions_per_worker_call=2",
        "rollout.max_turns=3",
        "rollout.max_new_tokens_per_turn=32",
        "rollout.max_context_tokens=768",
        "tools.latency_s=0.1",
        "grpo.total_steps=8",
        "grpo.learning_rate=2e-4",   # the learning rate the suites' figures were measured at
    ],
    "quick": [
        "rollout.group_size=2",
        "rollout.questions_per_step=2",
        "rollout.questions_per_worker_call=1",
        "rollout.max_turns=1",
        "rollout.max_new_tokens_per_turn=6",
        "rollout.max_context_tokens=256",
        "rollout.max_observation_tokens=32",
        "tools.latency_s=0.01",
        "grpo.total_steps=2",
    ],
}
QUIET_OVERRIDES = [
    "logging.wandb_mode=disabled",
    "logging.plots=false",
    "logging.progress_bar=false",
    "eval.at_end=false",
    "checkpoint.every_steps=0",
    "checkpoint.keep_last=1",
    "experiment.overwrite=true",
]


def setting_name(quick: bool) -> str:
    return "quick" if quick else "full"


def cache_dir() -> Path:
    """Where worlds, models and benchmark runs are written: $FANOUT_BENCH_CACHE or <temp>/fanout-bench."""
    folder = Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "fanout-bench")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def bench_overrides(quick: bool, overrides: Sequence[str] = ()) -> list[str]:
    """The `key=value` overrides that turn configs/quickstart.yaml into the benchmark config.

    `overrides` come last, so they win.
    """
    setting = setting_name(quick)
    return [
        *ASSET_OVERRIDES[setting],
        *RUN_OVERRIDES[setting],
        *QUIET_OVERRIDES,
        f"experiment.output_dir={cache_dir() / setting / 'runs'}",
        f"data.world_dir={cache_dir() / setting / 'world'}",
        *overrides,
    ]


def bench_config(quick: bool, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The quickstart config at benchmark sizes, writing under the cache folder; `overrides` win."""
    path = QUICKSTART_CONFIG if QUICKSTART_CONFIG.is_file() else None
    return load_experiment(path, bench_overrides(quick, overrides))


@dataclass
class BenchAssets:
    """What the suites run on: the world (questions + corpus file) and a saved model folder."""

    world: Any  # data.world.World
    world_dir: Path
    corpus_path: str
    model_path: Path  # SFT warm-start (full) or the untrained tiny model (quick)
    base_model_path: Path  # the untrained tiny model
    setting: str

    @property
    def train_questions(self) -> list:
        return self.world.splits["train"]

    def run_overrides(self) -> list[str]:
        """Overrides that make a `fanout train` config start from these assets (no rebuild, no SFT)."""
        return [f"model.path={self.model_path}", "sft.enabled=false", f"data.world_dir={self.world_dir}"]


def assets_key(config: ExperimentConfig) -> str:
    """A short hash of everything the world and the warm-start depend on (a changed config rebuilds them)."""
    import hashlib
    import json

    from rl.config import to_dict

    values = to_dict(config)
    relevant = {section: values[section] for section in ("model", "sft", "retriever", "rollout", "tools")}
    relevant["world"] = values["data"]["world"]
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]


def prepare_assets(quick: bool) -> BenchAssets:
    """Build (once) and return the world and the tiny model of the setting; later calls reuse the cache."""
    from data.world import ensure_world
    from rollouts.model_loading import set_offline_mode
    from rl.app.sft import BASE_MODEL_SUBDIR, WarmStartSource, ensure_warm_start

    set_offline_mode()
    setting = setting_name(quick)
    config = bench_config(quick, ["experiment.overwrite=false", "experiment.resume=false"])
    config.experiment.name = f"assets-{assets_key(config)}"
    world_dir = Path(config.data.world_dir)
    world = ensure_world(world_dir, config.data.world)
    started = time.perf_counter()
    model_path = ensure_warm_start(config, WarmStartSource.from_world(world))
    elapsed = time.perf_counter() - started
    if elapsed > 5:
        print(
            f"[bench setup] built the {setting} world and tiny model in {elapsed:.0f} s "
            f"(cached in {cache_dir()})"
        )
    return BenchAssets(
        world=world,
        world_dir=world_dir,
        corpus_path=str(world_dir / "corpus.jsonl"),
        model_path=Path(model_path),
        base_model_path=config.run_dir / BASE_MODEL_SUBDIR,
        setting=setting,
    )


def generate_training_batch(
    config: ExperimentConfig, assets: BenchAssets, model_path: str | Path | None = None, seed: int = 0
) -> list:
    """One training batch: questions_per_step scored groups (data.trajectory.Group) of group_size
    trajectories, generated in this process by the HF engine through the agent loop with real search and
    the configured rewards.

    What a rollout actor would return for one step, without Ray: the suites that time a trainer step pass
    it to `GRPOTrainer.step` as it is.
    """
    from rollouts.agent_loop import run_episodes
    from rollouts.engine import build_engine
    from rollouts.environment import build_environment
    from rollouts.worker import score_groups

    engine = build_engine(config.rollout.engine, model_path or assets.model_path, config.rollout)
    environment = build_environment(config.rollout, config.tools, config.retriever, documents=assets.world.documents)
    protocol, executor = environment.protocol, environment.executor
    questions = assets.train_questions[: config.rollout.questions_per_step]
    groups = run_episodes(
        engine,
        protocol,
        executor,
        questions,
        config.rollout.group_size,
        config.rollout,
        policy_version=0,
        seed=seed,
    )
    score_groups(groups, config.reward)
    return groups


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------


# The launcher's variables (or those of the trainer's one-process group): a child process must not inherit them.
DISTRIBUTED_VARIABLES = distributed.DISTRIBUTED_VARIABLES


def child_environment(**extra: str) -> dict[str, str]:
    """This process's environment without the distributed variables, plus `extra`."""
    return {**{k: v for k, v in os.environ.items() if k not in DISTRIBUTED_VARIABLES}, **extra}


@contextmanager
def clean_spawn_environment(**extra: str) -> Iterator[None]:
    """Within the block, os.environ is `child_environment(**extra)` (what a spawned process inherits)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(child_environment(**extra))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextmanager
def timer() -> Iterator[dict]:
    """`with timer() as elapsed: ...` then `elapsed["s"]` holds the wall seconds of the block."""
    result = {"s": 0.0}
    started = time.perf_counter()
    try:
        yield result
    finally:
        result["s"] = time.perf_counter() - started


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A Markdown table (numbers formatted by the caller), preceded by a one-line title."""
    print(title)
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if index == 0 else "---:" for index in range(len(header))) + "|")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    print(flush=True)


def num_trajectories(groups: Sequence[Any]) -> int:
    """Trajectories over all the groups (the samples of a training batch)."""
    return sum(len(group.trajectories) for group in groups)


def generated_tokens(groups: Sequence[Any]) -> int:
    """Model-generated tokens (loss-mask ones) over every trajectory of the groups."""
    return sum(trajectory.num_generated_tokens for group in groups for trajectory in group.trajectories)


def load_average() -> float:
    """1-minute load average of the machine (0 where the OS does not report it)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return 0.0


def ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 3) if denominator > 0 else 0.0


__all__ = [
    "BenchAssets",
    "bench_config",
    "bench_overrides",
    "cache_dir",
    "child_environment",
    "clean_spawn_environment",
    "generate_training_batch",
    "generated_tokens",
    "load_average",
    "num_trajectories",
    "prepare_assets",
    "print_table",
    "ratio",
    "setting_name",
    "timer",
]
