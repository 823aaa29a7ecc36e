"""The dashboard in a real headless Chromium, and the offline HTML report."""

import base64
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from runners.analysis.results import best_trial
from runners.study import open_run
from tests.conftest import ROOT, assert_one_line_error, run_nas

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            # optuna-dashboard answers 500 to requests without Accept-Encoding (FINDINGS.md)
            with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept-Encoding": "gzip"}), timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer")


SCREENS = os.environ.get("NAS_SCREENSHOTS")  # a directory to keep the screenshots in (besides tmp_path)


def _shot(page, tmp_path, name: str) -> None:
    page.wait_for_timeout(1500)  # plotly draws after the data arrives
    for folder in filter(None, (str(tmp_path), SCREENS)):
        os.makedirs(folder, exist_ok=True)
        page.screenshot(path=os.path.join(folder, f"{name}.png"), full_page=False)


def test_dashboard_in_chromium(finished_sweep, tmp_path):
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI") == "true":
            pytest.fail("CI must install Debian's chromium (see .ci/run)")
        pytest.skip("Debian's chromium is not installed")
    from playwright.sync_api import sync_playwright

    run = open_run(finished_sweep)
    n_trials, best = len(run.study.trials), best_trial(run)
    from runners.study import backbone_trial

    base = backbone_trial(run.study)
    assert run.study.best_trial.number != base.number  # optuna's (and so the dashboard's) best is never the backbone
    assert base.value == float("-inf") and base.user_attrs["reward"] > 0
    for trial in run.study.trials:  # learning curves for every trained trial, without a pruner
        if trial.state.name == "COMPLETE":
            assert trial.intermediate_values == {p["epoch"]: p["val_accuracy"] for p in trial.user_attrs["curve"]}
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "runners.cli", "dashboard", str(finished_sweep), "--port", str(port)],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_http(f"http://127.0.0.1:{port}/dashboard")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/dashboard/studies/{run.study._study_id}/trials")
            page.get_by_text(f"{n_trials} Trials").wait_for(timeout=30_000)
            page.get_by_text(f"Trial {best.number}", exact=True).first.click()
            note = page.get_by_text(f"Trial {best.number}: reward")
            note.wait_for(timeout=30_000)
            body = page.inner_text("body")
            assert "Stage table" in body
            first = best.user_attrs["spec"]["stages"][0]
            assert re.search(rf"1\s+{first['operator']}\s+{first['layers']}\s+{first['kernel']}\s+{first['expansion']}", body)
            _shot(page, tmp_path, "dashboard-trial-best")
            # the backbone's note says what it is
            page.get_by_text(f"Trial {base.number}", exact=True).first.click()
            page.get_by_text(f"Backbone yardstick (trial {base.number}): reward").wait_for(timeout=30_000)
            assert "never the study's best" in page.inner_text("body")
            _shot(page, tmp_path, "dashboard-trial-backbone")
            # the study page carries the NAS study note with the best spec and the Pareto front
            page.goto(f"http://127.0.0.1:{port}/dashboard/studies/{run.study._study_id}/note")
            page.get_by_text("Pareto front").first.wait_for(timeout=30_000)
            page.get_by_text("Backbone yardstick").first.wait_for(timeout=30_000)
            assert "vs backbone (trial 0)" in page.inner_text("body")
            _shot(page, tmp_path, "dashboard-study-note")
            # the driver's custom figures (save_plotly_graph_object), drawn by plotly.js on the study page
            page.goto(f"http://127.0.0.1:{port}/dashboard/studies/{run.study._study_id}")
            for graph_id, title in (("nas-summary", "NAS summary"), ("nas-a-vs-s", "A (validation accuracy) vs training step time S"),
                                    ("nas-reward", "reward over trials"), ("nas-parallel", "A, S, P and reward"),
                                    ("nas-choices", "choices per stage")):
                page.locator(f'[id="user-defined-plot:{graph_id}"] .main-svg').first.wait_for(timeout=30_000)
                assert title in page.locator(f'[id="user-defined-plot:{graph_id}"]').inner_text()
            assert page.locator('[id="user-defined-plot:nas-a-vs-s"] .scatterlayer .point').count() == len(run.finished()) + 1
            # the first screen answers "did the search find anything?" and names the best trial, never the backbone
            summary = page.locator('[id="user-defined-plot:nas-summary"]').inner_text()
            assert re.search(rf"backbone\s*\(trial {base.number}\)", summary) and ("no trial beat the backbone" in summary or "beats the backbone" in summary)
            body = page.inner_text("body")
            assert "Best Trial" not in body or f"Trial {base.number}\n" not in body.split("Best Trial", 1)[1][:40]
            _shot(page, tmp_path, "dashboard-study")
            # A, S, P are axes of the dashboard's own plots: its history plot's y axis offers them (user attributes;
            # optuna-dashboard 0.21 has no trial table page, and a single-objective study has one metric name)
            page.get_by_role("combobox").first.click()
            options = [o.inner_text() for o in page.get_by_role("option").all()]
            for attribute in ("accuracy", "normalized_step_time", "normalized_params", "reward"):
                assert f"User Attribute {attribute}" in options, options
            page.get_by_role("option", name="User Attribute accuracy", exact=True).click()
            _shot(page, tmp_path, "dashboard-history-accuracy")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_dashboard_binds_localhost_by_default():
    from runners.cli import make_parser

    assert make_parser().parse_args(["dashboard", "x"]).host == "127.0.0.1"


