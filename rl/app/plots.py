"""Training curves as PNG files, read from a run's metrics.jsonl (matplotlib, headless Agg backend).

One PNG per metric key, named after the key with `/` turned into `__` (`reward__total.png`), showing
the raw values per step and, when there are enough points, a moving average. By default the keys that
tell the story of a fan-out run are drawn: rewards, model calls, tool calls, sub-queries per round,
staleness, throughput, losses and evaluation figures, plus `overview.png`, one panel each for the
total reward, model calls, sub-queries per round and staleness with the parallel / sequential /
single curves overlaid. Non-numeric and missing values are skipped.

`plot_runs` draws several runs on one figure (a panel per key, a curve per run), e.g. the fanout and
sequential policies of scripts/compare_fanout_sequential.sh.

    python -m rl.app.plots runs/quickstart/metrics.jsonl runs/quickstart/plots
    python -m rl.app.plots --compare runs/fanout_vs_sequential.png fanout=runs/fanout/metrics.jsonl \
        sequential=runs/sequential/metrics.jsonl

`curve_summary` / `--summary` prints the same story as numbers: for each run, the mean of each key over
the first and the last N logged steps (the tables of docs/RESULTS.md).

    python -m rl.app.plots --summary 10 fanout=runs/fanout/metrics.jsonl sequential=runs/sequential/metrics.jsonl
"""

from __future__ import annotations

import fnmatch
import sys
from pathlib import Path

from rl.app.metrics import read_metrics

DEFAULT_KEY_PATTERNS = (
    "reward/*",
    "rollout/model_calls",
    "rollout/model_calls/*",  # per question structure (parallel / sequential / single), environment (qa / apps)
    "rollout/tool_calls",
    "rollout/subqueries_per_round",
    "rollout/subqueries_per_round/*",
    "rollout/format_valid",
    "async/staleness_mean",
    "perf/samples_per_s",
    "loss/*",
    "eval/*/all/em",
    "eval/*/all/f1",
    "eval/*/all/model_calls",
    "eval/*/all/subqueries_per_round",
)
_MOVING_AVERAGE_MIN_POINTS = 10


def metric_series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one key over the rows that carry a numeric value for it."""
    steps, values = [], []
    for row in rows:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and "step" in row:
            steps.append(int(row["step"]))
            values.append(float(value))
    return steps, values


def select_keys(rows: list[dict], patterns: tuple[str, ...] | list[str]) -> list[str]:
    """Keys present in the rows that match any of the glob patterns, in first-seen order."""
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            if key != "step" and any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns):
                seen.setdefault(key, None)
    return list(seen)


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` points (shorter at the start)."""
    averaged, running_sum = [], 0.0
    for index, value in enumerate(values):
        running_sum += value
        if index >= window:
            running_sum -= values[index - window]
        averaged.append(running_sum / min(index + 1, window))
    return averaged


# The fan-out story on one page: each panel overlays a metric and its per-structure variants.
OVERVIEW_PANELS = (
    "reward/total",
    "rollout/model_calls",
    "rollout/subqueries_per_round",
    "async/staleness_mean",
)
STRUCTURES = ("parallel", "sequential", "single")


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: str | Path) -> Path:
    """Lay the figure out, write it to `path` (its folder made if missing) and free it; returns the path."""
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    pyplot().close(figure)
    return path


def _draw_series(axes, steps: list[int], values: list[float], label: str) -> None:
    """Raw values (markers when few), plus a moving average once there are enough points."""
    from matplotlib.ticker import MaxNLocator

    few = len(values) < _MOVING_AVERAGE_MIN_POINTS
    lines = axes.plot(
        steps, values, marker="o" if few else None, linewidth=1.0, alpha=0.6 if not few else 1.0, label=label
    )
    if not few:
        window = max(2, len(values) // 10)
        axes.plot(
            steps,
            moving_average(values, window),
            linewidth=2.0,
            color=lines[0].get_color(),
            label=f"{label} (moving average {window})",
        )
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("step")
    axes.grid(alpha=0.3)


def plot_overview(rows: list[dict], path: Path) -> Path | None:
    """One figure with a panel per OVERVIEW_PANELS key present (per-structure curves overlaid)."""
    panels = [key for key in OVERVIEW_PANELS if metric_series(rows, key)[0]]
    curves = {
        key: [
            (label.rsplit("/", 1)[-1] if label != key else "all", *metric_series(rows, label))
            for label in (key, *(f"{key}/{structure}" for structure in STRUCTURES))
        ]
        for key in panels
    }
    return _save_panels(curves, path, title_size="large")  # matplotlib's default title size


def _save_panels(curves: dict[str, list[tuple[str, list[int], list[float]]]], path: str | Path,
                 title_size: str) -> Path | None:
    """One figure, a panel per key (left to right), each with its (label, steps, values) curves; None if empty."""
    if not curves:
        return None
    plt = pyplot()
    figure, axes_list = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.2), dpi=100, squeeze=False)
    for axes, (key, panel_curves) in zip(axes_list[0], curves.items()):
        for label, steps, values in panel_curves:
            if steps:
                _draw_series(axes, steps, values, label)
        axes.set_title(key, fontsize=title_size)
        axes.legend(fontsize="x-small")
    return save_figure(figure, path)


