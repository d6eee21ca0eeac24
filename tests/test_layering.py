"""The packages' layering, read from the code: no upward import, no package cycle (DESIGN.md, "Layers").

Every import counts: module level, inside functions, under TYPE_CHECKING, `importlib.import_module("…")`
and a string that names one of the project's modules (how lazy registries import, e.g. the vLLM engine).

Layers, lowest first: data → rewards → rollouts → rl. Inside rl: rl.config (the composed experiment
config) → rl.grpo (the trainer) → rl.app (train loop, eval, SFT) → rl.bench →
rl/cli.py (the `fanout` entry point, over all of them).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data", "rewards", "rollouts", "rl")

# What each unit may import besides itself. A unit is a top package, or one of rl's parts.
ALLOWED = {
    "data": set(),
    "rewards": {"data"},
    "rollouts": {"data", "rewards"},
    "rl.config": {"data", "rewards", "rollouts"},
    "rl.grpo": {"data", "rewards", "rollouts", "rl.config"},
    "rl.app": {"data", "rewards", "rollouts", "rl.config", "rl.grpo"},
    "rl.bench": {"data", "rewards", "rollouts", "rl.config", "rl.grpo", "rl.app"},
    "rl": {"data", "rewards", "rollouts", "rl.config", "rl.grpo", "rl.app", "rl.bench"},  # rl/__main__.py
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "rl" and len(parts) > 1 and f"rl.{parts[1]}" in ALLOWED:
        return f"rl.{parts[1]}"
    return parts[0]


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}


def imported_modules(path: Path, module: str, known: set[str]) -> set[str]:
    """Every project module that `path` imports, in any of the ways the module docstring lists."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            found.update(arg.value for arg in node.args[:1] if isinstance(arg, ast.Constant))
        elif isinstance(node, ast.Constant) and "." in str(node.value) and node.value in known:
            found.add(node.value)  # a lazy registry's module path, e.g. {"vllm": "rollouts.engine_vllm"}
    return {name for name in found if name.split(".")[0] in PACKAGES}


def import_graph() -> dict[str, dict[str, list[str]]]:
    """{unit: {imported unit: [the importing modules]}}, self-edges left out."""
    modules = project_modules()
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for module, path in modules.items():
        for imported in imported_modules(path, module, set(modules)):
            source, target = unit_of(module), unit_of(imported)
            if source != target:
                graph[source][target].append(module)
    return graph


def find_cycle(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in graph.get(node, {}):
            if state.get(nxt) == 1:
                return trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
            if state.get(nxt) is None:
                cycle = visit(nxt, trail + [nxt])
                if cycle:
                    return cycle
        state[node] = 2
        return None

    for start in list(graph):
        if state.get(start) is None:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_no_upward_import():
    graph = import_graph()
    violations = [
        f"{source} imports {target} (in {', '.join(sorted(set(where)))})"
        for source, targets in graph.items()
        for target, where in targets.items()
        if target not in ALLOWED[source]
    ]
    assert not violations, "upward imports:\n" + "\n".join(violations)


def test_no_package_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, f"package cycle: {' -> '.join(cycle)}"


def test_the_check_sees_imports_in_functions_type_checking_and_import_module(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import importlib\n"
        "if TYPE_CHECKING:\n"
        "    from rl.config import ExperimentConfig\n"
        "def f():\n"
        "    from rollouts.worker import WorkerSetup\n"
        "    return importlib.import_module('rl.app.train')\n"
    )
    found = imported_modules(source, "data.probe", set())
    assert {"rl.config", "rollouts.worker", "rl.app.train"} <= found


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b": ["a.x"]}, "b": {"c": ["b.y"]}, "c": {"a": ["c.z"]}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": ["a.x"]}, "b": {}}) is None


@pytest.mark.parametrize("unit", sorted(ALLOWED))
def test_every_unit_exists(unit):
    assert unit in {unit_of(module) for module in project_modules()}
