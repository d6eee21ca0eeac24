"""Metrics sink: one JSON object per step in <run_dir>/metrics.jsonl, mirrored to wandb (offline by default).

Every metric key is slash-namespaced (`reward/total`, `rollout/model_calls`, `async/staleness_mean`,
`perf/samples_per_s`, `eval/<dataset>/em`, ...). The JSONL file is the source of truth: plots
(rl/app/plots.py), the docs and the checks read it; wandb is a convenience view of the same numbers.

A stage before GRPO (the SFT warm-start) logs its own curve with `log_stage`: JSONL rows at `step` 0
(before GRPO's first step) carrying the stage's own step (`sft/step`), and in wandb an x-axis of their
own (`define_metric`), while GRPO's metrics are plotted against `train/step`.

The wandb mode is `logging.wandb_mode`, unless the environment sets `WANDB_MODE` (online, offline or
disabled; wandb's aliases dryrun and run too), which wins: a CI job or a user who exports
WANDB_MODE=disabled gets no wandb run whatever the YAML says.

Simplifications on purpose: values are converted to plain floats/ints/strings (tensors and numpy
scalars included); non-finite floats are written as `null` so the file stays strict JSON; a wandb
failure (e.g. `online` without credentials) is reported once and the run continues with JSONL only.
Secrets never reach the files: the config given to wandb is scrubbed of secret-looking keys, and
wandb's credentials come from its own environment variables, which are never copied anywhere.

    logger = MetricsLogger(run_dir, config.logging, to_dict(config))
    logger.log_stage("sft", 50, {"sft/loss": 1.9})
    logger.log(step, {"reward/total": 0.41, "rollout/model_calls": 2.3})
    logger.close()
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import re
import sys
from pathlib import Path
from typing import Any, Mapping

from rl.config import LoggingConfig

METRICS_FILE_NAME = "metrics.jsonl"
TRAIN_STEP_KEY = "train/step"  # the x-axis of GRPO's metrics in wandb (the JSONL rows' `step`)
# WANDB_MODE values wandb accepts, and the mode each means
WANDB_MODES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline", "disabled": "disabled"}
logger = logging.getLogger(__name__)
# Keys whose last word names a secret (`wandb_api_key`, `auth_token`), not `max_new_tokens_per_turn`.
_SECRET_KEY_PATTERN = re.compile(r"(^|_)(api_?key|token|secret|password|credentials?)$", re.IGNORECASE)


def to_json_value(value: Any) -> Any:
    """A metric value as a plain JSON value: tensors/numpy scalars -> numbers, NaN/inf -> None."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, (str, type(None))):
        return value
    raise TypeError(f"metric value {value!r} of type {type(value).__name__} is not a number or a string")