def plot_metrics(metrics_jsonl: str | Path, out_dir: str | Path, keys: list[str] | None = None) -> list[Path]:
    """Write one PNG per metric key to out_dir (plus overview.png by default); returns the written paths.

    keys: exact keys or glob patterns (`reward/*`); None draws DEFAULT_KEY_PATTERNS and the overview.
    """
    rows = read_metrics(metrics_jsonl)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plt = pyplot()
    written = []
    if keys is None:
        overview = plot_overview(rows, out_dir / "overview.png")
        written.extend([overview] if overview else [])
    for key in select_keys(rows, keys if keys is not None else DEFAULT_KEY_PATTERNS):
        steps, values = metric_series(rows, key)
        if not steps:
            continue
        figure, axes = plt.subplots(figsize=(5.0, 3.2), dpi=100)
        _draw_series(axes, steps, values, key)
        axes.set_title(key)
        axes.legend(fontsize="small")
        written.append(save_figure(figure, out_dir / f"{key.replace('/', '__')}.png"))
    return written


# Two policies side by side (scripts/compare_fanout_sequential.sh): what fanning out changes, per structure.
COMPARE_PANELS = (
    "reward/exact_match/parallel",
    "rollout/model_calls/parallel",
    "rollout/subqueries_per_round/parallel",
    "rollout/model_calls/sequential",
)


def plot_runs(metrics_by_label: dict[str, str | Path], path: str | Path,
              keys: tuple[str, ...] | list[str] = COMPARE_PANELS) -> Path | None:
    """One figure, a panel per key, one curve per run (label -> its metrics.jsonl); None if no key is logged."""
    rows_by_label = {label: read_metrics(metrics) for label, metrics in metrics_by_label.items()}
    panels = [key for key in keys if any(metric_series(rows, key)[0] for rows in rows_by_label.values())]
    curves = {key: [(label, *metric_series(rows, key)) for label, rows in rows_by_label.items()] for key in panels}
    return _save_panels(curves, path, title_size="small")


# The figures of a run's training curve that docs/RESULTS.md reports (first vs last steps).
SUMMARY_KEYS = (
    "reward/total",
    "reward/exact_match",
    "reward/exact_match/parallel",
    "reward/exact_match/sequential",
    "reward/exact_match/single",
    "rollout/model_calls/parallel",
    "rollout/subqueries_per_round/parallel",
    "rollout/model_calls/sequential",
    "rollout/subqueries_per_round/sequential",
    "async/staleness_mean",
    "perf/samples_per_s",
    "perf/step_s",
)


def curve_summary(rows: list[dict], window: int,
                  keys: tuple[str, ...] | list[str] = SUMMARY_KEYS) -> dict[str, tuple[float, float]]:
    """key -> (mean over the first `window` logged values, mean over the last `window`), for logged keys."""
    if window < 1:
        raise ValueError(f"summary window must be at least 1 step, got {window}")
    summary = {}
    for key in keys:
        _, values = metric_series(rows, key)
        if values:
            head, tail = values[:window], values[-window:]
            summary[key] = (sum(head) / len(head), sum(tail) / len(tail))
    return summary


def summary_table(metrics_by_label: dict[str, str | Path], window: int) -> str:
    """Markdown: a row per key, first-N and last-N columns per run (blank where a run did not log the key)."""
    summaries = {label: curve_summary(read_metrics(path), window) for label, path in metrics_by_label.items()}
    keys = [key for key in SUMMARY_KEYS if any(key in summary for summary in summaries.values())]
    header = ["figure"] + [f"{label} {part} {window}" for label in summaries for part in ("first", "last")]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for key in keys:
        cells = [f"`{key}`"]
        for summary in summaries.values():
            first, last = summary.get(key, (None, None))
            cells.extend(["", ""] if first is None else [f"{first:.3f}", f"{last:.3f}"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


USAGE = ("usage: python -m rl.app.plots METRICS_JSONL OUT_DIR [KEY_OR_PATTERN ...]\n"
         "       python -m rl.app.plots --compare OUT_PNG LABEL=METRICS_JSONL LABEL=METRICS_JSONL ...\n"
         "       python -m rl.app.plots --summary STEPS LABEL=METRICS_JSONL [LABEL=METRICS_JSONL ...]")


def _labelled_runs(arguments: list[str]) -> dict[str, str] | None:
    """LABEL=PATH arguments as a dict, or None if one is malformed."""
    runs = [argument.split("=", 1) for argument in arguments]
    if any(len(run) != 2 or not run[0] or not run[1] for run in runs):
        return None
    return dict(runs)


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["--summary"]:
        runs = _labelled_runs(arguments[2:])
        if len(arguments) < 3 or not runs or not arguments[1].isdigit() or int(arguments[1]) < 1:
            print(USAGE, file=sys.stderr)
            return 2
        print(summary_table(runs, int(arguments[1])))
        return 0
    if arguments[:1] == ["--compare"]:
        runs = _labelled_runs(arguments[2:])
        if len(arguments) < 4 or not runs:
            print(USAGE, file=sys.stderr)
            return 2
        written = plot_runs(runs, arguments[1])
        print(f"wrote {written}" if written else "no compared metric was logged by these runs")
        return 0
    if len(arguments) < 2:
        print(USAGE, file=sys.stderr)
        return 2
    paths = plot_metrics(arguments[0], arguments[1], arguments[2:] or None)
    print(f"wrote {len(paths)} plot(s) to {arguments[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
