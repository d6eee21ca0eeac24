"""The fanout-vs-sequential grid: eval JSONs of several policies, seeds and search budgets → one table.

scripts/fanout_grid.sh writes one `fanout eval --group-by hops --search-budget B` result per policy,
training seed and budget as

    EVAL_DIR/<policy>/seed<S>/budget<B>.json          e.g. runs/grid/eval/fanout/seed0/budget3.json

and this module aggregates them, per dataset × budget × group (structure or structure/hops row) × policy:

  em, em_ci95        mean over seeds of the per-seed EM, and the 95% Student t interval of that mean
                     (mean ± t_{0.975, k-1} · sd / √k over the k seed means; none with one seed). The
                     spread between seeds is the training randomness (each seed has its own SFT
                     warm-start and GRPO run), which is what a claim about the training recipe must beat.
                     Not clipped to [0, 1]: with 3 seeds (t = 4.30) a wide interval says so. Seeds that
                     all score the same give a zero-width interval: read em_pooled_ci95 then;
  em_pooled_ci95     the Wilson interval of all k × n episodes pooled as one sample: the question-sampling
                     uncertainty alone, narrower, for reference (it ignores seed-to-seed variation);
  model_calls, subqueries_per_round   means over seeds;
  difference         A − B (by default fanout − sequential) paired by seed: both policies of a seed share
                     the warm-start and the questions, so the interval is the t interval of the k per-seed
                     differences (seeds that both policies have); `intervals_overlap` says whether A's and
                     B's own intervals overlap.

Every file of a cell must report the same n for a group (the same questions), else this is an error.
What it simplifies on purpose: a cell with seeds missing for one policy is averaged over the seeds it
has (`seeds` says how many); t quantiles come from a table for 1-30 degrees of freedom (scipy is not a
dependency), beyond that the normal quantile.

    python -m rl.app.grid runs/grid/eval --out runs/grid/grid      # writes grid.json and grid.md, prints the table
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Sequence

from rl.app.evaluate import Z_95, ordered_groups, format_interval, wilson_interval
from rl.config import ConfigError

SEED_DIR = re.compile(r"seed(\d+)$")
BUDGET_FILE = re.compile(r"budget(\d+)\.json$")
DEFAULT_DIFFERENCE = ("fanout", "sequential")
# Student t 97.5% quantiles for 1..30 degrees of freedom.
T_975 = (12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851, 2.364624252,
         2.306004135, 2.262157163, 2.228138852, 2.200985160, 2.178812830, 2.160368656, 2.144786688,
         2.131449546, 2.119905299, 2.109815578, 2.100922040, 2.093024054, 2.085963447, 2.079613845,
         2.073873068, 2.068657610, 2.063898562, 2.059538553, 2.055529439, 2.051830516, 2.048407142,
         2.045229642, 2.042272456)


def t_quantile_975(degrees_of_freedom: int) -> float:
    if degrees_of_freedom < 1:
        raise ValueError("a t interval needs at least 2 values (1 degree of freedom)")
    return T_975[degrees_of_freedom - 1] if degrees_of_freedom <= len(T_975) else Z_95


def mean_t_interval(values: Sequence[float]) -> tuple[float, list[float] | None]:
    """(mean, [low, high] of the 95% t interval of the mean); the interval is None for fewer than 2 values."""
    count = len(values)
    mean = sum(values) / count
    if count < 2:
        return mean, None
    variance = sum((value - mean) ** 2 for value in values) / (count - 1)
    half_width = t_quantile_975(count - 1) * math.sqrt(variance / count)
    return mean, [mean - half_width, mean + half_width]


# ----------------------------------------------------------------------------------------------
# Reading the eval files
# ----------------------------------------------------------------------------------------------


def read_eval_tree(eval_dir: str | Path) -> dict[str, dict[int, dict[int, dict]]]:
    """{policy: {seed: {budget: eval JSON}}} from EVAL_DIR/<policy>/seed<S>/budget<B>.json."""
    eval_dir = Path(eval_dir)
    if not eval_dir.is_dir():
        raise ConfigError(f"eval folder '{eval_dir}' does not exist (expected <policy>/seed<S>/budget<B>.json in it)")
    tree: dict[str, dict[int, dict[int, dict]]] = {}
    for path in sorted(eval_dir.glob("*/seed*/budget*.json")):
        seed_match, budget_match = SEED_DIR.match(path.parent.name), BUDGET_FILE.match(path.name)
        if not (seed_match and budget_match):
            continue
        try:
            results = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}: not valid JSON ({error})") from None
        if not isinstance(results, dict) or not all(isinstance(groups, dict) for groups in results.values()):
            raise ConfigError(f"{path}: not a `fanout eval` result ({{dataset: {{group: figures}}}})")
        policy, seed, budget = path.parent.parent.name, int(seed_match.group(1)), int(budget_match.group(1))
        tree.setdefault(policy, {}).setdefault(seed, {})[budget] = {"path": str(path), "results": results}
    if not tree:
        raise ConfigError(f"no <policy>/seed<S>/budget<B>.json file under '{eval_dir}'")
    return tree


# ----------------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------------


def policy_cell(per_seed: dict[int, dict]) -> dict:
    """One policy's figures in one cell from {seed: that group's eval figures}."""
    seeds = sorted(per_seed)
    em_by_seed = [per_seed[seed]["em"] for seed in seeds]
    em, em_ci95 = mean_t_interval(em_by_seed)
    n = per_seed[seeds[0]]["n"]
    return {
        "seeds": len(seeds),
        "em": em,
        "em_ci95": em_ci95,
        "em_by_seed": dict(zip((str(seed) for seed in seeds), em_by_seed)),
        "em_pooled_ci95": wilson_interval(sum(value * n for value in em_by_seed), n * len(seeds)),
        "model_calls": sum(per_seed[seed]["model_calls"] for seed in seeds) / len(seeds),
        "subqueries_per_round": sum(per_seed[seed]["subqueries_per_round"] for seed in seeds) / len(seeds),
    }


def difference_cell(first: dict, second: dict) -> dict | None:
    """first − second, paired by the seeds both have; None when they share no seed."""
    shared = sorted(set(first["em_by_seed"]) & set(second["em_by_seed"]), key=int)
    if not shared:
        return None
    by_seed = [first["em_by_seed"][seed] - second["em_by_seed"][seed] for seed in shared]
    em, em_ci95 = mean_t_interval(by_seed)
    overlap = None
    if first["em_ci95"] is not None and second["em_ci95"] is not None:
        overlap = first["em_ci95"][0] <= second["em_ci95"][1] and second["em_ci95"][0] <= first["em_ci95"][1]
    return {"seeds": len(shared), "em": em, "em_ci95": em_ci95,
            "em_by_seed": dict(zip(shared, by_seed)), "intervals_overlap": overlap}


def aggregate_grid(tree: dict[str, dict[int, dict[int, dict]]],
                   difference: tuple[str, str] = DEFAULT_DIFFERENCE) -> dict:
    """The grid JSON: {"policies", "seeds", "budgets", "difference", "interval", "cells":
    {dataset: {budget: {group: {"n", "policies": {policy: policy_cell}, "difference": difference_cell}}}}}."""
    budgets = sorted({budget for seeds in tree.values() for budgets in seeds.values() for budget in budgets})
    collected: dict[str, dict[int, dict[str, dict]]] = {}  # dataset -> budget -> group -> {policy: {seed: figures}}
    sizes: dict[tuple, tuple[int, str]] = {}  # (dataset, budget, group) -> (n, first file)
    for policy, seeds in tree.items():
        for seed, by_budget in seeds.items():
            for budget, entry in by_budget.items():
                for dataset, groups in entry["results"].items():
                    for group, figures in groups.items():
                        key = (dataset, budget, group)
                        n, first_path = sizes.setdefault(key, (figures["n"], entry["path"]))
                        if figures["n"] != n:
                            raise ConfigError(
                                f"{entry['path']}: {dataset}/{group} has n={figures['n']} but {first_path} has "
                                f"n={n}; every evaluation of a budget must run on the same questions"
                            )
                        cell = collected.setdefault(dataset, {}).setdefault(budget, {}).setdefault(group, {})
                        cell.setdefault(policy, {})[seed] = figures
    cells: dict = {}
    for dataset, by_budget in collected.items():
        for budget in sorted(by_budget):
            by_group = by_budget[budget]
            for group in ordered_groups(by_group):
                policies = {policy: policy_cell(by_group[group][policy])
                            for policy in sorted(by_group[group])}
                first, second = difference
                contrast = (difference_cell(policies[first], policies[second])
                            if first in policies and second in policies else None)
                cells.setdefault(dataset, {}).setdefault(str(budget), {})[group] = {
                    "n": sizes[(dataset, budget, group)][0], "policies": policies, "difference": contrast}
    return {
        "policies": sorted(tree),
        "seeds": sorted({seed for seeds in tree.values() for seed in seeds}),
        "budgets": budgets,
        "difference": list(difference),
        "interval": "95% Student t interval over the per-seed values (difference: paired by seed); "
                    "em_pooled_ci95: Wilson interval over all episodes pooled",
        "cells": cells,
    }


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------


def _em_text(figures: dict | None) -> str:
    if figures is None:
        return "—"
    return f"{figures['em']:.3f} [{format_interval(figures['em_ci95'])}]"


def _signed_text(figures: dict | None) -> str:
    if figures is None:
        return "—"
    interval = figures["em_ci95"]
    interval_text = "—" if interval is None else f"{interval[0]:+.3f} to {interval[1]:+.3f}"
    return f"{figures['em']:+.3f} [{interval_text}]"


def format_grid(grid: dict) -> str:
    """Markdown: one row per dataset × budget × group, EM [95% interval] per policy, the difference, calls."""
    first, second = grid["difference"]
    policies = grid["policies"]
    header = (["dataset", "budget", "group", "n"] + [f"{policy} EM [95% CI]" for policy in policies]
              + [f"{first} − {second} EM [95% CI]", "intervals overlap"]
              + [f"{policy} calls" for policy in policies])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for dataset, by_budget in grid["cells"].items():
        for budget, by_group in by_budget.items():
            for group, cell in by_group.items():
                found = cell["policies"]
                contrast = cell["difference"]
                overlap = "—" if contrast is None or contrast["intervals_overlap"] is None else \
                    ("yes" if contrast["intervals_overlap"] else "**no**")
                row = ([dataset, budget, group, str(cell["n"])] + [_em_text(found.get(policy)) for policy in policies]
                       + [_signed_text(contrast), overlap]
                       + [f"{found[policy]['model_calls']:.2f}" if policy in found else "—" for policy in policies])
                lines.append("| " + " | ".join(row) + " |")
    seeds = ", ".join(str(seed) for seed in grid["seeds"])
    lines.append("")
    lines.append(f"Seeds {seeds}. EM: mean over seeds [95% t interval over the seed means]; {first} − {second}: "
                 "mean of the per-seed differences [paired 95% t interval]; seeds that all score the same give a "
                 "zero-width interval (grid.json has em_pooled_ci95, the Wilson interval over all episodes). "
                 "Calls: model calls per question, "
                 "mean over seeds. Budget: search rounds (rollout.max_turns), then one forced-answer round.")
    return "\n".join(lines)


def write_grid(grid: dict, prefix: str | Path) -> tuple[Path, Path]:
    """PREFIX.json and PREFIX.md."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = prefix.with_name(prefix.name + ".json"), prefix.with_name(prefix.name + ".md")
    json_path.write_text(json.dumps(grid, indent=2) + "\n")
    markdown_path.write_text(format_grid(grid) + "\n")
    return json_path, markdown_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rl.app.grid", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("eval_dir", help="folder with <policy>/seed<S>/budget<B>.json eval results")
    parser.add_argument("--out", help="output prefix: writes PREFIX.json and PREFIX.md (default EVAL_DIR/../grid)")
    parser.add_argument("--difference", nargs=2, default=list(DEFAULT_DIFFERENCE), metavar=("A", "B"),
                        help="report A − B per cell (default: fanout sequential)")
    args = parser.parse_args(argv)
    try:
        grid = aggregate_grid(read_eval_tree(args.eval_dir), tuple(args.difference))
    except ConfigError as error:
        print(f"grid: error: {error}", file=sys.stderr)
        return 2
    json_path, markdown_path = write_grid(grid, args.out or Path(args.eval_dir).resolve().parent / "grid")
    print(format_grid(grid))
    print(f"wrote {json_path} and {markdown_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
