"""Benchmark suites: `fanout bench SUITE [--quick]`.

Each suite is a module in this package exposing `run(quick: bool) -> dict` and registered in SUITES; a
suite whose `run` also takes `overrides` accepts `key=value` config overrides on the command line
(`fanout bench learn grpo.total_steps=120`), the others refuse them; `--from-run RUN_DIR` (learn only)
starts from a finished training run and `--async-steps N` (learn only) gives its asynchronous run N steps.
It prints a human-readable table while it runs; `run_suite` prints, as the last line, one JSON object
`{"suite": NAME, ...figures}` (the contract in docs/BENCHMARKS.md). `--quick` is a tiny setting used by
the test suite to check that the suite runs and its figures are well formed; real figures come from a
run without it. Benchmarks measure ratios side by side in one run, never absolute timings in tests.
"""

from __future__ import annotations

import importlib
import inspect
import json
from typing import Sequence

from data.registry import Registry

# suite name -> module (relative to rl.bench) with run(quick) -> dict
SUITES: Registry[str] = Registry("benchmark suite")


def register_suite(name: str, module: str) -> None:
    SUITES.add(name, module)


register_suite("tools", "rl.bench.tools")
register_suite("rollouts", "rl.bench.rollouts")
register_suite("async", "rl.bench.async_bench")
register_suite("trainer", "rl.bench.trainer")
register_suite("sync", "rl.bench.sync")
register_suite("memory", "rl.bench.memory")
register_suite("scaling", "rl.bench.scaling")
register_suite("retriever", "rl.bench.retriever_load")
register_suite("dp", "rl.bench.dp")
register_suite("learn", "rl.bench.learn")
register_suite("weight_group", "rl.bench.weight_group")


def run_suite(name: str, quick: bool = False, overrides: Sequence[str] = (), from_run: str | None = None,
              async_steps: int | None = None) -> dict:
    if name not in SUITES:
        from rl.config import ConfigError

        raise ConfigError(f"unknown benchmark suite {name!r}; valid suites: {', '.join(sorted(SUITES))}")
    try:
        module = importlib.import_module(SUITES[name])
    except ModuleNotFoundError as error:
        from rl.config import ConfigError

        raise ConfigError(f"benchmark suite {name!r} is not implemented yet ({error})") from None
    parameters = inspect.signature(module.run).parameters
    if from_run is not None and "from_run" not in parameters:
        from rl.config import ConfigError

        raise ConfigError(f"benchmark suite {name!r} does not start from a run (--from-run is for: learn)")
    if async_steps is not None and "async_steps" not in parameters:
        from rl.config import ConfigError

        raise ConfigError(f"benchmark suite {name!r} has no asynchronous run to lengthen "
                          "(--async-steps is for: learn)")
    if "overrides" in parameters:
        extra = {key: value for key, value in (("from_run", from_run), ("async_steps", async_steps))
                 if key in parameters}
        figures = module.run(quick=quick, overrides=list(overrides), **extra)
    elif overrides:
        from rl.config import ConfigError

        raise ConfigError(f"benchmark suite {name!r} takes no key=value overrides (got {' '.join(overrides)})")
    else:
        figures = module.run(quick=quick)
    result = {"suite": name, **figures}
    print(json.dumps(result), flush=True)
    return result
