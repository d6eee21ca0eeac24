"""Benchmark suites: their pure parts on hand-computed numbers, and each suite's --quick run (slow).

The default tests check the projection formula, the steady-state metrics reader, the step-time medians,
the scripted fan-out measurement through the real agent loop, and the RSS sampler. The `slow` tests run
every suite with --quick (Ray actors, DeepSpeed, TRL in a spawned process: minutes on 2 shared cores)
and check that the last printed line is the JSON object of the contract, with positive figures. No
timing is asserted anywhere: the figures themselves belong to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rl.bench import SUITES, run_suite
from rl.bench.async_bench import blocks, ray_worker_niceness, steady_figures
from rl.bench.common import CACHE_ENV, bench_config, cache_dir, prepare_assets
from rl.bench.learn import learn_figures, read_curve, reward_window, time_to_reward, trailing_means
from rl.bench.memory import sample_tree
from rl.bench.rollouts import play_behaviour
from rl.bench.scaling import project
from rl.bench.trainer import StepTimes

MY_SUITES = ("rollouts", "async", "trainer", "sync", "memory", "scaling", "dp", "learn")


@pytest.fixture(scope="module")
def bench_cache(tmp_path_factory):
    """Every suite writes its world, models and runs under one temporary cache for the module."""
    folder = tmp_path_factory.mktemp("bench_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(folder))
        patch.setenv("WANDB_MODE", "disabled")
        yield folder


@pytest.fixture(scope="module")
def quick_assets(bench_cache):
    import torch

    torch.set_num_threads(1)
    return prepare_assets(quick=True)


def test_every_suite_is_registered_with_a_run_function():
    import importlib

    for name in MY_SUITES:
        assert name in SUITES
        assert callable(importlib.import_module(SUITES[name]).run)


def test_bench_config_writes_under_the_cache_folder(bench_cache):
    config = bench_config(quick=True, overrides=["rollout.group_size=3"])
    assert cache_dir() == bench_cache
    assert str(config.run_dir).startswith(str(bench_cache / "quick" / "runs"))
    assert config.data.world_dir == str(bench_cache / "quick" / "world")
    assert config.rollout.group_size == 3  # the suite's override wins over the setting's
    assert config.logging.wandb_mode == "disabled" and not config.eval.at_end


def test_projection_follows_the_amdahl_formulas():
    # generation 8 s with one actor, serial part (train + sync) 2 s, perfect efficiency
    projection = project(generate_s=8.0, serial_s=2.0, efficiency=1.0)
    assert projection["serial_fraction"] == 0.2 and projection["ceiling"] == 5.0
    assert projection["sync"]["1"] == 1.0
    assert projection["sync"]["2"] == round(10 / (4 + 2), 2)  # 1.67
    assert projection["sync"]["8"] == round(10 / (1 + 2), 2)  # 3.33
    assert projection["async"]["1"] == round(10 / 8, 2)  # overlap alone: max(8, 2)
    assert projection["async"]["4"] == 5.0  # generation 2 s = serial 2 s: the ceiling
    assert projection["async"]["64"] == 5.0
    # half-efficient actors: N=2 generates as fast as one perfect actor
    assert project(8.0, 2.0, efficiency=0.5)["sync"]["2"] == 1.0


def test_steady_figures_skip_the_first_step_and_weight_by_time(tmp_path):
    rows = [
        {
            "step": 1,
            "perf/step_s": 10.0,
            "perf/samples_per_s": 1.6,
            "async/trainer_wait_s": 9.0,
            "async/worker_idle_s": 0.0,
            "async/staleness_mean": 0.0,
            "async/dropped_groups": 0.0,
        },
        {
            "step": 2,
            "perf/step_s": 2.0,
            "perf/samples_per_s": 8.0,
            "async/trainer_wait_s": 1.0,
            "async/worker_idle_s": 0.5,
            "async/staleness_mean": 1.0,
            "perf/train_step_s": 1.0,
        },
        {
            "step": 3,
            "perf/step_s": 4.0,
            "perf/samples_per_s": 4.0,
            "async/trainer_wait_s": 2.0,
            "async/worker_idle_s": 1.0,
            "async/staleness_mean": 0.5,
            "perf/train_step_s": 1.5,
            "async/dropped_groups": 2.0,
        },
        {"step": 3, "eval/world/all/em": 0.5},  # rows without perf/ figures are ignored
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    figures = steady_figures(path)
    assert figures["steps"] == 2
    assert figures["samples_per_s"] == pytest.approx((16 + 16) / 6)
    assert figures["trainer_wait_fraction"] == pytest.approx(3 / 6)
    assert figures["worker_idle_fraction"] == pytest.approx(1.5 / 6)
    assert figures["staleness_mean"] == pytest.approx(0.75)
    assert figures["train_step_s"] == pytest.approx(1.25)
    assert figures["dropped_groups"] == 2.0


def write_metrics(path, step_seconds, rewards):
    rows = [{"step": 0, "sft/step": 10, "sft/loss": 1.5}]  # the warm-start's curve: no reward, ignored
    rows += [{"step": step, "perf/step_s": seconds, "reward/total": reward}
             for step, (seconds, reward) in enumerate(zip(step_seconds, rewards), start=1)]
    rows.append({"step": len(rewards), "eval/world/all/em": 0.5})  # the final eval's row, ignored
    rows.reverse()  # the order of the file does not matter, the step does
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_time_to_the_synchronous_final_reward_by_hand(tmp_path):
    # synchronous: wall times 5, 6, 7, 8 s; trailing 2-step means -, 0.3, 0.5, 0.7 -> target 0.7 at 8 s
    sync = read_curve(write_metrics(tmp_path / "sync.jsonl", [5, 1, 1, 1], [0.2, 0.4, 0.6, 0.8]))
    assert sync == [(5, 0.2), (6, 0.4), (7, 0.6), (8, 0.8)]
    # staleness 2: wall times 4, 4.5, 5, 5.5, 6 s; means -, 0.4, 0.7, 0.8, 0.45 -> reaches 0.7 at 5 s
    stale = read_curve(write_metrics(tmp_path / "async.jsonl", [4, 0.5, 0.5, 0.5, 0.5], [0.3, 0.5, 0.9, 0.7, 0.2]))
    figures = learn_figures({0: sync, 2: stale}, window=2)
    assert figures["target_reward"] == pytest.approx(0.7)
    assert figures["time_to_sync_reward_s"] == {"0": 8, "2": 5}
    assert figures["time_to_sync_reward_ratio"] == pytest.approx(5 / 8)
    assert figures["total_s"] == {"0": 8, "2": 6}
    assert figures["reward_first_window"] == pytest.approx({"0": 0.3, "2": 0.4})
    assert figures["reward_last_window"] == pytest.approx({"0": 0.7, "2": 0.45})
    assert figures["reward_at_sync_wall"] == pytest.approx({"0": 0.7, "2": 0.45})  # staleness 2 ended first
    # a longer asynchronous run (--async-steps): its reward at the synchronous run's 8 s, and after it
    longer = learn_figures({0: sync, 2: [(4, 0.3), (6, 0.5), (8, 0.8), (10, 0.9), (12, 0.1)]}, window=2)
    assert longer["reward_at_sync_wall"] == pytest.approx({"0": 0.7, "2": 0.65})
    assert longer["time_to_sync_reward_s"]["2"] == 10
    assert longer["reward_last_window"]["2"] == pytest.approx(0.5)
    # a single lucky step does not count: the window has to average up to the target
    assert time_to_reward([(1, 0.0), (2, 0.9), (3, 0.0), (4, 0.0)], target=0.7, window=2) is None
    never = learn_figures({0: sync, 2: [(1, 0.1), (2, 0.1), (3, 0.2)]}, window=2)
    assert never["time_to_sync_reward_s"]["2"] is None and never["time_to_sync_reward_ratio"] is None


def test_the_curves_figure_is_written(tmp_path):
    from rl.bench.learn import plot_learn_curves

    sync = [(5, 0.2), (6, 0.4), (7, 0.6), (8, 0.8)]
    stale = [(4, 0.3), (4.5, 0.5), (5, 0.9)]
    path = plot_learn_curves({0: sync, 2: stale}, 2, tmp_path / "figs" / "learn.png")
    assert path == tmp_path / "figs" / "learn.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    with pytest.raises(ValueError, match="no full window"):  # a run too short for its window draws nothing
        plot_learn_curves({0: sync[:1], 2: sync}, 2, tmp_path / "short.png")
    assert not (tmp_path / "short.png").exists()


def test_trailing_means_and_the_window():
    assert trailing_means([1, 2, 3, 4], 3) == [None, None, 2, 3]
    assert trailing_means([1, 2], 1) == [1, 2]
    with pytest.raises(ValueError, match="at least 1"):
        trailing_means([1], 0)
    assert (reward_window(60), reward_window(2), reward_window(9)) == (10, 1, 2)
    with pytest.raises(ValueError, match="no full window"):
        learn_figures({0: [(1.0, 0.5)], 2: [(1.0, 0.5)]}, window=2)


def test_only_the_learn_suite_takes_overrides():
    from rl.config import ConfigError

    with pytest.raises(ConfigError, match="'tools' takes no key=value overrides"):
        run_suite("tools", quick=True, overrides=["grpo.total_steps=3"])
    with pytest.raises(ConfigError, match="sets async.max_staleness itself"):
        run_suite("learn", quick=True, overrides=["async.max_staleness=1"])


def test_only_the_learn_suite_starts_from_a_run(tmp_path):
    from rl.config import ConfigError

    with pytest.raises(ConfigError, match="'tools' does not start from a run"):
        run_suite("tools", quick=True, from_run=str(tmp_path))
    with pytest.raises(ConfigError, match="'tools' has no asynchronous run to lengthen"):
        run_suite("tools", quick=True, async_steps=5)
    with pytest.raises(ConfigError, match="--async-steps must be at least 1, got 0"):
        run_suite("learn", quick=True, async_steps=0)
    with pytest.raises(ConfigError, match="no config.yaml there"):
        run_suite("learn", from_run=str(tmp_path))


def test_from_run_keeps_the_run_setting_and_starts_from_its_warm_start(tmp_path, bench_cache):
    from rl.app.registries import load_experiment
    from rl.bench.learn import from_run_config
    from rl.config import ConfigError, save_config

    run_dir = tmp_path / "reader"
    run_dir.mkdir()
    trained = load_experiment(Path("configs/reader.yaml"), ["rollout.group_size=6", f"experiment.output_dir={tmp_path}"])
    save_config(trained, run_dir / "config.yaml")
    with pytest.raises(ConfigError, match="no SFT warm-start"):
        from_run_config(run_dir, 2, [])
    (run_dir / "sft").mkdir()
    (run_dir / "sft" / "config.json").write_text("{}")
    config = from_run_config(run_dir, 2, ["grpo.total_steps=7"])
    assert config.model.path == str(run_dir / "sft") and not config.sft.enabled
    assert config.data.world_dir == str(run_dir / "world") and config.data.world.train_worlds == 40
    assert config.rollout.group_size == 6 and config.grpo.total_steps == 7 and config.async_.max_staleness == 2
    assert config.eval.at_end and config.eval.num_questions == 0
    assert Path(config.experiment.output_dir).is_relative_to(bench_cache)


def test_step_times_report_medians_of_per_step_rates():
    times = StepTimes(seconds=[1.0, 2.0, 4.0], tokens=[100, 100, 100], completions_per_step=8)
    assert times.completions_per_s() == 4.0  # rates 8, 4, 2
    assert times.tokens_per_s() == 50.0  # rates 100, 50, 25
    assert times.mean_completion_length() == pytest.approx(300 / 24)


def test_fan_out_answers_parallel_questions_in_one_search_round(quick_assets):
    config = bench_config(
        quick=True,
        overrides=[
            "rollout.max_turns=4",
            "rollout.max_new_tokens_per_turn=96",
            "rollout.max_context_tokens=2048",
            "tools.latency_s=0.0",
        ],
    )
    questions = [q for q in quick_assets.train_questions if q.structure == "parallel"][:2]
    sub_questions = sum(len(question.sub_questions) for question in questions) / len(questions)
    fan_out = play_behaviour(questions, "parallel", config, quick_assets)
    one_per_turn = play_behaviour(questions, "sequential", config, quick_assets)
    assert fan_out.model_calls == 2 and fan_out.search_rounds == 1
    assert one_per_turn.model_calls == sub_questions + 1 and one_per_turn.search_rounds == sub_questions
    assert fan_out.tool_calls == one_per_turn.tool_calls == sub_questions
    assert fan_out.answered == one_per_turn.answered == 1.0  # the expert answers with the gold answer


def test_rss_sample_covers_the_process_and_its_children():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        sample = sample_tree(os.getpid())
    finally:
        child.kill()
        child.wait()
    assert sample.processes >= 2
    assert sample.by_role["driver"] > 0 and sample.by_role["other"] > 0  # the child is not an actor
    assert sample.total == sum(sample.by_role.values())


CONTRACT_KEYS = {
    "rollouts": ("actors_ratio", "tokens_per_s"),
    "async": ("ratio",),
    "trainer": ("ratio_vs_trl",),
    "sync": ("sync_fraction_of_step",),
    "memory": ("peak_rss_gib",),
    "scaling": ("actors_ratio", "projection"),
    "dp": ("step_s", "sync_s_zero3"),
    "learn": ("time_to_sync_reward_ratio", "em"),
}


@pytest.mark.slow
@pytest.mark.parametrize("suite", MY_SUITES)
def test_quick_run_ends_with_the_contract_json_line(suite, bench_cache, capsys):
    run_suite(suite, quick=True, **({"async_steps": 3} if suite == "learn" else {}))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    figures = json.loads(lines[-1])
    assert figures["suite"] == suite
    for key in CONTRACT_KEYS[suite]:
        assert key in figures, key
    if suite == "async":
        assert set(figures["ratio"]) == {"1", "2", "4"} and all(
            value > 0 for value in figures["ratio"].values()
        )
        assert figures["by_actors"]["1"]["ratio"] == figures["ratio"]  # quick: the 1-actor block only
    elif suite == "scaling":
        assert figures["actors_ratio"] > 0 and figures["projection"]["sync"]["1"] == 1.0
    elif suite == "learn":  # 2 steps, window 1: the synchronous run reaches its own last reward
        assert set(figures["em"]) == {"0", "2"} and all(0 <= value <= 1 for value in figures["em"].values())
        assert figures["steps"] == 2 and figures["window"] == 1 and figures["time_to_sync_reward_s"]["0"] > 0
        assert figures["steps_async"] == 3  # --async-steps 3
        assert figures["time_to_sync_reward_ratio"] is None or figures["time_to_sync_reward_ratio"] > 0
        assert Path(figures["plot"]).is_file() and Path(figures["plot"]).name == "bench-learn.png"
    elif suite == "dp":  # step time on 1 and 2 ranks; ZeRO-3 halves the parameters each rank holds
        assert set(figures["step_s"]) == {"1", "2"} and all(value > 0 for value in figures["step_s"].values())
        assert figures["sync_s_zero3"] > 0
        held = figures["held_mib_per_rank"]["zero3"]
        assert held["2"]["parameter"] == pytest.approx(held["1"]["parameter"] / 2, rel=0.05)
    else:
        assert all(figures[key] > 0 for key in CONTRACT_KEYS[suite])
    assert any(line.startswith("|") for line in lines[:-1])  # a table came before the JSON line


def test_weight_group_suite_moves_every_byte_to_one_and_two_receivers(capsys):
    """Quick (16 MB, about 10 s): the receivers assert they got every tensor; the figures are well formed."""
    run_suite("weight_group", quick=True)
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["suite"] == "weight_group" and figures["num_bytes"] == 16 * 2**20
    assert set(figures["gb_per_s"]) == {"1", "2"} and all(value > 0 for value in figures["gb_per_s"].values())
    assert figures["speedup_vs_torch_save"] > 0


def test_async_ray_default_priority_block_runs_in_a_ray_of_its_own_at_niceness_15(monkeypatch):
    """The side-by-side block at Ray's default worker priority: its own Ray session, started with
    RAY_worker_niceness=15, and the framework's setting restored (and that Ray stopped) after it."""
    import ray

    from rollouts.manager import RAY_WORKER_NICENESS

    shutdowns = []
    monkeypatch.setattr(ray, "shutdown", lambda: shutdowns.append(os.environ.get(RAY_WORKER_NICENESS)))
    monkeypatch.setenv(RAY_WORKER_NICENESS, "0")
    assert "ray_default_priority" in blocks(quick=False) and "ray_default_priority" not in blocks(quick=True)
    assert [niceness for _, _, niceness in blocks(quick=False).values()] == [None, None, None, "15"]

    with ray_worker_niceness("15"):
        assert os.environ[RAY_WORKER_NICENESS] == "15"
    assert shutdowns == ["0", "15"] and os.environ[RAY_WORKER_NICENESS] == "0"
    with ray_worker_niceness(None):  # the other blocks share the process's Ray session
        pass
    assert shutdowns == ["0", "15"]


def test_async_blocks_write_their_runs_to_folders_of_their_own(monkeypatch, tmp_path):
    """The priority block's runs do not overwrite the first block's (same actors and staleness)."""
    import rl.app.train
    from rl.bench import async_bench

    names = []
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"perf/step_s": 1.0, "perf/samples_per_s": 2.0, "async/trainer_wait_s": 0.5}) + "\n")

    def fake_train(config):
        names.append(config.experiment.name)
        return tmp_path

    monkeypatch.setattr(rl.app.train, "train", fake_train)
    async_bench.run_setting(True, 2, 1, True, [])
    async_bench.run_setting(True, 2, 1, False, [])
    async_bench.run_setting(True, 2, 1, True, [], worker_niceness="15")
    assert names == ["bench-async-a1-s2", "bench-async-a1-serial-s2", "bench-async-a1-nice15-s2"]
