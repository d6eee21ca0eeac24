"""Benchmark: learning per wall-clock second. Does asynchronous GRPO reach the synchronous policy sooner?

    fanout bench learn                              # 60 steps per run, 8 questions x G=4 per step
    fanout bench learn grpo.total_steps=120         # key=value overrides, applied after the suite's own
    fanout bench learn --quick                      # 2 steps on the micro model (test-suite setting)
    fanout bench learn --from-run runs/reader       # a finished run's config, world and SFT warm-start
    fanout bench learn --async-steps 100            # staleness 2 trains 100 steps (about the sync run's wall)

Two real `fanout train` runs (`rl.app.train.train`, in this process, one after the other) of the same
config, seed and number of steps, from the cached SFT warm-start (rl/bench/common.py):
`async.max_staleness=0` (exactly synchronous on-policy GRPO) and `async.max_staleness=2`. Each ends with
the final evaluation on the test split of the benchmark world (greedy, every test question). With
`--from-run RUN_DIR` both runs start instead from that run's saved config.yaml, its world and its SFT
warm-start (RUN_DIR/sft), with its rollout settings: a setting in which GRPO is known to raise the reward.
`--async-steps N` gives the staleness-2 run N steps instead of the synchronous run's number: with N about
the synchronous steps ÷ the asynchronous run's step-time ratio, both runs get about the same wall budget
(the question "same policy sooner?" then compares the policies reached at equal time, not at equal steps).

Definitions, from each run's metrics.jsonl (rows with `reward/total` and `perf/step_s`, in step order):
  wall time of step i     Σ perf/step_s of steps 1..i: the training loop's time since its start (the first
                          step includes the rollout actors' start-up, in both runs);
  trailing mean at step i mean reward/total over steps i-k+1..i, defined from step k on; the window
                          k = max(1, round(steps / 6)) (10 for 60 steps) smooths the per-step noise of a
                          batch of 32 trajectories;
  target                  the synchronous run's trailing mean at its last step (its final mean reward);
  time to target          the wall time of the first step whose trailing mean reaches the target. The
                          synchronous run reaches it at its last step at the latest; an asynchronous run that
                          never does has none (null), and the ratio is then null too;
  time_to_sync_reward_ratio  staleness 2's time to target ÷ staleness 0's (below 1: asynchronous got there
                          sooner);
  reward at sync wall     each run's trailing mean at its last step that ended within the synchronous run's
                          wall time (with --async-steps, the two runs' rewards at equal time);
  em                      the final evaluation's EM over all test questions, with its Wilson interval.

The curves go to bench-learn.png beside the two runs (its path is printed and in the JSON line): each run's
reward against wall time, its trailing mean, the target and where each run reached it.

What it simplifies on purpose: one seed and one run per setting (the ratio moves between repeats; rerun
to see by how much); the target is only meaningful when the synchronous reward actually rises over the
run, so the table prints each run's first-window and last-window mean reward next to it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from rl.bench.common import bench_config, load_average, prepare_assets, print_table

if TYPE_CHECKING:
    from rl.config import ExperimentConfig

STALENESS_VALUES = (0, 2)
REWARD_KEY = "reward/total"
STEP_TIME_KEY = "perf/step_s"


# ----------------------------------------------------------------------------------------------
# Time to reward (pure)
# ----------------------------------------------------------------------------------------------


def training_curve(rows: Sequence[dict]) -> list[tuple[float, float]]:
    """[(wall seconds since the loop started, reward/total)] per training step, in step order."""
    steps = sorted((row for row in rows if REWARD_KEY in row and STEP_TIME_KEY in row), key=lambda row: row["step"])
    curve, elapsed = [], 0.0
    for row in steps:
        elapsed += row[STEP_TIME_KEY]
        curve.append((elapsed, row[REWARD_KEY]))
    return curve


def read_curve(metrics_path: str | Path) -> list[tuple[float, float]]:
    return training_curve([json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()])


def reward_window(total_steps: int) -> int:
    """k, the trailing window: a sixth of the run (at least 1 step)."""
    return max(1, round(total_steps / 6))


def trailing_means(rewards: Sequence[float], window: int) -> list[float | None]:
    """Mean of the last `window` rewards at each step; None before a full window."""
    if window < 1:
        raise ValueError(f"the reward window must be at least 1 step, got {window}")
    return [None if index + 1 < window else sum(rewards[index + 1 - window:index + 1]) / window
            for index in range(len(rewards))]


def final_reward(curve: Sequence[tuple[float, float]], window: int) -> float:
    """The trailing mean at the last step (the target, for the synchronous run)."""
    if len(curve) < window:
        raise ValueError(f"a run of {len(curve)} steps has no full window of {window} steps")
    return trailing_means([reward for _, reward in curve], window)[-1]


def time_to_reward(curve: Sequence[tuple[float, float]], target: float, window: int) -> float | None:
    """Wall time of the first step whose trailing mean reaches `target`; None if no step does."""
    means = trailing_means([reward for _, reward in curve], window)
    for (elapsed, _), mean in zip(curve, means):
        if mean is not None and mean >= target - 1e-12:  # the target run's own last mean equals it exactly
            return elapsed
    return None


def learn_figures(curves: dict[int, list[tuple[float, float]]], window: int) -> dict:
    """Times to the synchronous run's final reward and their ratio, from the runs' curves by staleness."""
    target = final_reward(curves[0], window)
    times = {staleness: time_to_reward(curve, target, window) for staleness, curve in curves.items()}
    synchronous, asynchronous = times[0], times[max(curves)]
    ratio = None if synchronous is None or asynchronous is None or synchronous <= 0 else asynchronous / synchronous
    return {
        "target_reward": target,
        "time_to_sync_reward_s": {str(s): t for s, t in times.items()},
        "time_to_sync_reward_ratio": ratio,
        "total_s": {str(s): curve[-1][0] for s, curve in curves.items()},
        "reward_first_window": {str(s): trailing_means([r for _, r in curve], window)[window - 1]
                                for s, curve in curves.items()},
        "reward_last_window": {str(s): final_reward(curve, window) for s, curve in curves.items()},
        "reward_at_sync_wall": {str(s): reward_at_time(curve, curves[0][-1][0], window)
                                for s, curve in curves.items()},
    }


def reward_at_time(curve: Sequence[tuple[float, float]], elapsed: float, window: int) -> float | None:
    """The trailing mean at the last step that ended by wall time `elapsed`; None before a full window."""
    means = trailing_means([reward for _, reward in curve], window)
    reached = [mean for (step_elapsed, _), mean in zip(curve, means) if step_elapsed <= elapsed + 1e-9]
    return reached[-1] if reached else None


def plot_learn_curves(curves: dict[int, list[tuple[float, float]]], window: int, path: str | Path,
                      title: str = "") -> Path:
    """Reward against wall time, one curve per staleness: each step's reward (faint) and its trailing mean,
    the target as a dashed line and each run's time to target as a dot on it."""
    from rl.app.plots import pyplot, save_figure

    target = final_reward(curves[0], window)
    figure, axes = pyplot().subplots(figsize=(6.4, 3.8), dpi=100)
    for staleness, curve in sorted(curves.items()):
        times = [elapsed for elapsed, _ in curve]
        rewards = [reward for _, reward in curve]
        raw = axes.plot(times, rewards, linewidth=0.8, alpha=0.3)
        color = raw[0].get_color()
        means = trailing_means(rewards, window)
        label = f"max_staleness {staleness} (trailing {window}-step mean)"
        axes.plot([t for t, m in zip(times, means) if m is not None], [m for m in means if m is not None],
                  linewidth=2.0, color=color, label=label)
        reached = time_to_reward(curve, target, window)
        if reached is not None:
            axes.plot([reached], [target], marker="o", color=color)
    axes.axhline(target, linestyle="--", color="grey", linewidth=1.0, label=f"target {target:.3f}")
    axes.set_xlabel("wall time of the training loop, s")
    axes.set_ylabel(REWARD_KEY)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="x-small")
    if title:
        axes.set_title(title, fontsize="medium")
    return save_figure(figure, path)


