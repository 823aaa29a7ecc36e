"""Settings every driver of a study shares, and where a run directory's study lives (no Ray: in-process drivers)."""

from __future__ import annotations

import json
import random

from nas.spec import NetworkSpec
from nas.train import TrainConfig
from runners.config import resolve_config
from runners.sweep import run_sweep
from tests.conftest import assert_one_line_error, run_nas


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
    second = run_sweep(_config(tmp_path, n_trials=7, heartbeat_interval=1, grace_period=3), evaluate=synthetic)
    assert second["complete"] == 3 and second["trials_this_run"] == 0  # one N for the sweep: the study's
    line = [x for x in capsys.readouterr().err.splitlines() if "adopted from the study" in x]
    assert len(line) == 1
    for text in ("n_trials=3 (not 7)", "heartbeat_interval=2 (not 1)", "grace_period=10 (not 3)", "max_retries=2 (not 1)",
                 "trial_timeout=99 (not 21600)"):
        assert text in line[0], line
    stored = json.loads((tmp_path / "team" / "config.json").read_text())
    assert (stored["n_trials"], stored["grace_period"], stored["heartbeat_interval"]) == (3, 10, 2)


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
