"""Test hook: kill the training process at a named point, to check that a resumed run loses nothing.

Set `FANOUT_FAULT_EXIT_AT=<point>:<step>` and the process sends itself SIGKILL when it reaches that
point of that step: no `finally`, no atexit handler, no buffered write gets to run, exactly what a
`kill -9`, the OOM killer or a pre-empted node does. The points:

    step:N       after step N is logged and, if due, checkpointed (a kill between two steps)
    mid_step:N   after the optimizer update of step N, before it is logged or checkpointed
    save:N       inside the save of checkpoint-N: every file written, the folder not yet renamed

    FANOUT_FAULT_EXIT_AT=mid_step:2 fanout train configs/quickstart.yaml checkpoint.every_steps=1
    fanout train configs/quickstart.yaml checkpoint.every_steps=1 experiment.resume=true

Unset (always, outside tests) `fault_point` is one environment lookup. A malformed value raises
instead of being ignored, so a test cannot pass because its fault never fired.
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "FANOUT_FAULT_EXIT_AT"
FAULT_POINTS = ("step", "mid_step", "save")


def parse_fault_spec(spec: str) -> tuple[str, int]:
    """`"mid_step:2"` -> ("mid_step", 2); raises ValueError naming the variable and the valid points."""
    point, _, step = spec.partition(":")
    if point not in FAULT_POINTS or not step.isdigit():
        raise ValueError(
            f"{FAULT_ENV}={spec!r}: expected <point>:<step> with point one of "
            f"{', '.join(FAULT_POINTS)} (e.g. {FAULT_ENV}=step:2)"
        )
    return point, int(step)


def fault_point(point: str, step: int) -> None:
    """SIGKILL this process if FANOUT_FAULT_EXIT_AT names this point and step."""
    spec = os.environ.get(FAULT_ENV)
    if spec and parse_fault_spec(spec) == (point, step):
        os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["FAULT_ENV", "FAULT_POINTS", "fault_point", "parse_fault_spec"]
