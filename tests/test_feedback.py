"""What a user sees: progress lines of a real sweep, the backbone comparison up front, and the traps closed."""

from __future__ import annotations

import json
import re

import pytest

from runners.cli import make_parser
from runners.cli.train import train_config
from tests.conftest import assert_one_line_error, run_nas


# ---- a real `nas search` run's stderr (the shared sweep, run without --quiet) ----------------------
def test_progress_lines_of_a_real_sweep(finished_sweep):
    err = (finished_sweep.parent / "search.stderr").read_text()
    lines = err.splitlines()
    starts = [line for line in lines if re.match(r"(backbone \(trial \d+\)|trial \d+) started: [FM]\d", line)]
    assert starts and starts[0].startswith("backbone (trial 0) started:"), err  # the backbone first
    assert "on this machine" in starts[0]
    assert len(starts) == 6, err  # the backbone and 5 trials (random sampler, no duplicates at this seed)
    ends = [line for line in lines if re.match(r"(backbone \(trial \d+\)|trial \d+) finished in \d+ s", line)]
    assert len(ends) == 6, err
    assert all(re.search(r"A \d\.\d{4}, S \d+\.\d{3}, P \d+\.\d{3}, reward \d\.\d{4}|failed:|pruned", e) for e in ends), ends
    assert any(re.match(r"(backbone \(trial 0\)|trial \d+): epoch 1/1", line) for line in lines), err  # in-trial progress
    summaries = [line for line in lines if line.startswith("[")]
    assert summaries and summaries[-1].startswith("[5/5 done, 0 running")
    assert all("stem" not in line and len(line) < 200 for line in summaries), summaries  # no spec key at the end
    assert all(re.search(r"ETA (\d+s|\?)$", line) for line in summaries)
    assert re.search(r"vs backbone \d\.\d{4} \([+-]\d\.\d{4}\)", summaries[-1])
    # a trial ran whenever one was in flight: the first summary line counts the trial still running
    assert re.match(r"\[1/5 done, [1-9] running", summaries[0]), summaries[0]


def test_final_summary_compares_with_the_backbone(finished_sweep):
    out = (finished_sweep.parent / "search.stdout").read_text()
    assert re.search(r"best trial \d+: A \d\.\d{4}, S [\d.]+, P [\d.]+, reward \d\.\d{4} vs backbone \(trial 0\): A", out), out
    assert "it does not beat the backbone" in out or "it beats the backbone" in out


def test_export_says_how_it_compares(finished_sweep, tmp_path):
    result = run_nas("export", finished_sweep, "-o", tmp_path / "arch.json", "--json")
    assert result.code == 0, result.err
    data = result.json()
    assert data["against_backbone"][0]["backbone_trial"] == 0
    beats = data["beats_backbone"][0]
    assert beats == data["against_backbone"][0]["beats_reward"]
    assert ("it does not beat the backbone" in result.err) == (not beats), result.err
    assert "vs backbone (trial 0)" in result.err


def test_pareto_export_needs_an_explicit_directory(finished_sweep, tmp_path):
    target = tmp_path / "pareto.json"
    assert_one_line_error(run_nas("export", finished_sweep, "--trial", "pareto", "-o", target), "-o", "pareto.json/", "--out-dir")
    assert not target.exists()  # no directory named pareto.json
    result = run_nas("export", finished_sweep, "--trial", "pareto", "--out-dir", tmp_path / "front")
    assert result.code == 0, result.err
    assert sorted(p.name for p in (tmp_path / "front").iterdir())
    result = run_nas("export", finished_sweep, "--trial", "pareto", "-o", f"{tmp_path / 'front2'}/")
    assert result.code == 0 and (tmp_path / "front2").is_dir(), result.err


def test_inspect_of_an_export_reports_the_searched_sizes(finished_sweep, tmp_path):
    path = tmp_path / "arch.json"
    assert run_nas("export", finished_sweep, "-o", path).code == 0
    result = run_nas("inspect", path, "--json")
    assert result.code == 0, result.err
    data = result.json()
    assert data["searched"]["trained_image_size"] == 16 and data["searched"]["timed_image_size"] == 32
    assert data["image_size"] == 16  # MACs at the size it was trained at, not the spec's 224
    text = run_nas("inspect", path).out
    assert "searched and trained at 16 px" in text and "step time at 32 px" in text and "MACs @16" in text


# ---- traps (no training) ------------------------------------------------------------------------------
def test_train_needs_data():
    assert_one_line_error(run_nas("train", "efficientnetv2-b0"), "--data")


def test_default_stages_fit_the_epochs():
    parser = make_parser()
    assert train_config(parser.parse_args(["train", "x", "--data", "digits", "--epochs", "1"])).stages == 1
    assert train_config(parser.parse_args(["train", "x", "--data", "digits", "--epochs", "1", "--member", "s"])).stages == 1
    assert train_config(parser.parse_args(["train", "x", "--data", "digits"])).stages == 2


