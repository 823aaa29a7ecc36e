"""Several `nas search` drivers on one study (SQLite and PostgreSQL): one sweep, no double training, kills recovered."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest

from nas.record import BACKBONE_ROLE, INTERRUPTED
from runners.config import resolve_config
from runners.study import backbone_numbers, rdb_storage
from runners.sweep.run import run_sweep
from tests.conftest import ROOT, assert_one_line_error, run_nas

pytestmark = pytest.mark.slow
TINY = ["--epochs", "1", "--image-size", "16", "--timing-image-size", "16", "--timing-batch-size", "4", "--timing-steps", "3",
        "--sampler", "random", "--concurrent", "1", "--quiet"]
# two architectures only: several drivers must propose the same ones, and must not train them twice
TWO_ARCHS = "layers_delta: 0\ndefaults: {operators: [mbconv], kernels: [3], expansions: [4]}\nstages: {1: {operators: [fused_mbconv, mbconv]}}\n"
LIVENESS = "heartbeat_interval: 1\ngrace_period: 4\n"  # seconds: a killed driver's trials go stale quickly
Finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    return request.getfixturevalue("postgres").new_database()


def _driver(tmp_path: Path, runs: str, storage: str, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "runners.cli", "search", "--name", "team", "--runs-dir", runs, "--storage", storage,
            "--config", str(tmp_path / "sweep.yaml"), *TINY, *extra, "--json"]
    return subprocess.Popen(args, cwd=tmp_path, env={**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _load(storage: str) -> optuna.Study:
    return optuna.load_study(study_name="team", storage=rdb_storage(storage))


def _assert_one_sweep(study: optuna.Study, n: int) -> None:
    everything = study.get_trials(deepcopy=False)
    yardstick = backbone_numbers(everything)  # the backbone trial (and any retry of it) is extra
    trials = [t for t in everything if t.number not in yardstick]
    finished = [t for t in trials if t.state in Finished]
    assert len(finished) == n, [(t.number, t.state, t.user_attrs.get("failure_reason")) for t in trials]
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    trained = [t.user_attrs["spec_key"] for t in finished if "reused_from" not in t.user_attrs]
    assert len(trained) == len(set(trained)), "an architecture was trained twice"
    for t in finished:
        if "reused_from" in t.user_attrs:
            source = study.trials[t.user_attrs["reused_from"]]
            assert source.user_attrs["spec_key"] == t.user_attrs["spec_key"] and "reused_from" not in source.user_attrs


# together on SQLite, staggered on PostgreSQL: each storage and each start pattern once (suite time)
@pytest.mark.parametrize("storage, stagger", [("sqlite", 0), ("postgresql", 15)], indirect=["storage"])
def test_two_drivers_one_sweep(tmp_path, storage, stagger):
    (tmp_path / "sweep.yaml").write_text(LIVENESS + "space:\n" + "".join(f"  {line}\n" for line in TWO_ARCHS.splitlines()))
    first = _driver(tmp_path, "runs", storage, "--trials", "4")
    time.sleep(stagger)
    second = _driver(tmp_path, str(tmp_path / "runs"), storage, "--trials", "4")  # the same run dir, spelled absolute
    outs = [p.communicate(timeout=900) for p in (first, second)]
    for proc, (out, err) in zip((first, second), outs, strict=True):
        assert proc.returncode == 0, err[-3000:]
        assert "Traceback" not in err and "Error" not in err, err[-3000:]
        json.loads(out)
    study = _load(storage)
    _assert_one_sweep(study, 4)
    if not stagger:  # started together, both take part (a late driver may find the sweep done: it must only not break it)
        assert len({t.user_attrs["driver"] for t in study.trials}) == 2


# PostgreSQL, the team storage; a killed driver on SQLite is recovered in tests/test_sweep.py's resume test
@pytest.mark.parametrize("storage", ["postgresql"], indirect=True)
def test_killed_driver_is_recovered_by_the_other(tmp_path, storage):
    (tmp_path / "sweep.yaml").write_text(LIVENESS)
    victim = _driver(tmp_path, "runs-a", storage, "--trials", "4", "--epochs", "2")
    survivor = None
    try:
        deadline, victim_id = time.monotonic() + 400, None
        while time.monotonic() < deadline and victim_id is None:
            time.sleep(1)
            try:
                running = _load(storage).get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            except KeyError:
                continue
            victim_id = running[0].user_attrs["driver"] if running and "driver" in running[0].user_attrs else None
        assert victim_id is not None, "the first driver never started a trial"
        survivor = _driver(tmp_path, "runs-b", storage, "--trials", "4", "--epochs", "2")
        time.sleep(5)
        os.killpg(victim.pid, signal.SIGKILL)  # the driver and its Ray
        victim.wait()
        out, err = survivor.communicate(timeout=900)
        assert survivor.returncode == 0, err[-3000:]
    finally:
        for proc in (victim, survivor):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    study = _load(storage)
    _assert_one_sweep(study, 4)
    interrupted = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert interrupted and all(t.user_attrs["driver"] == victim_id for t in interrupted)  # only the killed driver's
    assert all(t.user_attrs["failure_reason"] == INTERRUPTED for t in interrupted)
    retries = {t.user_attrs["retry_of"] for t in study.trials if "retry_of" in t.user_attrs}
    assert retries == {t.number for t in interrupted}  # each queued again exactly once
    assert json.loads(out)["recovered"] >= 1


def _synthetic(spec, train):
    return {"status": "ok", "failure_reason": None, "accuracy": 0.9, "normalized_step_time": 1.0, "normalized_params": 1.0,
            "spec": spec.to_dict(), "spec_key": spec.key(), "seed": train.seed}


@pytest.mark.parametrize("extra, needle", [
    (["--reward", "accuracy"], "reward"),
    (["--space", "SPACE"], "space"),
    (["--data", "DATA"], "data"),
    (["--epochs", "2"], "train.epochs"),
])
def test_other_settings_on_the_same_study_are_refused(tmp_path, storage, extra, needle):
    # the study is made by the real driver (instant synthetic evaluation instead of Ray, to stay quick)
    run_sweep(resolve_config(None, {"name": "team", "runs_dir": str(tmp_path / "runs"), "storage": storage, "n_trials": 2,
                                    "sampler": "random", "quiet": True, "train": {"epochs": 1}}), evaluate=_synthetic)
    before = [(t.number, t.state, t.user_attrs, t.params) for t in _load(storage).trials]
    attrs = _load(storage).user_attrs
    (tmp_path / "space.yaml").write_text(TWO_ARCHS)
    data = tmp_path / "tiny.npz"
    np.savez(data, images=np.zeros((20, 8, 8), np.uint8), labels=np.arange(20) % 2)
    extra = [{"SPACE": str(tmp_path / "space.yaml"), "DATA": str(data)}.get(e, e) for e in extra]
    result = run_nas("search", "--name", "team", "--runs-dir", tmp_path / "other", "--storage", storage, "--epochs", "1", *extra)
    assert_one_line_error(result, needle)
    study = _load(storage)
    assert [(t.number, t.state, t.user_attrs, t.params) for t in study.trials] == before
    assert study.user_attrs == attrs
    assert not (tmp_path / "other").exists()


def test_drivers_opening_a_new_study_at_once_queue_one_backbone(storage):
    """The creator queues the yardstick before it stores the settings a loading driver waits for."""
    import threading

    from runners.sweep.settings import ensure_backbone_trial, open_study, search_settings
    from search_spaces import SearchSpace

    space = SearchSpace.from_config({})
    for attempt in range(5):
        config = resolve_config(None, {"name": f"race{attempt}", "sampler": "random"})
        settings = search_settings(config, space.backbone, space)
        barrier, created, errors = threading.Barrier(3), [], []

        def driver(name: str, config=config, settings=settings, barrier=barrier, created=created, errors=errors) -> None:
            barrier.wait()
            try:
                study, made = open_study(config, rdb_storage(storage), settings, {}, name, space)
                ensure_backbone_trial(study, space)  # as run_sweep does next
                created.append(made)
            except Exception as error:  # reported below with the attempt
                errors.append(error)

        threads = [threading.Thread(target=driver, args=(f"d{i}",)) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors and sorted(created) == [False, False, True], (attempt, errors, created)
        trials = optuna.load_study(study_name=f"race{attempt}", storage=storage).get_trials(deepcopy=False)
        assert [t.user_attrs.get("role") for t in trials] == [BACKBONE_ROLE], attempt
