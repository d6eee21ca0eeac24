"""The `fanout` command line itself: version, the bench suites in --help, log lines on stderr."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from rl.bench import SUITES
from rl.cli import main

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


def test_version_prints_the_installed_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"fanout {version('fanout-rl')}"


def test_bench_help_lists_every_registered_suite(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    help_text = capsys.readouterr().out
    assert len(SUITES) >= 8
    for suite in SUITES:
        assert suite in help_text, suite


def test_an_unknown_bench_suite_is_refused_with_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "nope"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_info_log_lines_reach_stderr_and_log_level_hides_them(tmp_path):
    plugin = tmp_path / "quiet_plugin.py"
    plugin.write_text("import logging\nlogging.getLogger('rl.app.test_plugin').info('hello from the plugin')\n")

    def run(*options: str) -> str:
        command = [sys.executable, "-m", "rl", *options, "config", "show", QUICKSTART, f"plugins=[{plugin}]"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        return result.stderr

    stderr = run()
    assert "INFO rl.app.test_plugin: hello from the plugin" in stderr
    assert f"INFO data.plugins: plugin {plugin} imported" in stderr
    assert "hello from the plugin" not in run("--log-level", "WARNING")


def test_data_build_apps_writes_a_world_that_loads_and_the_server_can_serve(tmp_path, capsys):
    from data.apps.server import parse_arguments, states_from_arguments
    from data.apps.world import load_apps_world

    assert main(["data", "build-apps", "--out", str(tmp_path), "--seed", "4", "--num-train", "20",
                 "--train-worlds", "2"]) == 0
    assert f"--world-dir {tmp_path}" in capsys.readouterr().out
    world = load_apps_world(tmp_path)
    assert [len(world.splits[split]) for split in ("train", "validation", "test")] == [20, 100, 150]
    assert sorted(world.world_states) == ["w1", "w2"]
    assert states_from_arguments(parse_arguments(["--world-dir", str(tmp_path)])) == (world.base_state,
                                                                                      world.world_states)
    assert main(["data", "build-apps", "--out", str(tmp_path / "notes"), "--num-train", "20",
                 "--train-worlds", "1", "--world-tasks", "6", "--world-families", "cancel_from_note",
                 "--world-redraw", "notes"]) == 0
    notes = load_apps_world(tmp_path / "notes")
    train = notes.splits["train"]
    assert len(train) == 26 and {task.family for task in train if task.world == "w1"} == {"cancel_from_note"}
    assert notes.world_states["w1"]["contacts"] == notes.base_state["contacts"]  # only the notes re-drawn
    assert main(["data", "build-apps", "--out", str(tmp_path / "weighted"), "--num-train", "20",
                 "--train-families", "stock_total=9, send_notice=0"]) == 0
    train = load_apps_world(tmp_path / "weighted").splits["train"]
    assert sum(task.family == "stock_total" for task in train) == 11  # 20 x 9 / 17 = 10.6, rounded up
    assert not any(task.family == "send_notice" for task in train)


@pytest.mark.parametrize("text", ["stock_total", "stock_total=lots", "=2"])
def test_build_apps_refuses_a_family_weight_it_cannot_read(text, capsys):
    with pytest.raises(SystemExit):
        main(["data", "build-apps", "--out", "unused", "--train-families", text])
    assert f"{text!r} is not family=weight" in capsys.readouterr().err


def test_overrides_after_options_join_the_command_overrides():
    from rl.cli import build_parser, parse_arguments

    parser = build_parser()
    args = parse_arguments(parser, ["eval", QUICKSTART, "eval.num_questions=4", "--checkpoint", "ckpt",
                                    "eval.split=train", "--fresh-world", "7", "rollout.max_turns=3"])
    assert args.checkpoint == "ckpt" and args.fresh_world == 7
    assert args.overrides == ["eval.num_questions=4", "eval.split=train", "rollout.max_turns=3"]


def test_unrecognised_options_are_still_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", QUICKSTART, "--checkpoint", "ckpt", "--no-such-option"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


@pytest.mark.parametrize("out", [None, "chosen.json"])
def test_eval_fresh_world_evaluates_the_redrawn_world_whether_or_not_out_is_given(tmp_path, monkeypatch, out):
    """--out once short-circuited the redraw: the run's own world was evaluated and written as the fresh one."""
    import rl.app.evaluate as evaluate_module

    seen = {}

    def capture(config, checkpoint=None, out=None, compare=None, group_by="structure", episodes=None):
        seen.update(world_seed=config.data.world.seed, world_dir=config.data.world_dir, out=out)
        return 0

    monkeypatch.setattr(evaluate_module, "evaluate_command", capture)
    arguments = ["eval", QUICKSTART, f"experiment.output_dir={tmp_path}", "--checkpoint", "ckpt", "--fresh-world", "7"]
    assert main(arguments + (["--out", str(tmp_path / out)] if out else [])) == 0
    run_dir = tmp_path / "quickstart"
    assert seen["world_seed"] == 7 and seen["world_dir"] == str(run_dir / "world-seed7")
    expected_out = tmp_path / out if out else run_dir / "world-seed7.eval.json"
    assert seen["out"] == str(expected_out)
