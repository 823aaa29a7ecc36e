"""Faults a sweep survives, as real processes: SIGTERM, a driver killed right after ``ask``, database restarts."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests.conftest import ROOT, run_nas
from tests.ray_nodes import descendants

pytestmark = pytest.mark.slow
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


def test_sigterm_stops_search_cleanly_and_the_next_run_recovers_the_trial(tmp_path, tiny_space):
    args = ["search", "--name", "term", "--runs-dir", tmp_path, "--trials", "1", "--concurrent", "1", "--sampler", "random",
            *tiny_space, "--epochs", "8", "--quiet"]  # a trial long enough to be stopped in flight; no progress lines
    err_file = tmp_path / "err.txt"
    proc = _start(args, err_file)
    db = tmp_path / "term" / "study.db"
    _wait_for(lambda: any(t.state == State.RUNNING and "spec_key" in t.user_attrs for t in _trials(db, "term")), 180, "a trial in flight")
    time.sleep(1)  # its Ray task is training
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


def _named(pids: set[int], name: str) -> set[int]:
    found = set()
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                found.add(pid)
        except OSError:
            continue
    return found


def test_sigterm_while_ray_starts_is_a_clean_stop(tmp_path, tiny_space):
    """Ray installs SIGTERM handlers of its own while ``ray.init`` runs (exit 15, or 1 once its node runs, no line)."""
    err_file = tmp_path / "err.txt"
    proc = _start(["search", "--name", "early", "--runs-dir", tmp_path, "--trials", "1", *tiny_space, "--quiet"], err_file)
    deadline, gcs = time.monotonic() + 120, set()
    while not gcs and proc.poll() is None and time.monotonic() < deadline:  # Ray's first process: ray.init has begun
        gcs = _named(descendants({proc.pid}), "gcs_server")
        time.sleep(0.02)
    assert gcs, err_file.read_text()
    code, err = _terminate(proc, err_file)
    assert code == 143, err
    assert [line for line in err.splitlines() if line.strip()] == ["nas search: terminated"]
    _wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in gcs), 30, "Ray's processes stopped")


def test_sigterm_stops_fidelity_cleanly(tmp_path, finished_sweep):
    run_dir = tmp_path / "shared"
    shutil.copytree(finished_sweep, run_dir)
    err_file = tmp_path / "err.txt"
    proc = _start(["fidelity", run_dir, "--trials", "2", "--epochs", "30"], err_file)
    # a retraining in flight, saying how far it is (progress within a retraining, not only at its start and end)
    _wait_for(lambda: proc.poll() is not None or " img/s, " in err_file.read_text(), 300, "a retraining's progress line")
    assert proc.poll() is None, err_file.read_text()
    code, err = _terminate(proc, err_file)
    assert code == 143, err
    assert re.search(r"^fidelity: trial \d+: epoch \d+/30, step \d+/\d+, \d+ img/s, \d+ s$", err, re.MULTILINE), err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("fidelity:")]
    assert lines == ["nas fidelity: terminated"]


@pytest.mark.parametrize("kill_at", ["1", "heartbeat"])
def test_driver_killed_before_its_trials_claim_is_recovered_as_interrupted(tmp_path, tiny_space, kill_at):
    """The driver SIGKILLs itself right after its first ask ("1": before the trial's first heartbeat, so only our
    unclaimed check can recover it) or after that heartbeat ("heartbeat": Optuna's stale check fails the trial as it is).
    Either way the trial counts as interrupted and is queued again, never as a failure of the sweep; after the heartbeat
    it did count as one, and a resumed 5-trial sweep ended with 4 complete (a fresh-clone CI run of
    test_sweep::test_resume_after_sigkill)."""
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text("heartbeat_interval: 1\ngrace_period: 3\n")
    args = ["search", "--name", "orphan", "--runs-dir", tmp_path, "--trials", "1", "--concurrent", "1", "--sampler", "random",
            "--config", cfg, *tiny_space]
    err_file = tmp_path / "err.txt"
    proc = _start(args, err_file, env={"NAS_TEST_KILL_AFTER_ASK": kill_at})
    try:
        assert proc.wait(timeout=180) == -signal.SIGKILL, err_file.read_text()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the Ray instance it left behind
        except ProcessLookupError:
            pass
    db = tmp_path / "orphan" / "study.db"
    orphan = [t for t in _trials(db, "orphan") if t.state == State.RUNNING]
    assert len(orphan) == 1 and "spec_key" not in orphan[0].user_attrs  # asked, never claimed
    result = run_nas(*args, "--json", timeout=300)  # bounded: a driver that waited forever would time out here
    assert result.code == 0, result.err
    if kill_at == "1":  # no heartbeat at all: recovered by the unclaimed check, after the grace period
        line = [x for x in result.err.splitlines() if f"trial {orphan[0].number}: no heartbeat" in x]
        assert len(line) == 1, result.err
        waited = float(line[0].split("no heartbeat ")[1].split(" s")[0])
        assert 3 <= waited <= 3 + 1 + 1, line  # grace_period + one heartbeat (+ rounding)
    trials = _trials(db, "orphan")
    assert trials[orphan[0].number].state == State.FAIL
    assert trials[orphan[0].number].user_attrs["failure_reason"].startswith("interrupted")
    retried = [t for t in trials if t.user_attrs.get("retry_of") == orphan[0].number]
    assert len(retried) == 1 and retried[0].state == State.COMPLETE
    assert result.json()["complete"] == 1 and result.json()["failed"] == 0 and result.json()["recovered"] == 1


def test_postgres_restarted_twice_during_a_sweep(tmp_path, tiny_space, postgres):
    url = postgres.new_database()
    err_file, cfg = tmp_path / "err.txt", tmp_path / "sweep.yaml"
    cfg.write_text("heartbeat_interval: 1\ngrace_period: 60\n")  # the driver touches the database every second
    proc = _start(["search", "--name", "pgr", "--runs-dir", tmp_path, "--trials", "3", "--concurrent", "1", "--sampler", "random",
                   "--config", cfg, *tiny_space, "--epochs", "4", "--json"], err_file, env={"NAS_STORAGE": url})

    def complete() -> int:
        return sum(t.state == State.COMPLETE for t in optuna.load_study(study_name="pgr", storage=url).get_trials(deepcopy=False))

    try:
        for done in (1, 2):  # while the next trial trains (and its driver reads and writes the study)
            _wait_for(lambda done=done: proc.poll() is not None or complete() >= done, 300, f"{done} finished trial(s)")
            time.sleep(1)
            postgres.restart(down_seconds=4)
        assert proc.wait(timeout=300) == 0, err_file.read_text()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert "storage: " in err_file.read_text()  # the driver saw the restarts and retried
    trials = optuna.load_study(study_name="pgr", storage=url).get_trials(deepcopy=False)
    # exactly 3 (the tiny backbone is outside its space: no yardstick trial), none lost, failed, retried or told twice
    assert [t.state for t in trials] == [State.COMPLETE] * 3, [(t.state, t.user_attrs.get("failure_reason")) for t in trials]
    assert not [t for t in trials if "retry_of" in t.user_attrs or "reused_from" in t.user_attrs]


def _runs(pid: int, name: str) -> bool:
    """A process below ``pid`` (the command's own Ray instance) whose command line starts with ``name``."""
    for child in descendants({pid}) - {pid}:
        try:
            if Path(f"/proc/{child}/cmdline").read_bytes().startswith(name.encode()):
                return True
        except OSError:
            continue
    return False
