"""Settings every driver of a study shares, where a run directory's study lives, and sweeps on separate machines."""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import optuna
import pytest

from nas.configs import TrainConfig
from nas.errors import InputError
from nas.spec import NetworkSpec
from runners.config import resolve_config
from runners.study import backbone_trial, open_run
from runners.sweep.run import run_sweep
from tests.conftest import TINY_SEARCH, assert_one_line_error, run_nas, tiny_backbone
from tests.ray_nodes import RAY, alive_nodes, descendants, free_port, private_network, stop_nodes


def synthetic(spec: NetworkSpec, train: TrainConfig) -> dict:
    """An instant evaluation record with made-up numbers."""
    rng = random.Random(spec.key())
    return {"status": "ok", "accuracy": rng.uniform(0.5, 1.0), "normalized_step_time": rng.uniform(0.5, 2.0),
            "normalized_params": rng.uniform(0.5, 2.0), "step_time_ms": 10.0, "params": 1000, "spec": spec.to_dict(),
            "spec_key": spec.key(), "seed": train.seed}


def _config(runs, **values):
    return resolve_config(None, {"name": "team", "runs_dir": str(runs), "sampler": "random", "quiet": True,
                                 "max_concurrent": 1, **values})


def test_a_later_driver_adopts_the_study_n_trials_and_liveness_settings(tmp_path, capsys):
    first = run_sweep(_config(tmp_path, n_trials=3, heartbeat_interval=2, grace_period=10, max_retries=2, trial_timeout=99),
                      evaluate=synthetic)
    assert first["complete"] == 3
    capsys.readouterr()
    second = run_sweep(_config(tmp_path, n_trials=2, heartbeat_interval=1, grace_period=3), evaluate=synthetic)
    assert second["complete"] == 3 and second["trials_this_run"] == 0  # one N for the sweep: the study's
    line = [x for x in capsys.readouterr().err.splitlines() if "adopted from the study" in x]
    assert len(line) == 1
    for text in ("n_trials=3 (not 2)", "heartbeat_interval=2 (not 1)", "grace_period=10 (not 3)", "max_retries=2 (not 1)",
                 "trial_timeout=99 (not 21600)"):
        assert text in line[0], line
    stored = json.loads((tmp_path / "team" / "config.json").read_text())
    assert (stored["n_trials"], stored["grace_period"], stored["heartbeat_interval"]) == (3, 10, 2)
    third = run_sweep(_config(tmp_path, n_trials=5), evaluate=synthetic)  # a larger --trials extends the sweep
    assert third["complete"] == 5 and third["trials_this_run"] == 2
    assert any("n_trials raised from 3 to 5" in x for x in capsys.readouterr().err.splitlines())


def test_a_run_directory_remembers_where_its_study_lives(tmp_path, postgres):
    url = postgres.new_database()
    run_sweep(_config(tmp_path, n_trials=2, storage=url), evaluate=synthetic)
    run_dir = tmp_path / "team"
    before = sorted(p.name for p in run_dir.iterdir()), (run_dir / "config.json").read_text()
    assert postgres.password not in before[1] and "***" in before[1]
    env = {"NAS_STORAGE": ""}
    resume = run_nas("search", "--name", "team", "--runs-dir", tmp_path, "--sampler", "random", env=env)
    assert_one_line_error(resume, "storage", "--storage", "NAS_STORAGE")
    for command in (["rescore", run_dir], ["fidelity", run_dir]):  # export, report, dashboard open it as rescore does
        assert_one_line_error(run_nas(*command, env=env), "storage", "--storage")
    assert (sorted(p.name for p in run_dir.iterdir()), (run_dir / "config.json").read_text()) == before  # no new study.db
    # with the URL: fidelity opens the study (and then names its own bad option)
    assert_one_line_error(run_nas("fidelity", run_dir, "--data-fraction", "0", env={"NAS_STORAGE": url}), "data_fraction")
    other = run_nas("search", "--name", "team", "--runs-dir", tmp_path, "--storage", "sqlite:///" + str(tmp_path / "x.db"), env=env)
    assert_one_line_error(other, "storage", "not this run's storage")


