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

from runners.results import best_trial
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


def test_dashboard_in_chromium(finished_sweep):
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI") == "true":
            pytest.fail("CI must install Debian's chromium (see .ci/run)")
        pytest.skip("Debian's chromium is not installed")
    from playwright.sync_api import sync_playwright

    run = open_run(finished_sweep)
    n_trials, best = len(run.study.trials), best_trial(run)
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "runners.cli", "dashboard", str(finished_sweep), "--port", str(port)],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_http(f"http://127.0.0.1:{port}/dashboard")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/dashboard/studies/{run.study._study_id}/trials")
            page.get_by_text(f"{n_trials} Trials").wait_for(timeout=30_000)
            page.get_by_text(f"Trial {best.number}", exact=True).first.click()
            note = page.get_by_text(f"Trial {best.number}: reward")
            note.wait_for(timeout=30_000)
            body = page.inner_text("body")
            assert "Stage table" in body
            first = best.user_attrs["spec"]["stages"][0]
            assert re.search(rf"1\s+{first['operator']}\s+{first['layers']}\s+{first['kernel']}\s+{first['expansion']}", body)
            # the study page carries the NAS study note with the best spec and the Pareto front
            page.goto(f"http://127.0.0.1:{port}/dashboard/studies/{run.study._study_id}/note")
            page.get_by_text("Pareto front").first.wait_for(timeout=30_000)
            page.get_by_text("Backbone yardstick").first.wait_for(timeout=30_000)
            # the driver's custom figures (save_plotly_graph_object), drawn by plotly.js on the study page
            page.goto(f"http://127.0.0.1:{port}/dashboard/studies/{run.study._study_id}")
            for graph_id, title in (("nas-a-vs-s", "accuracy A vs training step time S"), ("nas-reward", "reward over trials"),
                                    ("nas-choices", "choices per stage")):
                page.locator(f'[id="user-defined-plot:{graph_id}"] .main-svg').first.wait_for(timeout=30_000)
                assert title in page.locator(f'[id="user-defined-plot:{graph_id}"]').inner_text()
            assert page.locator('[id="user-defined-plot:nas-a-vs-s"] .scatterlayer .point').count() == len(run.finished()) + 1
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
    assert len(images) == 3  # reward, Pareto, choices per stage
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "best-so-far line" in page and "Pareto front" in page and "top 10%" in page
    assert "<table id='top10'>" in page
    run = open_run(finished_sweep)
    assert page.count("<tr><td>") == min(10, len(run.finished()))
    assert not re.search(r'(src|href)="https?://', page)  # nothing to fetch: works offline


def test_report_missing_run_dir(tmp_path):
    assert_one_line_error(run_nas("report", tmp_path / "none"), "does not exist")


def test_chromium_available_in_ci():
    if os.environ.get("CI") == "true":
        assert shutil.which("chromium") or os.path.exists(CHROMIUM)