# ----------------------------------------------------------------------------------------------
# The runs
# ----------------------------------------------------------------------------------------------


# With --from-run: the run's own rollout settings and batch, one actor with 1 CPU and 1 torch thread.
FROM_RUN_OVERRIDES = ["grpo.total_steps=60", "rollout.num_workers=1", "rollout.worker_num_cpus=1",
                      "rollout.torch_threads_per_worker=1", "async.max_buffered_groups=64"]


def learn_overrides(quick: bool) -> list[str]:
    if quick:
        return ["grpo.total_steps=2"]
    return ["grpo.total_steps=60", "rollout.questions_per_step=8", "rollout.group_size=4",
            "rollout.worker_num_cpus=1", "rollout.torch_threads_per_worker=1", "async.max_buffered_groups=64"]


def from_run_config(from_run: Path, max_staleness: int, overrides: Sequence[str]) -> ExperimentConfig:
    """The config of one setting started from a finished run: its config.yaml, world and SFT warm-start."""
    from rl.app.registries import load_experiment
    from rl.bench.common import QUIET_OVERRIDES, cache_dir
    from rl.config import ConfigError

    saved = from_run / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"--from-run {from_run}: no config.yaml there (the folder of a `fanout train` run)")
    run_config = load_experiment(saved)
    warm_start = from_run / run_config.sft.output_subdir
    if not (warm_start / "config.json").is_file():
        raise ConfigError(f"--from-run {from_run}: no SFT warm-start in {warm_start} (train with sft.enabled=true)")
    world_dir = run_config.data.world_dir or str(from_run / "world")
    return load_experiment(saved, [
        *QUIET_OVERRIDES, f"experiment.output_dir={cache_dir() / 'from-run' / 'runs'}",
        f"experiment.name=bench-learn-s{max_staleness}", f"model.path={warm_start}", "sft.enabled=false",
        f"data.world_dir={world_dir}", *FROM_RUN_OVERRIDES, "eval.at_end=true", "eval.num_questions=0",
        *overrides, f"async.max_staleness={max_staleness}",
    ])


