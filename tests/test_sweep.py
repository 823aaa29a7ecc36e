"""End-to-end sweeps with real Ray, real Optuna (SQLite) and real training on digits."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import optuna
import pytest

from nas.model import build
from nas.record import BACKBONE_ROLE, record_of
from runners.study import open_run, scored_trials, trial_spec
from tests.conftest import ROOT, assert_one_line_error, run_nas

pytestmark = pytest.mark.slow
FAST = ["--epochs", "2", "--image-size", "16", "--timing-image-size", "32", "--timing-batch-size", "8", "--timing-steps", "3"]
Complete = optuna.trial.TrialState.COMPLETE


def test_a_sweep_stores_every_metric_of_every_trial(finished_sweep):
    """The shared sweep (``conftest.finished_sweep``: 5 trials, 2 at a time, after the backbone) as it is stored."""
    run = open_run(finished_sweep)
    scored, every = scored_trials(run.study), run.study.trials
    assert len(scored) == 5 and len(every) == 6 and all(t.state == Complete for t in every)  # + the backbone, 0 FAIL
    for trial in every:
        for key in ("accuracy", "step_time_ms", "normalized_step_time", "params", "normalized_params", "reward", "spec",
                    "spec_key", "curve", "device", "seed", "peak_memory_mb"):
            assert key in trial.user_attrs, key
    for trial in scored:  # the backbone's value is -inf (never the best), its reward in its record
        assert trial.value == pytest.approx(trial.user_attrs["reward"])
    best = max(scored, key=lambda t: t.value)
    out = (finished_sweep.parent / "search.stdout").read_text()
    assert re.search(rf"best trial {best.number}: ", out), out  # the summary names the best trial
    model = build(trial_spec(best))
    assert sum(p.numel() for p in model.parameters()) == best.user_attrs["params"]
    assert len({t.user_attrs["seed"] for t in scored}) == 5


def test_failing_evaluation_is_stored_fail_and_sweep_completes(tmp_path):
    # batch 1 at 16x16 leaves one value per BN channel: BatchNorm raises inside every evaluation
    result = run_nas("search", "--name", "bad", "--runs-dir", tmp_path, "--trials", "2", "--epochs", "1", "--image-size", "16",
                     "--timing-image-size", "16", "--timing-batch-size", "1", "--timing-steps", "3", "--json")
    assert result.code == 1  # nothing completed: a runtime failure, but the sweep ran to its end
    summary = result.json()
    assert summary["failed"] == 2
    trials = open_run(tmp_path / "bad").study.trials
    assert all(t.state == optuna.trial.TrialState.FAIL for t in trials)
    assert all("Expected more than 1 value per channel" in t.user_attrs["failure_reason"] for t in trials)


def test_resume_after_sigkill(tmp_path, tiny_space):
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text("heartbeat_interval: 1\ngrace_period: 3\n")  # the killed driver's trial goes stale after 3 s
    args = [sys.executable, "-m", "runners.cli", "search", "--name", "resume", "--runs-dir", str(tmp_path), "--trials", "5",
            "--concurrent", "1", "--sampler", "random", "--quiet", "--config", str(cfg), *tiny_space,
            "--epochs", "6"]  # the tiny backbone: the resume, not the training, takes the time; trials long enough to be caught running
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    log = tmp_path / "first-driver.err"
    with open(log, "w") as err:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    db = tmp_path / "resume" / "study.db"
    deadline = time.monotonic() + 600  # two trials: seconds on an idle 2-core machine (the tiny backbone has no yardstick trial)
    before = {}
    try:
        while time.monotonic() < deadline:
            time.sleep(1)
            if db.exists():
                try:
                    study = optuna.load_study(study_name="resume", storage=f"sqlite:///{db}")
                except Exception:
                    continue
                done = scored_trials(study)
                running = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
                if len(done) >= 2 and running:
                    before = {t.number: t.user_attrs["finished_at"] for t in done}
                    break
        assert before, f"the sweep did not reach 2 finished trials in time (exit {proc.poll()}): {log.read_text()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)  # the driver only
        proc.wait()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # then Ray's leftovers, so they do not load the machine
        except ProcessLookupError:
            pass
    result = run_nas(*args[3:], "--json", timeout=1500)  # the resumed driver waits out the grace period, then trains 3
    assert result.code == 0, result.err
    run = open_run(tmp_path / "resume")
    trials = run.study.trials
    complete = scored_trials(run.study)
    assert len(complete) == 5
    for number, finished_at in before.items():  # kept, not re-run
        assert run.trial(number).state == Complete and run.trial(number).user_attrs["finished_at"] == finished_at
    interrupted = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert interrupted and all("interrupted" in t.user_attrs["failure_reason"] for t in interrupted)
    retried = [t for t in complete if "retry_of" in t.user_attrs]
    assert {t.user_attrs["retry_of"] for t in retried} == {t.number for t in interrupted}
    assert result.json()["trials_this_run"] == 5 - len(before)
    assert result.json()["recovered"] == len(interrupted)


def test_trial_timeout_cancels_and_sweep_goes_on(tmp_path):
    result = run_nas("search", "--name", "slow", "--runs-dir", tmp_path, "--trials", "2", "--concurrent", "2", "--sampler", "random",
                     "--trial-timeout", "2", *FAST, "--json")
    assert result.code == 1, result.err  # nothing completed: a runtime failure, but the sweep ran to its end
    assert result.json()["failed"] == 2
    trials = open_run(tmp_path / "slow").study.trials  # the backbone yardstick, then the two search trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL] * 3 and trials[0].user_attrs["role"] == BACKBONE_ROLE
    assert all(t.user_attrs["failure_reason"].startswith("timeout") for t in trials)


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--storage", "mongodb://x"], "storage"),
        (["--data", "/no/such/data"], "/no/such/data"),
        (["--sampler", "annealing"], "sampler"),
        (["--reward", "speed"], "speed"),
        (["--trial-timeout", "0"], "trial_timeout"),
    ],
)
def test_bad_flags(tmp_path, extra, needle):
    assert_one_line_error(run_nas("search", "--runs-dir", tmp_path, *extra), needle)


def test_bad_config_key_and_unreachable_address(tmp_path):
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text("n_trials: 2\ncolour: blue\n")
    assert_one_line_error(run_nas("search", "--config", cfg, "--runs-dir", tmp_path), "colour")
    cfg.write_text("n_trials: 2\ntrain:\n  epochs: 1\n  wings: 2\n")
    assert_one_line_error(run_nas("search", "--config", cfg, "--runs-dir", tmp_path), "wings")
    begin = time.monotonic()
    assert_one_line_error(run_nas("search", "--runs-dir", tmp_path, "--address", "192.0.2.1:6379"), "192.0.2.1:6379")
    assert time.monotonic() - begin < 30


def test_config_file_toml(tmp_path):
    from runners.config import resolve_config

    cfg = tmp_path / "sweep.toml"
    cfg.write_text('name = "t"\nn_trials = 3\n[train]\nepochs = 1\n[reward]\nname = "paper"\nw = -0.1\n')
    config = resolve_config(str(cfg), {"n_trials": 5})
    assert config.n_trials == 5 and config.train.epochs == 1 and config.reward == {"name": "paper", "w": -0.1, "v": -0.05}
    assert json.loads(json.dumps(config.to_dict()))["train"]["epochs"] == 1


def test_multi_objective_sweep_and_pareto_front(tmp_path, tiny_space):
    result = run_nas("search", "--name", "multi", "--runs-dir", tmp_path, "--trials", "4", "--concurrent", "2", "--objective", "multi",
                     "--sampler", "nsga2", *tiny_space, "--json")
    assert result.code == 0, result.err
    run = open_run(tmp_path / "multi")
    assert [d.name for d in run.study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    for trial in run.finished():
        a = trial.user_attrs
        assert trial.values == [a["accuracy"], a["normalized_step_time"], a["normalized_params"]]
    from runners.analysis.results import pareto_trials

    front = {t.number for t in pareto_trials(run)}
    assert front and front <= {t.number for t in run.finished()}
    values = {t.number: t.values for t in run.finished()}  # the backbone is no search result: not in the front
    brute = {n for n, v in values.items() if not any(w[0] >= v[0] and w[1] <= v[1] and w[2] <= v[2] and w != v for w in values.values())}
    assert front == brute


def _asha_keeps(value: float, rung: list[float]) -> bool:
    """Successive halving with reduction factor 2, by hand: a value goes on if it is among the top half of its rung
    (all values reported there so far, its own included), and always the best one while fewer than 2 are there."""
    return value >= sorted(rung, reverse=True)[max(1, len(rung) // 2) - 1]


def test_asha_pruner_prunes_per_epoch(tmp_path, tiny_space):
    # one trial at a time, seeded, on one thread: the trials report in trial order with the same values every run, so the
    # pruner's decisions can be replayed from the stored per-epoch values. A is the training likelihood (train.score): the
    # pruner ranks each epoch by it, not by validation accuracy (it did, whatever A the reward used)
    result = run_nas("search", "--name", "asha", "--runs-dir", tmp_path, "--trials", "3", "--concurrent", "1", "--cpus-per-trial", "1",
                     "--pruner", "asha", *tiny_space, "--sampler", "random", "--seed", "0", "--epochs", "3", "--score", "train_likelihood",
                     "--json")
    assert result.code == 0, result.err
    trials = open_run(tmp_path / "asha").study.trials  # the 3 search trials (the tiny backbone is outside its space: no yardstick)
    assert len(trials) == 3 and all(t.intermediate_values for t in trials)  # per-epoch values reached the study from the workers
    for t in trials:  # each epoch's value: A of the curve up to that epoch
        curve = record_of(t).curve
        assert len(curve) == len(t.intermediate_values)
        assert [t.intermediate_values[e] for e in sorted(t.intermediate_values)] == pytest.approx(
            [math.exp(-sum(c["train_loss"] for c in curve[:e]) / e) for e in range(1, len(curve) + 1)]), (t.number, curve)
    rungs: dict[int, list[float]] = {1: [], 2: []}  # rungs at epochs 1 and 2 (min_resource 1, reduction factor 2)
    expected = []
    for t in trials:
        state = Complete
        for epoch in (1, 2):
            value = t.intermediate_values[epoch]
            rungs[epoch].append(value)
            if not _asha_keeps(value, rungs[epoch]):
                state = optuna.trial.TrialState.PRUNED
                break
        expected.append((t.number, state, epoch if state != Complete else 3))
    assert [(t.number, t.state, sorted(t.intermediate_values)[-1]) for t in trials] == expected, \
        [(t.number, t.intermediate_values) for t in trials]
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, [(t.number, t.intermediate_values) for t in trials]  # the sweep is designed to prune: it did
    assert all(t.user_attrs["status"] == "pruned" and t.user_attrs["epochs_run"] == len(t.intermediate_values) < 3 for t in pruned)
    assert result.json()["pruned"] == len(pruned)


def test_learning_curves_are_a_so_far_for_every_score():
    """Without a pruner the driver stores the curve after the trial: the same values the pruner would have seen."""
    from runners.sweep.driver import report_curve

    curve = [{"epoch": 1, "val_accuracy": 0.5, "val_loss": 1.2, "train_loss": 1.5},
             {"epoch": 2, "val_accuracy": 0.4, "val_loss": 1.1, "train_loss": 1.0}]
    expected = {"accuracy": [0.5, 0.4], "best_accuracy": [0.5, 0.5], "train_likelihood": [math.exp(-1.5), math.exp(-1.25)]}
    study = optuna.create_study(direction="maximize")
    for score, values in expected.items():
        trial = study.ask()
        report_curve(trial, curve, score)
        study.tell(trial, 0.0)
        assert [study.trials[-1].intermediate_values[e] for e in (1, 2)] == pytest.approx(values), score


@pytest.mark.parametrize("cores, layout, one_cpu_trials", [
    (1, (1, 1.0), 1), (2, (1, 2.0), 2), (3, (1, 3.0), 3), (4, (2, 2.0), 4), (8, (4, 2.0), 4), (16, (4, 4.0), 4), (64, (4, 16.0), 4),
])
def test_default_layout_follows_the_machine(monkeypatch, cores, layout, one_cpu_trials):
    """The README's layout, written out: up to 4 trials of at least 2 threads, the cores split evenly (2 cores: 1 x 2; 8: 4 x 2;
    16: 4 x 4); a sweep config without a layout gets the one of the machine it is resolved on."""
    import os

    from runners.config import default_layout, resolve_config

    assert default_layout(cores) == layout
    monkeypatch.setattr(os, "cpu_count", lambda: cores)  # this machine has ``cores`` cores
    config = resolve_config(None, {"name": "layout"})
    assert (config.max_concurrent, config.cpus_per_trial) == layout
    assert resolve_config(None, {"name": "layout", "cpus_per_trial": 1.0}).max_concurrent == one_cpu_trials  # 1-thread trials, at most 4


def test_default_layout_keeps_what_is_given():
    from runners.config import default_layout

    assert default_layout(2, cpus_per_trial=1) == (2, 1) and default_layout(2, cpus_per_trial=2) == (1, 2)
    assert default_layout(8, max_concurrent=2) == (2, 4.0) and default_layout(16, max_concurrent=3) == (3, 5.0)
    assert default_layout(64, gpus_per_trial=0.5, gpus=8) == (16, 4.0)  # GPU: one trial per half GPU, the cores split among them
