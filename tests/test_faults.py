"""Faults a sweep survives, as real processes: SIGTERM, a driver killed right after ``ask``, database restarts."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests.conftest import ROOT, run_nas

pytestmark = pytest.mark.slow
FAST = ["--epochs", "2", "--image-size", "16", "--timing-image-size", "32", "--timing-batch-size", "8", "--timing-steps", "3"]
State = optuna.trial.TrialState


def _start(args: list[str], err: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``nas ARGS`` in the background, its stderr to ``err``."""
    full_env = {**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}
    full_env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    with open(err, "w") as stream:
        return subprocess.Popen([sys.executable, "-m", "runners.cli", *map(str, args)], cwd=ROOT, env=full_env,
                                stdout=subprocess.DEVNULL, stderr=stream, text=True, start_new_session=True)


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception:  # the database is being created
            pass
        time.sleep(0.5)
    raise AssertionError(f"{what} did not happen within {timeout:.0f} s")


def _trials(db: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}").get_trials(deepcopy=False)


def _terminate(proc: subprocess.Popen, err: Path) -> tuple[int, str]:
    """SIGTERM to the command's process only (as a scheduler or `timeout` sends it); its exit status and stderr."""
    try:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
        return proc.returncode, err.read_text()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers, if the stop was not clean
        except ProcessLookupError:
            pass


def test_sigterm_stops_search_cleanly_and_the_next_run_recovers_the_trial(tmp_path, small_space):
    args = ["search", "--name", "term", "--runs-dir", tmp_path, "--trials", "1", "--concurrent", "1", "--sampler", "random",
            *small_space, *FAST]
    err_file = tmp_path / "err.txt"
    proc = _start(args, err_file)
    db = tmp_path / "term" / "study.db"
    _wait_for(lambda: any(t.state == State.RUNNING and "spec_key" in t.user_attrs for t in _trials(db, "term")), 180, "a trial in flight")
    time.sleep(2)  # its Ray task is training
    code, err = _terminate(proc, err_file)
    assert code == 143, err
    assert [line for line in err.splitlines() if line.strip()] == ["nas search: terminated"]  # no crash dump
    trials = _trials(db, "term")
    stopped = [t for t in trials if t.state == State.FAIL]
    assert len(stopped) == 1 and stopped[0].user_attrs["failure_reason"].startswith("interrupted")
    assert not [t for t in trials if t.state == State.RUNNING]  # marked at once, no grace period to wait out
    assert [t.user_attrs.get("retry_of") for t in trials if t.state == State.WAITING] == [stopped[0].number]
    result = run_nas(*args, "--json")
    assert result.code == 0, result.err
    trials = _trials(db, "term")
    retried = [t for t in trials if t.user_attrs.get("retry_of") == stopped[0].number]
    assert len(retried) == 1 and retried[0].state == State.COMPLETE
    assert result.json()["complete"] == 1


def test_sigterm_stops_fidelity_cleanly(tmp_path, finished_sweep):
    run_dir = tmp_path / "shared"
    shutil.copytree(finished_sweep, run_dir)
    err_file = tmp_path / "err.txt"
    proc = _start(["fidelity", run_dir, "--trials", "2", "--epochs", "30"], err_file)
    _wait_for(lambda: "to go" in err_file.read_text(), 60, "the fidelity plan")
    time.sleep(10)  # Ray started, a retraining in flight
    assert proc.poll() is None, err_file.read_text()
    code, err = _terminate(proc, err_file)
    assert code == 143, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("fidelity:")]
    assert lines == ["nas fidelity: terminated"]
