"""The fanout-vs-sequential grid aggregation, on hand-written eval JSONs with hand-computed figures."""

from __future__ import annotations

import json
import math

import pytest

from rl.app.grid import aggregate_grid, format_grid, main, mean_t_interval, read_eval_tree
from rl.config import ConfigError

T_2 = 4.302652730  # Student t 97.5% quantile, 2 degrees of freedom
T_1 = 12.706204736  # 1 degree of freedom


def figures(n: int, em: float, model_calls: float, subqueries_per_round: float = 1.0) -> dict:
    return {"n": n, "em": em, "f1": em, "model_calls": model_calls, "tool_calls": 3.0,
            "subqueries_per_round": subqueries_per_round, "latency_s": 1.0, "format_valid": 1.0,
            "em_ci95": [0.0, 1.0]}


def write_eval(eval_dir, policy: str, seed: int, budget: int, groups: dict) -> None:
    path = eval_dir / policy / f"seed{seed}" / f"budget{budget}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"world": groups}))


@pytest.fixture
def eval_dir(tmp_path):
    root = tmp_path / "eval"
    fanout_em, sequential_em = (0.60, 0.70, 0.80), (0.40, 0.45, 0.50)
    for seed in range(3):
        write_eval(root, "fanout", seed, 3, {
            "parallel": figures(20, fanout_em[seed], 2.0, 3.0),
            "parallel/3": figures(20, fanout_em[seed], (2.0, 2.0, 2.3)[seed], 3.0),
            "all": figures(20, fanout_em[seed], 2.0)})
        write_eval(root, "sequential", seed, 3, {
            "parallel": figures(20, sequential_em[seed], 4.0),
            "parallel/3": figures(20, sequential_em[seed], (4.0, 4.0, 4.3)[seed]),
            "all": figures(20, sequential_em[seed], 4.0)})
        write_eval(root, "fanout", seed, 6, {"parallel/3": figures(20, 0.5, 2.0), "all": figures(20, 0.5, 2.0)})
        if seed < 2:  # the sequential policy's seed 2 has no budget-6 evaluation
            write_eval(root, "sequential", seed, 6, {"parallel/3": figures(20, (0.4, 0.6)[seed], 4.0),
                                                     "all": figures(20, 0.5, 4.0)})
    (root / "fanout" / "seed0" / "notes.txt").write_text("ignored")
    return root


def test_mean_t_interval_by_hand():
    mean, interval = mean_t_interval([0.6, 0.7, 0.8])  # sd 0.1
    assert mean == pytest.approx(0.7)
    assert interval == pytest.approx([0.7 - T_2 * 0.1 / math.sqrt(3), 0.7 + T_2 * 0.1 / math.sqrt(3)])
    assert mean_t_interval([0.5]) == (0.5, None)  # one seed: no interval


def test_cells_hold_seed_means_t_intervals_and_the_paired_difference(eval_dir):
    grid = aggregate_grid(read_eval_tree(eval_dir))
    assert grid["policies"] == ["fanout", "sequential"] and grid["seeds"] == [0, 1, 2] and grid["budgets"] == [3, 6]
    assert list(grid["cells"]["world"]) == ["3", "6"]
    assert list(grid["cells"]["world"]["3"]) == ["parallel", "parallel/3", "all"]
    cell = grid["cells"]["world"]["3"]["parallel/3"]
    assert cell["n"] == 20
    fanout, sequential = cell["policies"]["fanout"], cell["policies"]["sequential"]
    half_fanout = T_2 * 0.1 / math.sqrt(3)  # 0.2484
    half_sequential = T_2 * 0.05 / math.sqrt(3)  # 0.1242
    assert fanout["em"] == pytest.approx(0.70) and fanout["em_ci95"] == pytest.approx([0.70 - half_fanout, 0.70 + half_fanout])
    assert sequential["em"] == pytest.approx(0.45)
    assert sequential["em_ci95"] == pytest.approx([0.45 - half_sequential, 0.45 + half_sequential])
    assert fanout["model_calls"] == pytest.approx(2.1) and sequential["model_calls"] == pytest.approx(4.1)
    assert fanout["subqueries_per_round"] == 3.0 and fanout["seeds"] == 3
    # pooled: 12 + 14 + 16 = 42 right answers out of 60 episodes, Wilson interval
    assert fanout["em_pooled_ci95"] == pytest.approx([0.5749, 0.8010], abs=1e-4)
    difference = cell["difference"]  # per seed 0.20, 0.25, 0.30: sd 0.05
    assert difference["em"] == pytest.approx(0.25)
    assert difference["em_ci95"] == pytest.approx([0.25 - half_sequential, 0.25 + half_sequential])
    assert difference["em_by_seed"] == pytest.approx({"0": 0.2, "1": 0.25, "2": 0.3})
    assert difference["intervals_overlap"] is True  # 0.4516-0.9484 and 0.3258-0.5742
    assert json.loads(json.dumps(grid)) == grid


