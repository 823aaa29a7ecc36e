"""Re-scoring and export on a real finished sweep (no retraining)."""

import json
import shutil

import optuna
import pytest

from nas.io import load_spec
from nas.model import build, count_params
from runners.analysis.results import rescore
from runners.study import open_run
from tests.conftest import assert_one_line_error, run_nas


def test_rescore_with_own_exponents_reproduces_ranking(finished_sweep):
    run = open_run(finished_sweep)
    stored = sorted(run.finished(), key=lambda t: (-t.value, t.number))
    rows = rescore(run, "paper", w=-0.07, v=-0.05)
    assert [r["number"] for r in rows] == [t.number for t in stored]
    assert all(r["rank_change"] == 0 and r["reward"] == pytest.approx(r["old_reward"], rel=1e-12) for r in rows)
    result = run_nas("rescore", finished_sweep, "--w", "-0.07", "--v", "-0.05", "--json")
    assert [t["number"] for t in result.json()["trials"]] == [t.number for t in stored]


def test_rescore_other_exponents_and_rewards(finished_sweep):
    run = open_run(finished_sweep)
    acc_rows = rescore(run, "accuracy")
    assert [r["reward"] for r in acc_rows] == sorted((r["accuracy"] for r in acc_rows), reverse=True)
    heavy = rescore(run, "paper", w=-3.0, v=0.0)
    assert [r["reward"] for r in heavy] == sorted([r["reward"] for r in heavy], reverse=True)
    text = run_nas("rescore", finished_sweep, "--reward", "constrained", "--target", "1.0")
    assert text.code == 0 and "change" in text.out


@pytest.mark.parametrize(
    "args, needle",
    [(["--reward", "speed"], "speed"), (["--w", "abc"], "--w"), (["--reward", "accuracy", "--w", "1"], "unknown option")],
)
def test_rescore_bad_arguments(finished_sweep, args, needle):
    assert_one_line_error(run_nas("rescore", finished_sweep, *args), needle)


def test_rescore_missing_run_dir(tmp_path):
    assert_one_line_error(run_nas("rescore", tmp_path / "nope"), "does not exist")


def test_export_then_inspect_round_trip(finished_sweep, tmp_path):
    out = tmp_path / "arch.json"
    assert run_nas("export", finished_sweep, "-o", out).code == 0
    data = json.loads(out.read_text())
    prov = data["provenance"]
    for key in ("study", "trial", "accuracy", "normalized_step_time", "step_time_ms", "params", "reward", "reward_config",
                "data", "device", "torch_version", "exported_at"):
        assert key in prov, key
    run = open_run(finished_sweep)
    stored = run.trial(prov["trial"]).user_attrs["params"]
    assert run_nas("inspect", out, "--json").json()["params"] == stored
    assert count_params(build(load_spec(str(out)))) == stored
    # refuses to overwrite without --force, then overwrites with it
    before = out.read_text()
    assert_one_line_error(run_nas("export", finished_sweep, "-o", out), "--force")
    assert out.read_text() == before
    assert run_nas("export", finished_sweep, "-o", out, "--force", "--trial", str(prov["trial"])).code == 0


def test_export_pareto_writes_loadable_files(finished_sweep, tmp_path):
    result = run_nas("export", finished_sweep, "--trial", "pareto", "--out-dir", tmp_path / "front", "--json")
    assert result.code == 0, result.err
    for path in result.json()["written"]:
        assert load_spec(path).stages


def test_export_bad_input(finished_sweep, tmp_path, request):
    assert request.node.get_closest_marker("slow")  # conftest marks every user of the Ray-starting fixture slow
    assert_one_line_error(run_nas("export", tmp_path / "missing", "-o", tmp_path / "a.json"), "does not exist")
    assert_one_line_error(run_nas("export", finished_sweep, "--trial", "999", "-o", tmp_path / "a.json"), "999")
    # a failed trial: add one for real to a copy of the session-wide sweep (others read the original), then export it
    shared_trials = len(open_run(finished_sweep).study.trials)
    copy = shutil.copytree(finished_sweep, tmp_path / "copy")
    run = open_run(copy)
    trial = run.study.ask()
    trial.set_user_attr("failure_reason", "RuntimeError: boom")
    run.study.tell(trial, state=optuna.trial.TrialState.FAIL)
    assert_one_line_error(run_nas("export", copy, "--trial", str(trial.number), "-o", tmp_path / "a.json"), "FAIL")
    assert not (tmp_path / "a.json").exists()
    assert len(open_run(finished_sweep).study.trials) == shared_trials