def redact_secrets(node: Any) -> Any:
    """A copy of a nested dict with the values of secret-looking keys (api_key, token, ...) replaced."""
    if isinstance(node, dict):
        return {
            key: "<redacted>" if _SECRET_KEY_PATTERN.search(str(key)) else redact_secrets(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [redact_secrets(item) for item in node]
    return node


def resolve_wandb_mode(configured: str, environment: Mapping[str, str] = os.environ) -> str:
    """The wandb mode of the run: WANDB_MODE from the environment when it is set to a mode wandb knows,
    else logging.wandb_mode."""
    from_environment = environment.get("WANDB_MODE", "").strip().lower()
    if not from_environment:
        return configured
    if from_environment not in WANDB_MODES:
        logger.warning("WANDB_MODE=%s is not one of %s; using logging.wandb_mode=%s", from_environment,
                       ", ".join(WANDB_MODES), configured)
        return configured
    mode = WANDB_MODES[from_environment]
    if mode != configured:
        logger.info("wandb mode %s from WANDB_MODE (logging.wandb_mode is %s)", mode, configured)
    return mode


def read_metrics(metrics_jsonl: str | Path) -> list[dict]:
    """All rows of a metrics.jsonl file, in order (a torn last line from a crash is ignored)."""
    rows = []
    with open(metrics_jsonl) as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


class MetricsLogger:
    """Appends step metrics to <run_dir>/metrics.jsonl and, unless disabled, logs them to wandb.

    resume_step: when resuming from a checkpoint taken at this step, rows logged after it by the
    interrupted run are dropped first, so the file holds each step exactly once.
    """

    def __init__(
        self,
        run_dir: str | Path,
        logging_config: LoggingConfig,
        config_dict: dict | None = None,
        resume_step: int | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE_NAME
        if resume_step is not None and self.path.exists():
            kept = [row for row in read_metrics(self.path) if row.get("step", -1) <= resume_step]
            self.path.write_text("".join(json.dumps(row) + "\n" for row in kept))
        self._file = open(self.path, "a")
        self._wandb_run = None
        self._wandb_axes: set[str] = set()  # metric families whose wandb x-axis is defined
        self.wandb_mode = resolve_wandb_mode(logging_config.wandb_mode)
        if self.wandb_mode != "disabled":
            self._wandb_run = _init_wandb(self.run_dir, logging_config, self.wandb_mode,
                                          redact_secrets(config_dict or {}))

    @property
    def wandb_enabled(self) -> bool:
        return self._wandb_run is not None

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """One row of GRPO step `step` (evaluation rows included)."""
        row = self._write_row(int(step), metrics)
        self._to_wandb(row, TRAIN_STEP_KEY, int(step))

    def log_stage(self, stage: str, stage_step: int, metrics: dict[str, Any]) -> None:
        """One row of a stage before GRPO (e.g. "sft"): JSONL `step` 0 with `<stage>/step`, its own wandb axis."""
        row = self._write_row(0, {f"{stage}/step": int(stage_step), **metrics})
        self._to_wandb(row, f"{stage}/step", int(stage_step))

    def has_logged(self, key: str) -> bool:
        """Whether some row of the file carries `key` (e.g. a resumed run already holds the SFT curve)."""
        self._file.flush()
        return any(key in row for row in read_metrics(self.path))

    def _write_row(self, step: int, metrics: dict[str, Any]) -> dict:
        row = {"step": step}
        for key, value in metrics.items():
            if key == "step":
                continue
            row[key] = to_json_value(value)
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        return row

    def _to_wandb(self, row: dict, axis_key: str, axis_value: int) -> None:
        """Log without wandb's own step; each metric family is plotted against its axis (define_metric)."""
        if self._wandb_run is None:
            return
        values = {key: value for key, value in row.items() if key != "step" and value is not None}
        values[axis_key] = axis_value
        for family in sorted({key.split("/")[0] for key in values} - self._wandb_axes):
            if axis_key == f"{family}/step":  # the axis's own family ("train", "sft"): the axis first
                self._wandb_run.define_metric(axis_key)
            self._wandb_run.define_metric(f"{family}/*", step_metric=axis_key)
            self._wandb_axes.add(family)
        self._wandb_run.log(values)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _init_wandb(run_dir: Path, logging_config: LoggingConfig, mode: str, config_dict: dict) -> Any:
    try:
        import wandb

        return wandb.init(
            mode=mode,
            dir=str(run_dir),
            project=logging_config.wandb_project,
            entity=logging_config.wandb_entity or None,
            name=run_dir.name,
            config=config_dict,
            settings=wandb.Settings(console="off", silent=True),
        )
    except Exception as error:  # logging must never stop training
        print(
            f"fanout: wandb ({mode}) could not start: {error}. Continuing with "
            f"{run_dir / METRICS_FILE_NAME} only; set logging.wandb_mode=disabled to silence this.",
            file=sys.stderr,
        )
        return None


__all__ = ["MetricsLogger", "METRICS_FILE_NAME", "read_metrics", "redact_secrets", "resolve_wandb_mode",
           "to_json_value"]