def test_missing_seeds_average_what_exists_and_pair_what_both_have(eval_dir):
    cell = aggregate_grid(read_eval_tree(eval_dir))["cells"]["world"]["6"]["parallel/3"]
    sequential = cell["policies"]["sequential"]
    assert sequential["seeds"] == 2 and sequential["em"] == pytest.approx(0.5)
    # 0.4 and 0.6: sd 0.1·√2, so sd/√2 = 0.1; a t interval on 2 seeds is wide and not clipped to [0, 1]
    assert sequential["em_ci95"] == pytest.approx([0.5 - T_1 * 0.1, 0.5 + T_1 * 0.1])
    assert cell["policies"]["fanout"]["em_ci95"] == pytest.approx([0.5, 0.5])  # three equal seeds: zero width
    difference = cell["difference"]  # seeds 0 and 1 only: +0.1 and -0.1
    assert difference["seeds"] == 2 and difference["em"] == pytest.approx(0.0)
    assert difference["em_ci95"] == pytest.approx([-T_1 * 0.1, T_1 * 0.1])


def test_non_overlapping_intervals_are_flagged(tmp_path):
    root = tmp_path / "eval"
    for seed, (fanout_em, sequential_em) in enumerate([(0.80, 0.40), (0.82, 0.41), (0.81, 0.42)]):
        write_eval(root, "fanout", seed, 3, {"parallel/4": figures(30, fanout_em, 2.0)})
        write_eval(root, "sequential", seed, 3, {"parallel/4": figures(30, sequential_em, 4.0)})
    grid = aggregate_grid(read_eval_tree(root))
    assert grid["cells"]["world"]["3"]["parallel/4"]["difference"]["intervals_overlap"] is False
    row = next(line for line in format_grid(grid).splitlines() if "parallel/4" in line)
    assert row.startswith("| world | 3 | parallel/4 | 30 | 0.810 [")
    assert "| +0.400 [" in row and "| **no** | 2.00 | 4.00 |" in row


def test_format_grid_rows(eval_dir):
    table = format_grid(aggregate_grid(read_eval_tree(eval_dir))).splitlines()
    assert table[0] == ("| dataset | budget | group | n | fanout EM [95% CI] | sequential EM [95% CI] | "
                        "fanout − sequential EM [95% CI] | intervals overlap | fanout calls | sequential calls |")
    assert "| world | 3 | parallel/3 | 20 | 0.700 [0.452–0.948] | 0.450 [0.326–0.574] | +0.250 [+0.126 to +0.374] " \
           "| yes | 2.10 | 4.10 |" in table
    assert sum(line.startswith("| world |") for line in table) == 3 + 2


def test_questions_must_match_across_files(eval_dir):
    write_eval(eval_dir, "sequential", 1, 3, {"parallel/3": figures(19, 0.5, 4.0)})
    with pytest.raises(ConfigError, match=r"sequential/seed1/budget3.json: world/parallel/3 has n=19 but .* n=20"):
        aggregate_grid(read_eval_tree(eval_dir))


def test_read_errors_name_the_folder_or_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_eval_tree(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no <policy>/seed<S>/budget<B>.json"):
        read_eval_tree(tmp_path / "empty")
    broken = tmp_path / "broken" / "fanout" / "seed0" / "budget2.json"
    broken.parent.mkdir(parents=True)
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match=r"budget2.json: not valid JSON"):
        read_eval_tree(tmp_path / "broken")


def test_command_writes_json_and_markdown(eval_dir, tmp_path, capsys):
    assert main([str(eval_dir), "--out", str(tmp_path / "out" / "grid")]) == 0
    written = json.loads((tmp_path / "out" / "grid.json").read_text())
    assert written["cells"]["world"]["3"]["parallel/3"]["difference"]["em"] == pytest.approx(0.25)
    markdown = (tmp_path / "out" / "grid.md").read_text()
    assert markdown.startswith("| dataset | budget |") and markdown in capsys.readouterr().out + "\n"
    assert main([str(tmp_path / "nowhere")]) == 2
