"""Package boundaries: the core package ``nas`` depends on none of the others (they depend on it)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = ("runners", "search_spaces", "rewards")


def imported_packages(path: Path) -> set[str]:
    """Top-level package of every import in ``path``, including those inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "nas").rglob("*.py")), ids=lambda p: p.name)
def test_nas_imports_no_runner_space_or_reward(path):
    assert imported_packages(path).isdisjoint(FORBIDDEN)


def test_rewards_import_nothing_of_ours():
    assert imported_packages(ROOT / "rewards" / "__init__.py").isdisjoint({"nas", *FORBIDDEN})


def test_the_import_reader_sees_nested_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    from runners.cli import main\n    import search_spaces.space\n")
    assert imported_packages(source) == {"os", "runners", "search_spaces"}


READERS = ("runners.cli", "runners.config", "runners.study", "runners.analysis.results", "runners.analysis.report",
           "runners.analysis.dashboard", "runners.analysis.fidelity", "runners.analysis.calibrate")


def test_the_parser_and_the_reading_commands_never_import_torch():
    """``nas --help``, a bad flag and the commands that only read a study (rescore, export, report, dashboard) start
    without torch: importing it cost each of them about 1.2 s on a quiet 2-core machine (bench/bench_startup.py)."""
    import subprocess
    import sys

    code = ("import importlib, sys\n"
            f"for name in {READERS!r}:\n    importlib.import_module(name)\n"
            "import runners.cli\nrunners.cli.make_parser()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
