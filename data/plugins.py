"""Plugins: the user's own modules, imported in the driver and in every Ray worker, that register extensions.

A plugin is a module that registers rewards, tools, protocols, datasets, engines or estimators with the
decorators of docs/EXTENDING.md when it is imported. The experiment names them in `plugins:`, each either a
module path (`my_pkg.rewards`, found on `sys.path` or else in the current folder) or a Python file
(`./my_tools.py`, relative to the current folder). Registration has to happen in every process that looks a name up, so the same list is imported

- in the driver, by `rl.app.registries.load_experiment`, before the configured names are checked;
- in every Ray worker process of the run, by Ray itself: `plugin_runtime_env` is merged into the job's
  runtime_env (rollouts.manager.init_ray), whose `worker_process_setup_hook` imports the list (passed in an
  environment variable) before the worker runs any task, so even unpickling finds the plugin modules;
- and again when a rollout actor builds its tools (rollouts/worker.py), a no-op after the hook, which covers
  a Ray session started without the hook (a test, a notebook).

Importing is idempotent: a module path goes through `importlib.import_module`; a file is imported once
under a name derived from its absolute path (`fanout_plugin_<stem>_<hash>`), the same in every process, so
a second import never registers anything twice.

What it simplifies on purpose: a file plugin is one module (its folder is not put on `sys.path`; several
modules make a package, named by module path); on a multi-node cluster a file must exist at the same
absolute path on every node (a shared filesystem) or be installed as a package.

    import_plugins(["my_pkg.rewards", "./my_tools.py"])
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterable

from data.errors import ConfigError

logger = logging.getLogger(__name__)

PLUGINS_ENVIRONMENT_VARIABLE = "FANOUT_PLUGINS"  # JSON list of resolved specs, read by the worker setup hook
WORKER_SETUP_HOOK = "data.plugins.import_plugins_from_environment"


def is_file_spec(spec: str) -> bool:
    """A spec that names a Python file (`./my_tools.py`, `/abs/x.py`) rather than a module path."""
    return spec.endswith(".py") or os.sep in spec or spec.startswith(".")


def resolve_plugin_specs(specs: Iterable[str]) -> list[str]:
    """Module paths as given, files as absolute paths (so a worker whose current folder differs finds them)."""
    return [str(Path(spec).expanduser().resolve()) if is_file_spec(spec) else spec for spec in specs]


def file_module_name(path: Path) -> str:
    """The module name a plugin file is imported under: stable for a path, the same in every process."""
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    stem = "".join(character if character.isalnum() else "_" for character in path.stem)
    return f"fanout_plugin_{stem}_{digest}"


def _import_file(path: Path) -> ModuleType:
    name = file_module_name(path)
    if name in sys.modules:
        return sys.modules[name]
    if not path.is_file():
        raise ConfigError(f"key 'plugins': plugin file '{path}' does not exist")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before executing, as importlib does: the module may refer to itself
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]  # a failed import leaves nothing half-registered behind for a retry
        raise
    return module


def _import_module(spec: str) -> ModuleType:
    """importlib.import_module, looking in the current folder last (as `python -m` would; the `fanout`
    console script does not put it on sys.path)."""
    current = os.getcwd()
    if "" not in sys.path and current not in sys.path:
        sys.path.append(current)
    return importlib.import_module(spec)


def import_plugin(spec: str) -> ModuleType:
    """Import one plugin (module path or file). A missing module or file, or a syntax error, is a ConfigError;
    any other exception raised by the plugin's own code propagates with its traceback."""
    try:
        if is_file_spec(spec):
            return _import_file(Path(spec).expanduser().resolve())
        return _import_module(spec)
    except (ImportError, SyntaxError) as error:
        raise ConfigError(f"key 'plugins': cannot import plugin {spec!r}: {type(error).__name__}: {error} "
                          "(a module path must be importable from this Python, e.g. on PYTHONPATH; a file path "
                          "must end in .py)") from error


def import_plugins(specs: Iterable[str]) -> list[ModuleType]:
    """Import every plugin in order (idempotent); returns the modules."""
    modules = []
    for spec in specs:
        already = (file_module_name(Path(spec).expanduser().resolve()) if is_file_spec(spec) else spec) in sys.modules
        modules.append(import_plugin(spec))
        if not already:
            logger.info("plugin %s imported (%s)", spec, modules[-1].__name__)
    return modules


def plugin_runtime_env(specs: Iterable[str]) -> dict:
    """The part of a Ray runtime_env that imports the plugins in every worker process before it runs a task."""
    resolved = resolve_plugin_specs(specs)
    if not resolved:
        return {}
    return {"env_vars": {PLUGINS_ENVIRONMENT_VARIABLE: json.dumps(resolved)},
            "worker_process_setup_hook": WORKER_SETUP_HOOK}


def import_plugins_from_environment() -> list[ModuleType]:
    """Ray's worker_process_setup_hook: import the plugins listed in FANOUT_PLUGINS (a JSON list)."""
    return import_plugins(json.loads(os.environ.get(PLUGINS_ENVIRONMENT_VARIABLE, "[]")))


__all__ = ["import_plugin", "import_plugins", "import_plugins_from_environment", "plugin_runtime_env",
           "resolve_plugin_specs"]