# ---- separate machines on one host ---------------------------------------------------------------
def _machine(command: list[str], env: dict[str, str], log, netns: str) -> subprocess.Popen:
    """``command`` on a "separate machine": network namespace ``netns`` (its own address, its own 127.0.0.1) and its
    own mount namespace with a fresh tmpfs on /tmp and its own HOME there.

    It sees neither the driver's run directory (under /tmp) nor anything the driver's host keeps in /tmp or HOME,
    and reaches the head only at its address on the private network; it shares the installed code, as a
    teammate's machine would have its own copy.
    """
    script = 'mount -t tmpfs -o mode=1777 tmpfs /tmp && mkdir -p /tmp/home && HOME=/tmp/home exec "$@"'
    return subprocess.Popen(["ip", "netns", "exec", netns, "unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                             "machine", *command], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.slow
def test_sweep_on_a_head_without_cpus_and_two_separate_worker_machines(tmp_path, tiny_space):
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the separate-machines harness is required in CI, which runs as root (unshare --mount, ip netns)")
        pytest.skip("unshare --mount and ip netns need root")
    with private_network(2) as (host, machines):
        _sweep_on_separate_machines(tmp_path, tiny_space, host, machines)


def _sweep_on_separate_machines(tmp_path, tiny_space: list[str], host: str, machines: list[tuple[str, str]]) -> None:
    ray_tmp = tempfile.mkdtemp(prefix="nas-ray-")
    port = free_port()
    address = f"{host}:{port}"  # the head listens on the private network, as a cluster's head on its LAN
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "HOME": str(tmp_path)}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    common = ["--temp-dir", ray_tmp, "--block", "--disable-usage-stats", "--dashboard-agent-listen-port", "0"]
    procs: list[subprocess.Popen] = []
    known: set[int] = set()
    logs = [tmp_path / f"machine-{i}.log" for i in (1, 2)]
    try:
        procs.append(subprocess.Popen([*RAY, "start", "--head", "--node-ip-address", host, "--port", str(port),
                                       "--include-dashboard", "false", "--num-cpus", "0", *common],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        head = alive_nodes(address, env, 1)
        assert len(head) == 1
        for log_path, (netns, ip) in zip(logs, machines):
            with log_path.open("w") as log:
                procs.append(_machine([*RAY, "start", "--address", address, "--node-ip-address", ip, "--num-cpus", "1", *common],
                                      env, log, netns))
        nodes = alive_nodes(address, env, 3, timeout=180)
        assert len(nodes) == 3, [p.read_text()[-1500:] for p in logs]
        workers = set(nodes) - set(head)
        run_dir = tmp_path / "runs" / "machines"
        result = run_nas("search", "--name", "machines", "--runs-dir", tmp_path / "runs", "--address", address,
                         "--cpus-per-trial", "1", *TINY_SEARCH, "--json",
                         env={k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "HOME")})
        assert result.code == 0, result.err
        assert result.json()["complete"] == 2 and result.json()["failed"] == 0
        trials = open_run(run_dir).study.get_trials(deepcopy=False)
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials), [t.user_attrs.get("failure_reason") for t in trials]
        assert {t.user_attrs["ray_node_id"] for t in trials} == workers  # trials on both machines, none on the head
        assert not (run_dir / "reference_times.json").exists()  # the workers cache on their own machines
        _lose_a_machine_mid_trial(tmp_path, address, env, procs, workers, tiny_space)
        known = descendants({p.pid for p in procs})
    finally:
        known |= descendants({p.pid for p in procs})
        stop_nodes(procs, known)
        shutil.rmtree(ray_tmp, ignore_errors=True)


# ---- data by content; the backbone answers its sampled twins ------------------------------------------
def _npz(path, labels_offset: int = 0) -> str:
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 255, (40, 8, 8), dtype=np.uint8), labels=(np.arange(40) + labels_offset) % 2)
    return str(path)


def test_data_is_identified_by_content_not_path(tmp_path):
    first = _npz(tmp_path / "mine.npz")
    run_sweep(_config(tmp_path / "runs", n_trials=2, data=first), evaluate=synthetic)
    copy = tmp_path / "elsewhere" / "teammate.npz"
    copy.parent.mkdir()
    copy.write_bytes((tmp_path / "mine.npz").read_bytes())
    joined = run_sweep(_config(tmp_path / "runs", n_trials=2, data=str(copy)), evaluate=synthetic)  # same data, other path
    assert joined["complete"] == 2
    _npz(tmp_path / "mine.npz", labels_offset=1)  # other data at the same path
    before = (tmp_path / "runs" / "team" / "config.json").read_text()
    with pytest.raises(InputError, match=r"another data\b"):
        run_sweep(_config(tmp_path / "runs", n_trials=2, data=first), evaluate=synthetic)
    assert (tmp_path / "runs" / "team" / "config.json").read_text() == before


TWIN_BACKBONE = tiny_backbone(mbconv_se_ratio=0.25)  # MBConv with the space's SE: sampled twins exist
TWO_WITH_BACKBONE = {"layers_delta": 0, "defaults": {"kernels": [3], "expansions": [2]},
                     "stages": {1: {"operators": ["fused_mbconv"], "expansions": [1, 2]}, 2: {"operators": ["mbconv"]}}}


