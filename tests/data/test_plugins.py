"""Plugins: files and module paths imported once, in any order of processes; clear errors for bad ones."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import pytest

from data.errors import ConfigError
from data.loaders import STRUCTURE_MAPPERS
from data.plugins import (
    PLUGINS_ENVIRONMENT_VARIABLE,
    WORKER_SETUP_HOOK,
    file_module_name,
    import_plugins,
    import_plugins_from_environment,
    plugin_runtime_env,
    resolve_plugin_specs,
)

PLUGIN_SOURCE = """
from data.loaders import register_dataset

IMPORTS = globals().get("IMPORTS", 0) + 1


@register_dataset({name!r})
def structure(row):
    return "parallel"
"""


@pytest.fixture
def dataset_plugin(tmp_path):
    """A plugin file outside the repository that registers a dataset under a fresh name; unregistered after."""
    name = f"plugin_test_{uuid.uuid4().hex[:8]}"
    path = tmp_path / "outside" / "my_datasets.py"
    path.parent.mkdir()
    path.write_text(PLUGIN_SOURCE.format(name=name))
    yield path, name
    STRUCTURE_MAPPERS.pop(name, None)
    sys.modules.pop(file_module_name(path.resolve()), None)


def test_a_file_plugin_registers_once_however_often_it_is_imported(dataset_plugin):
    path, name = dataset_plugin
    (first,) = import_plugins([str(path)])
    (second,) = import_plugins([str(path)])  # a second registration would raise "already registered"
    assert first is second and first.IMPORTS == 1
    assert STRUCTURE_MAPPERS[name]({"question": "?"}) == "parallel"
    assert first.__name__ == file_module_name(path.resolve()) and first.__name__.startswith("fanout_plugin_my_datasets_")


def test_a_relative_file_path_is_resolved_against_the_current_folder(dataset_plugin, monkeypatch):
    path, name = dataset_plugin
    monkeypatch.chdir(path.parent)
    assert resolve_plugin_specs(["./my_datasets.py", "json.decoder"]) == [str(path.resolve()), "json.decoder"]
    import_plugins(["./my_datasets.py"])
    assert name in STRUCTURE_MAPPERS


def test_a_module_path_plugin_is_imported_from_sys_path(tmp_path, monkeypatch):
    name = f"plugin_test_{uuid.uuid4().hex[:8]}"
    package = tmp_path / f"pkg_{name}"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "datasets.py").write_text(PLUGIN_SOURCE.format(name=name))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        (module,) = import_plugins([f"pkg_{name}.datasets"])
        assert module.__name__ == f"pkg_{name}.datasets" and name in STRUCTURE_MAPPERS
    finally:
        STRUCTURE_MAPPERS.pop(name, None)


def test_a_module_path_plugin_is_found_in_the_current_folder_as_python_m_would(tmp_path, monkeypatch):
    """The `fanout` console script does not put the current folder on sys.path; the plugin loader looks there last."""
    name = f"plugin_test_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}_module.py").write_text(PLUGIN_SOURCE.format(name=name))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry not in ("", str(tmp_path))])
    try:
        (module,) = import_plugins([f"{name}_module"])
        assert module.__file__ == str(tmp_path / f"{name}_module.py") and name in STRUCTURE_MAPPERS
        assert sys.path[-1] == str(tmp_path)
    finally:
        STRUCTURE_MAPPERS.pop(name, None)
        sys.modules.pop(f"{name}_module", None)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("./no_such_plugin.py", r"key 'plugins': plugin file '.*no_such_plugin\.py' does not exist"),
        ("no_such_package.rewards", r"key 'plugins': cannot import plugin 'no_such_package\.rewards': "
                                    r"ModuleNotFoundError"),
    ],
)
def test_a_missing_plugin_is_a_config_error_naming_it(spec, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=message):
        import_plugins([spec])


def test_a_plugin_with_a_syntax_error_is_a_config_error_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("def oops(:\n")
    with pytest.raises(ConfigError, match=r"cannot import plugin .*broken\.py.*SyntaxError"):
        import_plugins([str(path)])
    assert file_module_name(path.resolve()) not in sys.modules


def test_an_exception_inside_a_plugin_keeps_its_traceback(tmp_path):
    path = tmp_path / "raising.py"
    path.write_text("raise RuntimeError('the plugin itself is broken')\n")
    with pytest.raises(RuntimeError, match="the plugin itself is broken"):
        import_plugins([str(path)])
    assert file_module_name(path.resolve()) not in sys.modules


def test_the_runtime_env_hands_the_resolved_list_to_the_worker_setup_hook(dataset_plugin, monkeypatch):
    path, name = dataset_plugin
    monkeypatch.chdir(path.parent)
    runtime_env = plugin_runtime_env(["./my_datasets.py"])
    assert runtime_env["worker_process_setup_hook"] == WORKER_SETUP_HOOK == "data.plugins.import_plugins_from_environment"
    assert json.loads(runtime_env["env_vars"][PLUGINS_ENVIRONMENT_VARIABLE]) == [str(path.resolve())]
    assert plugin_runtime_env([]) == {}
    # what a fresh Ray worker does with it: the hook reads the variable and imports the list
    monkeypatch.setenv(PLUGINS_ENVIRONMENT_VARIABLE, runtime_env["env_vars"][PLUGINS_ENVIRONMENT_VARIABLE])
    monkeypatch.chdir(Path("/"))
    (module,) = import_plugins_from_environment()
    assert name in STRUCTURE_MAPPERS and module.IMPORTS == 1
