"""Metrics sink and plots: exact JSONL rows, resume truncation, secret hygiene, wandb offline, PNG files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from rl.config import LoggingConfig
from rl.app.metrics import MetricsLogger, read_metrics, redact_secrets, to_json_value
from rl.app.plots import (
    curve_summary,
    main as plots_main,
    moving_average,
    plot_metrics,
    plot_runs,
    select_keys,
    summary_table,
)

DISABLED = LoggingConfig(wandb_mode="disabled")


@pytest.fixture(autouse=True)
def config_decides_the_wandb_mode(monkeypatch):
    """WANDB_MODE from the environment wins over logging.wandb_mode, and CI exports WANDB_MODE=offline: each
    test here starts without it, so the config it passes decides (a test that checks the variable sets it)."""
    monkeypatch.delenv("WANDB_MODE", raising=False)


def test_jsonl_rows_are_exact(tmp_path):
    with MetricsLogger(tmp_path, DISABLED) as logger:
        logger.log(
            0,
            {"reward/total": 0.5, "rollout/model_calls": np.float32(2.0), "loss/policy": torch.tensor(-1.25)},
        )
        logger.log(1, {"reward/total": 0.75, "async/staleness_mean": 1, "perf/samples_per_s": float("nan")})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 0, "reward/total": 0.5, "rollout/model_calls": 2.0, "loss/policy": -1.25},
        {"step": 1, "reward/total": 0.75, "async/staleness_mean": 1, "perf/samples_per_s": None},
    ]
    assert not (tmp_path / "wandb").exists()


def test_rows_are_flushed_before_close(tmp_path):
    logger = MetricsLogger(tmp_path, DISABLED)
    logger.log(3, {"reward/total": 1.0})
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 3, "reward/total": 1.0}]
    logger.close()


def test_resume_drops_rows_after_the_checkpoint_step(tmp_path):
    with MetricsLogger(tmp_path, DISABLED) as logger:
        for step in range(5):
            logger.log(step, {"reward/total": float(step)})
    with MetricsLogger(tmp_path, DISABLED, resume_step=2) as logger:
        logger.log(3, {"reward/total": 30.0})
    assert [(row["step"], row["reward/total"]) for row in read_metrics(tmp_path / "metrics.jsonl")] == [
        (0, 0.0),
        (1, 1.0),
        (2, 2.0),
        (3, 30.0),
    ]


def test_to_json_value_rejects_non_scalars():
    assert to_json_value(np.int64(7)) == 7 and isinstance(to_json_value(np.int64(7)), int)
    assert to_json_value(float("inf")) is None
    assert to_json_value("text") == "text"
    with pytest.raises(TypeError, match="list"):
        to_json_value([1, 2])


def test_redact_secrets_replaces_secret_looking_keys_only():
    config = {
        "logging": {"wandb_project": "p", "wandb_api_key": "abc"},
        "auth": [{"token": "t", "n": 1, "Password": "x"}],
        "rollout": {"max_new_tokens_per_turn": 48, "max_context_tokens": 1024},
    }
    assert redact_secrets(config) == {
        "logging": {"wandb_project": "p", "wandb_api_key": "<redacted>"},
        "auth": [{"token": "<redacted>", "n": 1, "Password": "<redacted>"}],
        "rollout": {"max_new_tokens_per_turn": 48, "max_context_tokens": 1024},
    }


def test_wandb_offline_writes_under_run_dir_and_never_the_api_key(tmp_path, monkeypatch):
    secret = "fanoutsecret0123456789abcdef0123456789abcd"
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the config decides (tests/conftest.py disables wandb)
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "data"))
    logger = MetricsLogger(
        tmp_path,
        LoggingConfig(wandb_mode="offline", wandb_project="fanout-test"),
        {"grpo": {"learning_rate": 1e-5}, "logging": {"wandb_mode": "offline"}},
    )
    assert logger.wandb_enabled
    logger.log(0, {"reward/total": 0.25})
    logger.close()
    offline_runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    assert list(offline_runs[0].glob("*.wandb"))
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"API key leaked into {path}"


@pytest.mark.parametrize(
    ("configured", "environment", "expected"),
    [
        ("offline", {}, "offline"),
        ("offline", {"WANDB_MODE": "disabled"}, "disabled"),
        ("disabled", {"WANDB_MODE": "offline"}, "offline"),
        ("offline", {"WANDB_MODE": "Online"}, "online"),
        ("online", {"WANDB_MODE": "dryrun"}, "offline"),  # wandb's own alias
        ("offline", {"WANDB_MODE": "loud"}, "offline"),  # not a mode: the config stands (with a warning)
        ("offline", {"WANDB_MODE": ""}, "offline"),
    ],
)
def test_wandb_mode_from_the_environment_wins(configured, environment, expected):
    from rl.app.metrics import resolve_wandb_mode

    assert resolve_wandb_mode(configured, environment) == expected


def test_wandb_mode_disabled_in_the_environment_starts_no_wandb_run(tmp_path, monkeypatch):
    import rl.app.metrics

    started = []
    monkeypatch.setattr(rl.app.metrics, "_init_wandb", lambda *args: started.append(args))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    with MetricsLogger(tmp_path, LoggingConfig(wandb_mode="offline")) as logger:
        logger.log(1, {"reward/total": 1.0})
        assert not logger.wandb_enabled and logger.wandb_mode == "disabled"
    monkeypatch.setenv("WANDB_MODE", "offline")
    MetricsLogger(tmp_path / "other", LoggingConfig(wandb_mode="disabled")).close()
    assert [args[2] for args in started] == ["offline"]  # the mode wandb.init is given


class RecordingWandbRun:
    def __init__(self):
        self.axes, self.logged = {}, []

    def define_metric(self, name, step_metric=None):
        self.axes[name] = step_metric

    def log(self, values, step=None):
        assert step is None  # every family has its own axis; wandb's implicit step is never set
        self.logged.append(values)

    def finish(self):
        pass


def test_the_sft_curve_and_grpo_steps_share_the_file_and_keep_their_own_wandb_axes(tmp_path, monkeypatch):
    import rl.app.metrics
    from rl.app.sft import SFT_LOG_FILE_NAME, log_sft_curve

    run = RecordingWandbRun()
    monkeypatch.setattr(rl.app.metrics, "_init_wandb", lambda *args: run)
    monkeypatch.setenv("WANDB_MODE", "offline")
    sft_dir = tmp_path / "sft"
    sft_dir.mkdir()
    (sft_dir / SFT_LOG_FILE_NAME).write_text(
        '{"step": 50, "sft/loss": 2.5, "sft/learning_rate": 0.003}\n{"step": 100, "sft/loss": 1.25}\n')
    with MetricsLogger(tmp_path, LoggingConfig(wandb_mode="offline")) as logger:
        assert log_sft_curve(logger, sft_dir) == 2 and log_sft_curve(logger, tmp_path / "base") == 0
        assert logger.has_logged("sft/step") and not logger.has_logged("reward/total")
        logger.log(1, {"reward/total": 0.5, "loss/policy": -0.1})
    assert read_metrics(tmp_path / "metrics.jsonl") == [
        {"step": 0, "sft/step": 50, "sft/loss": 2.5, "sft/learning_rate": 0.003},
        {"step": 0, "sft/step": 100, "sft/loss": 1.25},
        {"step": 1, "reward/total": 0.5, "loss/policy": -0.1},
    ]
    assert run.logged == [{"sft/step": 50, "sft/loss": 2.5, "sft/learning_rate": 0.003},
                          {"sft/step": 100, "sft/loss": 1.25},
                          {"reward/total": 0.5, "loss/policy": -0.1, "train/step": 1}]
    assert run.axes == {"sft/step": None, "sft/*": "sft/step", "train/step": None, "train/*": "train/step",
                        "reward/*": "train/step", "loss/*": "train/step"}


def test_moving_average_hand_computed():
    assert moving_average([1.0, 3.0, 5.0, 7.0], window=2) == [1.0, 2.0, 4.0, 6.0]


def test_select_keys_glob_and_order():
    rows = [{"step": 0, "reward/total": 1, "loss/policy": 2, "other": 3}, {"step": 1, "reward/format": 1}]
    assert select_keys(rows, ["reward/*"]) == ["reward/total", "reward/format"]


def test_plot_metrics_writes_non_empty_pngs(tmp_path):
    with MetricsLogger(tmp_path, DISABLED) as logger:
        for step in range(12):
            logger.log(
                step,
                {
                    "reward/total": step / 12,
                    "reward/format": 0.1,
                    "rollout/model_calls": 3 - step / 6,
                    "rollout/model_calls/parallel": 3 - step / 4,
                    "unplotted/key": 1.0,
                    "perf/samples_per_s": math.nan,
                },
            )
    paths = plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "plots")
    assert sorted(path.name for path in paths) == [
        "overview.png",
        "reward__format.png",
        "reward__total.png",
        "rollout__model_calls.png",
        "rollout__model_calls__parallel.png",
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    only = plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "only", keys=["rollout/model_calls"])
    assert [path.name for path in only] == ["rollout__model_calls.png"]


def test_plot_runs_draws_one_panel_per_logged_key_and_one_curve_per_run(tmp_path):
    for name, calls in (("fanout", 2.0), ("sequential", 3.0)):
        with MetricsLogger(tmp_path / name, DISABLED) as logger:
            for step in range(4):
                logger.log(step, {"rollout/model_calls/parallel": calls, "reward/exact_match/parallel": 0.5})
    runs = {name: tmp_path / name / "metrics.jsonl" for name in ("fanout", "sequential")}
    written = plot_runs(runs, tmp_path / "compare.png")
    assert written == tmp_path / "compare.png" and written.stat().st_size > 1000
    assert plot_runs(runs, tmp_path / "none.png", keys=["not/logged"]) is None
    assert not (tmp_path / "none.png").exists()
    assert plots_main(["--compare", str(tmp_path / "cli.png"), *(f"{k}={v}" for k, v in runs.items())]) == 0
    assert (tmp_path / "cli.png").is_file()
    assert plots_main(["--compare", str(tmp_path / "bad.png"), "no-label-here"]) == 2


def test_curve_summary_means_the_first_and_last_logged_steps(tmp_path):
    rows = [{"step": step, "reward/total": float(step)} for step in range(1, 7)]
    rows.insert(3, {"step": 99, "reward/total": None, "perf/step_s": 2.0})  # a gap is skipped, not a zero
    assert curve_summary(rows, window=2) == {"reward/total": (1.5, 5.5), "perf/step_s": (2.0, 2.0)}
    assert curve_summary(rows, window=10)["reward/total"] == (3.5, 3.5)
    with pytest.raises(ValueError, match="at least 1"):
        curve_summary(rows, window=0)


def test_summary_table_puts_runs_side_by_side(tmp_path, capsys):
    for name, calls in (("fanout", [3.0, 2.0, 2.0]), ("sequential", [3.0, 3.0, 4.0])):
        with MetricsLogger(tmp_path / name, DISABLED) as logger:
            for step, value in enumerate(calls):
                logger.log(step, {"rollout/model_calls/parallel": value})
    runs = {name: tmp_path / name / "metrics.jsonl" for name in ("fanout", "sequential")}
    lines = summary_table(runs, window=1).splitlines()
    assert lines[0] == "| figure | fanout first 1 | fanout last 1 | sequential first 1 | sequential last 1 |"
    assert lines[2:] == ["| `rollout/model_calls/parallel` | 3.000 | 2.000 | 3.000 | 4.000 |"]
    assert plots_main(["--summary", "1", *(f"{k}={v}" for k, v in runs.items())]) == 0
    assert capsys.readouterr().out.splitlines()[2] == lines[2]
    assert plots_main(["--summary", "0", f"fanout={runs['fanout']}"]) == 2
    assert plots_main(["--summary", "2", "no-label-here"]) == 2