def test_report_is_self_contained(finished_sweep, tmp_path):
    out = tmp_path / "report.html"
    result = run_nas("report", finished_sweep, "-o", out)
    assert result.code == 0, result.err
    page = out.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3  # reward, Pareto, learning curves (choices per stage need 50 scored trials)
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "best-so-far line" in page and "Pareto front" in page and "top 10%" in page
    assert "5 complete, 0 pruned, 0 failed, and the backbone yardstick" in page  # as `nas search` counts
    assert "paper: A * S^w * P^v with w=-0.07, v=-0.05" in page  # the reward as its formula
    assert "choices-skipped" in page and "Learning curves" in page and "vs backbone (trial 0)" in page
    assert "<table id='top10'>" in page
    run = open_run(finished_sweep)
    assert page.count("<tr><td>") == min(10, len(run.finished()))
    assert not re.search(r'(src|href)="https?://', page)  # nothing to fetch: works offline


def test_report_missing_run_dir(tmp_path):
    assert_one_line_error(run_nas("report", tmp_path / "none"), "does not exist")


def test_chromium_available_in_ci():
    if os.environ.get("CI") == "true":
        assert shutil.which("chromium") or os.path.exists(CHROMIUM)


def test_a_is_named_after_the_score_the_sweep_chose():
    """With ``train.score: train_likelihood``, A is a training likelihood: the trial notes, figures and report call it that."""
    import optuna

    from nas.record import TrialRecord
    from nas.scores import a_label
    from nas.zoo import get
    from runners.analysis.dashboard import trial_note
    from runners.analysis.figures import figure_a_vs_s, figure_parallel
    from runners.study import study_score

    study = optuna.create_study()
    assert study_score(study) == "accuracy"  # a study stored before train.score existed
    study.set_user_attr("search", {"train": {"score": "train_likelihood"}})
    label = a_label(study_score(study))
    assert label == "A (train likelihood, exp(-mean training loss))"
    record = TrialRecord(status="ok", spec=get("efficientnetv2-b0", 10).to_dict(), accuracy=0.14, normalized_step_time=1.0, normalized_params=1.0, reward=0.14,
                         step_time_ms=10.0, params=1000)
    note = trial_note(1, record, {"name": "accuracy"}, label=label)
    assert f"| {label} |" in note and "validation accuracy" not in note
    assert figure_a_vs_s([], None, label).layout.yaxis.title.text == label
    assert figure_parallel([], None, label).data[0].dimensions[0].label == label