def test_every_flag_has_help_and_search_lists_all_samplers():
    from search_spaces import SAMPLERS

    parser = make_parser()
    sub = next(a for a in parser._actions if a.choices and "search" in a.choices)  # argparse's subparsers action
    for name, command in sub.choices.items():
        for action in command._actions:
            assert action.help, (name, action.dest)
    search_help = sub.choices["search"].format_help()
    for sampler in SAMPLERS:
        assert re.search(rf"\b{sampler}\b", search_help), sampler
    train_help = " ".join(sub.choices["train"].format_help().split())
    assert "(default 12)" in train_help and "(default 2," in train_help  # ProgressiveConfig's real defaults


def test_data_path_error_suggests_the_folder_inside(tmp_path):
    from nas.data import load_dataset
    from nas.errors import InputError

    inner = tmp_path / "cifar10" / "cifar-10-batches-py"
    inner.mkdir(parents=True)
    (inner / "data_batch_1").write_bytes(b"")
    (inner / "readme.html").write_text("x")
    with pytest.raises(InputError, match="cifar-10-batches-py"):
        load_dataset(str(tmp_path / "cifar10"))
    result = run_nas("evaluate", "efficientnetv2-b0", "--data", tmp_path / "cifar10", "--epochs", "1")
    assert_one_line_error(result, f"--data {inner}")


def test_progress_line_formats():
    import io

    from nas.record import TrialRecord
    from runners.sweep.progress import Progress

    stream = io.StringIO()
    progress = Progress(3, quiet=False, stream=stream)
    progress.trial_started(0, json.loads(json.dumps({"stages": [{"operator": "mbconv", "layers": 2, "kernel": 3, "expansion": 4}]})),
                           "on this machine", backbone=True)
    progress.trial_finished(0, TrialRecord(status="ok", accuracy=0.9, normalized_step_time=1.0, normalized_params=1.0, reward=0.9),
                            backbone=True)
    progress.update(1, 0, 0, 0, (0.85, 1, "stem32 ..."))
    text = stream.getvalue()
    assert "backbone (trial 0) started: M2k3e4 on this machine" in text
    assert "no trial beat the backbone" in text and "ETA" in text
    quiet = io.StringIO()
    Progress(3, quiet=True, stream=quiet).update(1, 0, 0, 0, None)
    assert quiet.getvalue() == ""


def test_progress_says_when_cores_are_taken_by_other_trainings():
    import io

    from runners.sweep.progress import Progress

    stream = io.StringIO()
    progress = Progress(3, quiet=False, stream=stream)
    progress.trial_progress(4, {"cores": "waiting", "pool": 2, "threads": 1})
    progress.trial_progress(4, {"cores": "taken", "waited": 41.2})
    assert stream.getvalue().splitlines() == [
        "trial 4: waiting for a core: other trainings on its host hold all 2 core slots (see NAS_HOST_CORES in the README)",
        "trial 4: got its core after 41 s; training"]


def test_train_progress_has_an_eta_and_warns_once_about_a_long_run(capsys):
    from nas.schedule import ProgressiveConfig
    from runners.cli.train import progress_printer

    config = ProgressiveConfig(epochs=4, stages=2, min_image_size=16, max_image_size=32, batch_size=10)
    short = progress_printer(config)
    short({"epoch": 1, "epochs": 4, "step": 5, "steps": 10, "images_per_second": 10.0, "seconds": 5})
    # 5 steps + 1 epoch at 16 px, 2 epochs at 32 px (4x the pixels): (50 + 100 + 2 * 400) images / 10 img/s
    assert capsys.readouterr().err == "  epoch 1/4, step 5/10, 10 img/s, 5 s, ETA 95 s\n"
    slow = progress_printer(config)
    for _ in range(2):
        slow({"epoch": 1, "epochs": 4, "step": 5, "steps": 10, "images_per_second": 0.1, "seconds": 5})
    err = capsys.readouterr().err
    assert err.count("ETA 2.6 h") == 2
    assert err.count("nas train: warning: about 2.6 h of training left at this speed") == 1  # once, not every line


@pytest.mark.slow
def test_a_real_long_train_warns_within_seconds(tmp_path):
    """`nas train` of the b0 backbone at 128 px for 200 epochs on a CPU: the warning comes with the first progress line.

    200 epochs: hours even on a quiet machine (50 epochs could estimate under the warning's hour there, and
    then no warning ever came); the read is bounded, so a missing warning fails instead of waiting for the run.
    """
    import os
    import signal
    import subprocess
    import sys
    import threading

    from tests.conftest import ROOT

    proc = subprocess.Popen([sys.executable, "-m", "runners.cli", "train", "efficientnetv2-b0", "--data", "digits", "--epochs", "200",
                             "--max-image-size", "128", "--min-image-size", "128", "--threads", "1", "--out", str(tmp_path / "out")],
                            cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env={**os.environ},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # a shell's `cmd &` ignores Ctrl-C
    stop = threading.Timer(300, proc.kill)  # the bound: stderr ends (and the loop with it) at the latest then
    stop.start()
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "warning: about" in line:
                break
        assert any(re.search(r"epoch 1/200, step \d+/\d+, \d+ img/s, \d+ s, ETA \d", line) for line in lines), lines
        assert "consider fewer --epochs, a smaller --max-image-size, or a GPU" in lines[-1], lines
    finally:
        stop.cancel()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