def setting_config(quick: bool, max_staleness: int, overrides: Sequence[str], asset_overrides: list[str],
                   from_run: Path | None) -> ExperimentConfig:
    if from_run is not None:
        return from_run_config(from_run, max_staleness, overrides)
    return bench_config(quick, [
        f"experiment.name=bench-learn-s{max_staleness}", *asset_overrides, *learn_overrides(quick),
        "eval.at_end=true", "eval.num_questions=0", *overrides, f"async.max_staleness={max_staleness}",
    ])


def run_setting(config: ExperimentConfig) -> dict:
    """One training run with its final eval: {"curve", "em", "em_ci95", "n", "staleness_mean", "run_dir"}."""
    from rl.app.train import train

    run_dir = train(config)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    overall = json.loads((run_dir / "eval.json").read_text())
    overall = next(iter(overall.values()))["all"]
    staleness = [row["async/staleness_mean"] for row in rows if "async/staleness_mean" in row]
    return {"curve": training_curve(rows), "em": overall["em"], "em_ci95": overall["em_ci95"], "n": overall["n"],
            "staleness_mean": sum(staleness) / len(staleness) if staleness else 0.0, "run_dir": run_dir}


def run(quick: bool, overrides: Sequence[str] = (), from_run: str | None = None,
        async_steps: int | None = None) -> dict:
    from rl.config import ConfigError

    torch.set_num_threads(1)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    for override in overrides:
        if override.split("=", 1)[0].strip() == "async.max_staleness":
            raise ConfigError("bench learn sets async.max_staleness itself (0 and 2); drop that override")
    if async_steps is not None and async_steps < 1:
        raise ConfigError(f"--async-steps must be at least 1, got {async_steps}")
    run_folder = Path(from_run) if from_run else None
    asset_overrides = [] if run_folder is not None else prepare_assets(quick).run_overrides()
    load_before = load_average()
    results = {}
    for staleness in STALENESS_VALUES:
        steps_override = [f"grpo.total_steps={async_steps}"] if staleness and async_steps is not None else []
        results[staleness] = run_setting(setting_config(quick, staleness, [*overrides, *steps_override],
                                                        asset_overrides, run_folder))
    steps = len(results[0]["curve"])
    window = reward_window(steps)
    curves = {staleness: result["curve"] for staleness, result in results.items()}
    figures = learn_figures(curves, window)
    print_learn_table(results, figures, window, load_before)
    plot = plot_learn_curves(curves, window, Path(results[0]["run_dir"]).parent / "bench-learn.png")
    print(f"curves: {plot}")
    return {
        "time_to_sync_reward_ratio": _rounded(figures["time_to_sync_reward_ratio"]),
        "em": {str(s): round(result["em"], 4) for s, result in results.items()},
        "em_ci95": {str(s): [round(value, 4) for value in result["em_ci95"]] for s, result in results.items()},
        "eval_questions": results[0]["n"],
        "time_to_sync_reward_s": {s: _rounded(t) for s, t in figures["time_to_sync_reward_s"].items()},
        "total_s": {s: _rounded(t) for s, t in figures["total_s"].items()},
        "target_reward": _rounded(figures["target_reward"]),
        "reward_first_window": {s: _rounded(r) for s, r in figures["reward_first_window"].items()},
        "reward_last_window": {s: _rounded(r) for s, r in figures["reward_last_window"].items()},
        "reward_at_sync_wall": {s: _rounded(r) for s, r in figures["reward_at_sync_wall"].items()},
        "steps": steps,
        "steps_async": len(results[max(results)]["curve"]),
        "window": window,
        "load_average": load_before,
        "from_run": str(run_folder) if run_folder is not None else None,
        "plot": str(plot),
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def print_learn_table(results: dict, figures: dict, window: int, load_before: float) -> None:
    def seconds(value: float | None) -> str:
        return "not reached" if value is None else f"{value:.1f}"

    def reward(value: float | None) -> str:
        return "—" if value is None else f"{value:.3f}"

    rows = []
    for staleness, result in results.items():
        key = str(staleness)
        time_to_target = figures["time_to_sync_reward_s"][key]
        base = figures["time_to_sync_reward_s"]["0"]
        rows.append((
            staleness, len(result["curve"]), f"{figures['total_s'][key]:.1f}",
            f"{figures['reward_first_window'][key]:.3f}", f"{figures['reward_last_window'][key]:.3f}",
            reward(figures["reward_at_sync_wall"][key]),
            seconds(time_to_target),
            "—" if time_to_target is None or not base else f"{time_to_target / base:.2f}x",
            f"{result['em']:.3f} [{result['em_ci95'][0]:.3f}–{result['em_ci95'][1]:.3f}]",
            f"{result['staleness_mean']:.2f}",
        ))
    print_table(
        f"learn: time to the synchronous run's final mean reward ({figures['target_reward']:.3f}, trailing "
        f"{window}-step mean), final greedy EM on {results[0]['n']} test questions; load {load_before}",
        ["max_staleness", "steps", "wall s", f"reward first {window}", f"reward last {window}",
         "reward at sync wall", "time to target s",
         "vs sync", "EM [95% CI]", "mean staleness"],
        rows,
    )
