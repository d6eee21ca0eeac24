"""pyproject.toml is true to the code: every import is declared, every dependency used, floors and pins agree.

- Every third-party module the packages (and the tests) import belongs to a declared distribution.
- Every declared dependency is imported somewhere (or listed below with the reason it is needed anyway).
- constraints.txt pins every dependency, inside its pyproject range, at the version installed here.
- The floors are at least the first release with the API the code calls (FLOORS), and that API exists.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data", "rewards", "rollouts", "rl")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
RUNTIME = [Requirement(text) for text in PYPROJECT["project"]["dependencies"]]
DEV = [Requirement(text) for text in PYPROJECT["project"]["optional-dependencies"]["dev"]]
OPTIONAL = {"vllm"}  # extras of their own (pyproject's [vllm] / [gpu]), imported on demand
# Declared but never imported by name, and why they are needed.
UNIMPORTED = {"accelerate": "transformers' Trainer (under TRL's SFTTrainer) refuses to start without it"}
# The first release with the API the code calls; pyproject's floor must not be older.
FLOORS = {
    "transformers": ("5.23", "TrainingArguments(activation_checkpointing=...) in rl/app/sft.py"),
    "trl": ("1.16", "SFTTrainer's fused LM head that rl/grpo/lm_head.py wraps, CPU path included"),
}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_top_modules(folders: tuple[str, ...]) -> dict[str, set[str]]:
    """{top-level module: the files importing it} over every .py file of the folders, stdlib left out."""
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names:
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def distribution_of(module: str) -> str | None:
    distributions = packages_distributions().get(module)
    return canonical(distributions[0]) if distributions else None


def test_every_third_party_import_of_the_packages_is_a_runtime_dependency():
    declared = {canonical(requirement.name) for requirement in RUNTIME} | OPTIONAL
    undeclared = {}
    for module, files in imported_top_modules(PACKAGES).items():
        if module in PACKAGES:
            continue
        distribution = distribution_of(module) or module
        if distribution not in declared:
            undeclared[module] = sorted(files)
    assert not undeclared, f"imported but not in pyproject's dependencies: {undeclared}"


def test_every_third_party_import_of_the_tests_is_declared():
    declared = {canonical(requirement.name) for requirement in RUNTIME + DEV} | OPTIONAL
    local = set(PACKAGES) | {path.stem for path in (ROOT / "tests").rglob("*.py")}
    undeclared = {module: sorted(files) for module, files in imported_top_modules(("tests",)).items()
                  if module not in local and (distribution_of(module) or module) not in declared}
    assert not undeclared, f"imported by tests but not declared (dev extra): {undeclared}"


def test_every_runtime_dependency_is_imported_or_has_a_reason():
    imported = {distribution_of(module) for module in imported_top_modules(PACKAGES)}
    unused = sorted(canonical(requirement.name) for requirement in RUNTIME
                    if canonical(requirement.name) not in imported and requirement.name not in UNIMPORTED)
    assert not unused, f"declared but never imported (drop them, or say why in UNIMPORTED): {unused}"
    assert "rich" not in {canonical(requirement.name) for requirement in RUNTIME}


def constraints() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            pins[canonical(name)] = Version(pinned)
    return pins


@pytest.mark.parametrize("requirement", RUNTIME + DEV, ids=lambda requirement: requirement.name)
def test_constraints_pin_each_dependency_inside_its_range_at_the_installed_version(requirement):
    pinned = constraints()[canonical(requirement.name)]
    assert requirement.specifier.contains(pinned, prereleases=True), (requirement, pinned)
    assert Version(version(requirement.name)).release == pinned.release


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_floors_are_no_older_than_the_apis_the_code_calls(name):
    first_release, api = FLOORS[name]
    (requirement,) = [requirement for requirement in RUNTIME if canonical(requirement.name) == name]
    floors = [Version(spec.version) for spec in requirement.specifier if spec.operator == ">="]
    assert floors and floors[0] >= Version(first_release), f"{name} floor {floors} is older than {first_release} ({api})"


def test_the_apis_behind_the_floors_exist_in_the_installed_versions():
    import inspect

    from transformers import TrainingArguments
    from trl.trainer.utils import FusedCausalLMOutput, add_fused_lm_head

    assert "activation_checkpointing" in inspect.signature(TrainingArguments.__init__).parameters
    assert callable(add_fused_lm_head) and "label_mask" in FusedCausalLMOutput.__dataclass_fields__
