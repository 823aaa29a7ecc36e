"""The layout holds: no import cycle, the sweep and the analysis apart, one record module, small files and functions."""

import ast
import re
from dataclasses import fields
from pathlib import Path

import pytest

from nas.record import FIELDS, TrialRecord

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("nas", "runners", "search_spaces", "rewards")
SOURCES = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))
# record fields that are also words of another vocabulary, so they appear as literals elsewhere for that other meaning:
# proxy score names (nas.scores.SCORES: accuracy, val_loss), the settings stored in a study and a config file's keys
# (data, backbone, seed, reward), arch.json's "spec", a spec's num_classes, torch's param groups ("params"), `nas inspect`'s
# counts (params, macs), `nas train`'s history and checkpoint (train_seconds, torch_version, device, curve), the timing
# cache key (host, threads), a command summary's own duration (wall_seconds) and status
OTHER_MEANINGS = {"accuracy", "val_loss", "data", "backbone", "seed", "reward", "spec", "num_classes", "params", "macs",
                  "train_seconds", "torch_version", "device", "curve", "host", "threads", "wall_seconds", "status"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SOURCES}


def imports(path: Path) -> list[tuple[str, bool]]:
    """(module imported, nested in a function) for every import of a project module in ``path``; ``from a import b``
    names the module ``a.b`` when that is one."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module for a in node.names]
        else:
            continue
        found += [(name, id(node) in nested) for name in names if name.split(".")[0] in PACKAGES]
    return found


def graph() -> dict[str, set[str]]:
    return {name: {target for target, _ in imports(path) if target in MODULES and target != name} for name, path in MODULES.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_anywhere():
    assert cycles(graph()) == []


def test_the_cycle_finder_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("side, other", [("runners.analysis", "runners.sweep"), ("runners.sweep", "runners.analysis")])
def test_the_sweep_and_the_analysis_import_nothing_of_each_other(side, other):
    crossing = {name: sorted(t for t in targets if t.startswith(other)) for name, targets in graph().items() if name.startswith(side)}
    assert {name: targets for name, targets in crossing.items() if targets} == {}


def test_nas_imports_nothing_above_it():
    above = {name: sorted(t for t in targets if not t.startswith("nas")) for name, targets in graph().items() if name.startswith("nas")}
    assert {name: targets for name, targets in above.items() if targets} == {}


LAZY = ("runners.analysis.retrain",)  # its Ray task's trainer loads in the task: reading a study's results never imports torch


def test_no_project_import_hidden_in_a_function():
    """Imports of our own modules sit at the top (a nested one hides a cycle); the CLI alone loads its commands lazily
    (``nas --help`` does not import torch and Ray), and the retraining task its trainer (tests/test_boundaries.py)."""
    hidden = {module_name(p): sorted(t for t, nested in imports(p) if nested) for p in SOURCES if module_name(p) != "runners.cli"
              and not module_name(p).startswith("runners.cli.") and module_name(p) not in LAZY}
    assert {name: targets for name, targets in hidden.items() if targets} == {}
    assert all(any(nested for _, nested in imports(p)) for p in SOURCES if module_name(p) in LAZY)  # no stale exception


def test_the_record_fields_are_spelled_only_in_the_record_module():
    names = FIELDS - OTHER_MEANINGS
    spelled = {}
    for path in SOURCES:
        if module_name(path) == "nas.record":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                spelled.setdefault(str(path.relative_to(ROOT)), set()).add(node.value)
    assert spelled == {}


def test_the_literal_check_would_see_a_field_name(tmp_path):
    source = 'x = attrs["normalized_step_time"]\n'
    found = {n.value for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant)}
    assert "normalized_step_time" in found and "normalized_step_time" in {f.name for f in fields(TrialRecord)}


def _functions(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    return [(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}", node.end_lineno - node.lineno + 1) for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_no_function_over_60_lines():
    assert {name: size for path in SOURCES for name, size in _functions(path) if size > 60} == {}


def test_no_file_over_400_lines():
    assert {str(p.relative_to(ROOT)): n for p in SOURCES if (n := len(p.read_text().splitlines())) > 400} == {}


def test_no_shared_notes_cited_in_code():
    """Facts from the team's notes are written where they are used, not cited by a file name the user does not have."""
    cited = {str(p.relative_to(ROOT)) for p in SOURCES if re.search(r"FINDINGS\.md|REFERENCE\.md|DESIGN\.md", p.read_text())}
    assert cited == set()