def test_a_sampled_twin_of_the_backbone_is_answered_from_the_backbone_trial(tmp_path):
    (tmp_path / "tiny.json").write_text(json.dumps(TWIN_BACKBONE))
    calls = []

    def counted(spec: NetworkSpec, train: TrainConfig) -> dict:
        calls.append(spec.key())
        return synthetic(spec, train)

    summary = run_sweep(_config(tmp_path, n_trials=6, backbone=str(tmp_path / "tiny.json"), space=TWO_WITH_BACKBONE), evaluate=counted)
    assert summary["complete"] == 6
    assert len(calls) == len(set(calls)) == 2  # the backbone and the one other architecture, each evaluated once
    study = open_run(tmp_path / "team").study
    trials, backbone = study.get_trials(deepcopy=False), backbone_trial(study)
    twins = [t for t in trials if t.user_attrs.get("spec_key") == backbone.user_attrs["spec_key"] and t.number != backbone.number]
    assert twins and all(t.user_attrs["reused_from"] == backbone.number and "role" not in t.user_attrs for t in twins)


# ---- storage calls through a busy database -----------------------------------------------------------
def _locked_study(tmp_path: Path, name: str):
    """A study on a retrying SQLite storage whose own wait is short, its retry notes, and another connection holding
    the database (as another process's long write does): (study, storage, notes, blocker)."""
    import sqlite3

    from runners.study import RetryingStorage

    storage = RetryingStorage(f"sqlite:///{tmp_path / name}.db", engine_kwargs={"connect_args": {"timeout": 0.1}})
    study = optuna.create_study(storage=storage, study_name=name)
    notes: list[str] = []
    storage.on_retry = notes.append
    blocker = sqlite3.connect(tmp_path / f"{name}.db", isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")
    return study, storage, notes, blocker


def test_storage_calls_wait_out_a_locked_sqlite_database_within_a_bound(tmp_path):
    import threading

    from runners.study import StorageLost

    study, storage, notes, blocker = _locked_study(tmp_path, "busy")
    storage.retry_seconds = 30.0
    threading.Timer(1.5, blocker.rollback).start()
    study.set_user_attr("written", 1)  # retried until the lock goes, then done once
    assert study.user_attrs["written"] == 1 and len(notes) == 1 and "retrying" in notes[0]
    blocker.execute("BEGIN EXCLUSIVE")
    storage.retry_seconds = 1.0
    with pytest.raises(StorageLost, match="storage unreachable for 1 s"):
        study.set_user_attr("written", 2)
    blocker.rollback()


def test_a_storage_blip_mended_by_one_retry_says_nothing(tmp_path):
    from sqlalchemy import event

    study, storage, notes, blocker = _locked_study(tmp_path, "blip")
    failed: list[str] = []

    def release_after_the_first_failure(context) -> None:  # the blip lasts exactly one failed attempt
        failed.append(str(context.original_exception))
        if blocker.in_transaction:
            blocker.rollback()

    event.listen(storage.engine, "handle_error", release_after_the_first_failure)
    study.set_user_attr("written", 1)
    assert study.user_attrs["written"] == 1 and len(failed) == 1 and "locked" in failed[0]
    assert notes == []  # one failure that the first retry mends is not an outage: nothing on the user's screen


def _lose_a_machine_mid_trial(tmp_path, address: str, env: dict[str, str], procs: list[subprocess.Popen], workers: set[str],
                              tiny_space: list[str]) -> None:
    """A second sweep; while both machines train, the second machine's Ray processes are killed: its trial is queued again."""
    import signal
    import sys
    import time

    from tests.conftest import ROOT

    run_env = {**{k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"},
               **{k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "HOME")}}
    args = [*tiny_space, "--trials", "2", "--concurrent", "2", "--sampler", "random", "--quiet",
            "--epochs", "30"]  # long enough to be in flight on both machines
    driver = subprocess.Popen([sys.executable, "-m", "runners.cli", "search", "--name", "lost", "--runs-dir", str(tmp_path / "runs"),
                               "--address", address, "--cpus-per-trial", "1", *args, "--json"], cwd=ROOT, env=run_env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = f"sqlite:///{tmp_path / 'runs' / 'lost' / 'study.db'}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            running = [t for t in optuna.load_study(study_name="lost", storage=db).get_trials(deepcopy=False)
                       if t.state == optuna.trial.TrialState.RUNNING and "spec_key" in t.user_attrs]
        except Exception:
            running = []
        if len(running) == 2:
            break
        time.sleep(0.5)
    time.sleep(3)  # both training, one on each machine
    victim = procs[-1]
    for pid in descendants({victim.pid}):  # the machine is gone: every Ray process of it, at once
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    out, err = driver.communicate(timeout=600)
    assert driver.returncode == 0, err
    (tmp_path / "lost-stdout.txt").write_text(out)
    assert json.loads(out[out.index("{"):])["complete"] == 2, out[:300]  # Ray may print a line of its own before the JSON
    trials = open_run(tmp_path / "runs" / "lost").study.get_trials(deepcopy=False)
    lost = [t for t in trials if "worker_lost" in t.user_attrs]
    assert len(lost) == 1 and lost[0].user_attrs["failure_reason"].startswith("interrupted"), err
    retry = [t for t in trials if t.user_attrs.get("retry_of") == lost[0].number]
    assert len(retry) == 1 and retry[0].state == optuna.trial.TrialState.COMPLETE
    assert retry[0].user_attrs["ray_node_id"] in workers
