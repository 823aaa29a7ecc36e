"""Shared helpers: run the real ``nas`` console command in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest_plugins = ("postgres",)  # the session's throwaway PostgreSQL server (tests/postgres.py)


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run_nas(*args: str, timeout: float = 600, cwd: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> Result:
    """Run ``python -m runners.cli ARGS`` as a user would run ``nas ARGS``."""
    full_env = {**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}
    full_env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # set by an in-process sweep earlier in this pytest run
    proc = subprocess.run(
        [sys.executable, "-m", "runners.cli", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, cwd=cwd or ROOT, env=full_env,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(result: Result, *needles: str) -> None:
    """Exit 2, a single stderr line, no traceback, and the line names the problem."""
    assert result.code == 2, (result.code, result.err)
    lines = [line for line in result.err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# the backbone's layer counts, 3x3 kernels, expansions 1 or 4 (4 or 6 in the last two stages): 4,096 architectures
# no larger than v2-b0 and the backbone among them (its yardstick trial runs), so sweep tests spend their time on
# the sweep rather than on training 40M-parameter draws (the shared sweep below keeps the default space)
SMALL_SPACE = "layers_delta: 0\ndefaults: {kernels: [3], expansions: [1, 4]}\nstages: {5: {expansions: [4, 6]}, 6: {expansions: [4, 6]}}\n"


@pytest.fixture
def small_space(tmp_path) -> list[str]:
    """``--space FILE`` arguments for the small space above."""
    path = tmp_path / "small_space.yaml"
    path.write_text(SMALL_SPACE)
    return ["--space", str(path)]


# two trials of 1 epoch at 16 px, two at a time, quiet: the cluster and team tests (tests/test_team.py, tests/test_cluster.py)
TINY_SEARCH = ["--trials", "2", "--concurrent", "2", "--sampler", "random", "--epochs", "1", "--image-size", "16",
               "--timing-image-size", "32", "--timing-batch-size", "8", "--timing-steps", "3", "--quiet"]
TINY_FAST = ["--epochs", "1", "--image-size", "16", "--timing-image-size", "16", "--timing-batch-size", "8", "--timing-steps", "3"]
TINY_SPACE = "layers_delta: 0\ndefaults: {kernels: [3], expansions: [1, 2, 4]}\n"


def tiny_backbone(mbconv_se_ratio: float = 0.0) -> dict[str, Any]:
    """A two-stage backbone (fused 8 -> 8, MBConv 8 -> 16 at stride 2, 16 px) as spec JSON.

    With ``mbconv_se_ratio`` 0 (the default) it lies outside every space (the spaces give MBConv 0.25):
    no yardstick trial; with 0.25 a space can sample its twin.
    """
    return {"schema_version": 1, "name": "tiny", "stem_channels": 8, "head_channels": 32, "num_classes": 10, "dropout": 0.0,
            "stochastic_depth": 0.0, "train_image_size": 16, "eval_image_size": 16, "stages": [
                {"operator": "fused_mbconv", "layers": 1, "kernel": 3, "stride": 1, "expansion": 1, "input_channels": 8,
                 "output_channels": 8, "se_ratio": 0.0},
                {"operator": "mbconv", "layers": 1, "kernel": 3, "stride": 2, "expansion": 2, "input_channels": 8,
                 "output_channels": 16, "se_ratio": mbconv_se_ratio}]}


@pytest.fixture
def tiny_space(tmp_path) -> list[str]:
    """The tiny backbone and its space (18 architectures) as ``--backbone``/``--space`` arguments, with ``TINY_FAST``:
    the faults, not the training, take a test's time."""
    (tmp_path / "tiny.json").write_text(json.dumps(tiny_backbone()))
    (tmp_path / "tiny_space.yaml").write_text(TINY_SPACE)
    return ["--backbone", str(tmp_path / "tiny.json"), "--space", str(tmp_path / "tiny_space.yaml"), *TINY_FAST]


@pytest.fixture
def nas_cli():
    return run_nas


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test using ``finished_sweep`` (which starts Ray) is slow, whatever its module says."""
    for item in items:
        if "finished_sweep" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def finished_sweep(tmp_path_factory) -> Path:
    """A small real sweep on digits (5 trials, 1 epoch), shared by the read-only tests."""
    runs = tmp_path_factory.mktemp("runs")
    result = run_nas("search", "--name", "shared", "--runs-dir", runs, "--trials", "5", "--concurrent", "2", "--sampler", "random",
                     "--seed", "3", "--epochs", "1", "--image-size", "16", "--timing-image-size", "32", "--timing-batch-size", "8",
                     "--timing-steps", "3", timeout=1200)  # a busy shared machine: minutes per trial
    assert result.code == 0, result.err
    # its progress lines (not --quiet) and final summary, for the feedback tests (tests/test_feedback.py)
    (runs / "search.stderr").write_text(result.err)
    (runs / "search.stdout").write_text(result.out)
    return runs / "shared"
