"""No hang on impossible resource requests, SIGTERM like Ctrl-C, checkpoints that survive truncation,
training extended with more epochs, and spec names that cannot escape their output directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nas import checkpoint
from nas.spec import NetworkSpec, StageSpec
from runners.config import SweepConfig
from runners.preflight import check_resources
from tests.conftest import ROOT, assert_one_line_error, run_nas

# a network small enough that an epoch takes a second even on a busy 2-core machine
TINY_SPEC = NetworkSpec("tiny", 8, (StageSpec("fused_mbconv", 1, 3, 2, 1, 8, 8), StageSpec("mbconv", 1, 3, 2, 2, 8, 16)),
                        head_channels=32)
TINY = ["--data", "digits", "--stages", "1", "--min-image-size", "16", "--max-image-size", "16", "--threads", "2"]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize(("flag", "value", "field"), [("--cpus-per-trial", "1000", "cpus_per_trial"),
                                                      ("--gpus-per-trial", "0.5", "gpus_per_trial")])
def test_impossible_resources_are_refused_not_waited_for(tmp_path, flag, value, field):
    if field == "gpus_per_trial" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = run_nas("search", "--runs-dir", tmp_path / "runs", "--name", "hang", flag, value, timeout=120, cwd=tmp_path)
    assert_one_line_error(result, field, "allowed")
    assert _files(tmp_path) == []


def test_check_resources_reads_ray_nodes():
    nodes = [{"Alive": True, "Resources": {"CPU": 4.0}}, {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]
    check_resources(SweepConfig(cpus_per_trial=4), nodes)
    with pytest.raises(ValueError, match="cpus_per_trial: 5 is more than any node has"):
        check_resources(SweepConfig(cpus_per_trial=5), nodes)
    with pytest.raises(ValueError, match="gpus_per_trial: 1 but the cluster has no GPU"):
        check_resources(SweepConfig(gpus_per_trial=1), nodes)  # the dead node's GPUs do not count


@pytest.fixture
def tiny(tmp_path) -> str:
    path = tmp_path / "tiny.json"
    path.write_text(TINY_SPEC.to_json())
    return str(path)


def test_sigterm_is_like_ctrl_c_and_the_checkpoint_still_loads(tmp_path, tiny):
    out = tmp_path / "train"
    args = [sys.executable, "-m", "runners.cli", "train", tiny, "--epochs", "200", *TINY, "--out", str(out)]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None and not (out / checkpoint.NAME).exists():
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before it could be terminated"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "nas train: terminated"
    assert sum("terminated" in line for line in err.splitlines()) == 1
    state = torch.load(out / checkpoint.NAME, weights_only=True)
    assert state["epoch"] >= 1 and not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_truncated_checkpoint_falls_back_and_more_epochs_extend(tmp_path, tiny):
    out = tmp_path / "train"
    first = run_nas("train", tiny, "--epochs", "2", *TINY, "--out", out, "--json")
    assert first.code == 0, first.err
    assert (out / checkpoint.PREVIOUS).is_file()  # epoch 1 kept beside epoch 2
    finished = (out / checkpoint.NAME).read_bytes()

    # a checkpoint cut short (a full disk, a kill mid-copy): one warning, resume from the previous one
    (out / checkpoint.NAME).write_bytes(finished[: len(finished) // 2])
    again = run_nas("train", tiny, "--epochs", "2", *TINY, "--out", out, "--json")
    assert again.code == 0, again.err
    warnings = [line for line in again.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "unreadable" in warnings[0] and "Traceback" not in again.err
    assert f"resuming from {out / checkpoint.PREVIOUS} after epoch 1" in again.err
    assert [h["epoch"] for h in again.json()["history"]] == [1, 2]

    # a finished run with a larger --epochs continues after its last epoch, keeping the history
    longer = run_nas("train", tiny, "--epochs", "3", *TINY, "--out", out, "--json")
    assert longer.code == 0, longer.err
    assert f"resuming from {out / checkpoint.NAME} after epoch 2" in longer.err
    history = longer.json()["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[:2] == again.json()["history"]
    assert torch.load(out / checkpoint.NAME, weights_only=True)["epoch"] == 3

    # fewer epochs than already trained: refused, nothing changed
    before = {p: p.read_bytes() for p in out.iterdir() if p.is_file()}
    fewer = run_nas("train", tiny, "--epochs", "2", *TINY, "--out", out)
    assert_one_line_error(fewer, "--epochs", "allowed >= 3")
    assert {p: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_checkpoint_save_keeps_the_previous_until_the_new_is_complete(tmp_path):
    checkpoint.save(tmp_path, {"epoch": 1})
    checkpoint.save(tmp_path, {"epoch": 2})
    assert torch.load(tmp_path / checkpoint.PREVIOUS, weights_only=True) == {"epoch": 1}
    assert torch.load(tmp_path / checkpoint.NAME, weights_only=True) == {"epoch": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([checkpoint.NAME, checkpoint.PREVIOUS])


def _spec_file(path: Path, name: str) -> Path:
    path.write_text(json.dumps({**TINY_SPEC.to_dict(), "name": name}))
    return path


def test_spec_names_stay_inside_the_output_directory(tmp_path):
    evil = _spec_file(tmp_path / "evil.json", "../../../x")
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    result = run_nas("scale", evil, "--family", "--members", "s", "-o", "fam", "--json", cwd=work)
    assert result.code == 0, result.err
    written = [Path(m["path"]) for m in result.json()["members"]]
    assert [p.parent for p in written] == [Path("fam")] and (work / written[0]).is_file()
    assert _files(tmp_path) == sorted(["a", "a/b", "a/b/c", "a/b/c/fam", f"a/b/c/fam/{written[0].name}", "evil.json"])


@pytest.mark.slow
def test_train_default_out_is_confined(tmp_path):
    evil = _spec_file(tmp_path / "evil.json", "../../../x")
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    result = run_nas("train", evil, "--epochs", "1", *TINY, "--json", cwd=work)
    assert result.code == 0, result.err
    assert (work / result.json()["out"]).resolve().parent == (work / "runs").resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "evil.json"]


def test_control_characters_do_not_reach_the_terminal(tmp_path):
    spec = _spec_file(tmp_path / "ansi.json", "b0\x1b[2J\x1b]0;owned\x07\x1b[31mred\r")
    result = run_nas("inspect", spec)
    assert result.code == 0, result.err
    assert "\x1b" not in result.out and "\x07" not in result.out and "\r" not in result.out
    assert result.out.startswith("b0red:")
    assert json.loads(run_nas("inspect", spec, "--json").out)["name"] == "b0\x1b[2J\x1b]0;owned\x07\x1b[31mred\r"  # JSON escapes it


@pytest.mark.slow
def test_cluster_resources_checked_after_ray_starts_and_nothing_left(tmp_path):
    """A cluster smaller than this machine (here: Ray started with 1 CPU) is only known once Ray runs."""
    import ray

    from runners.preflight import undo_new_run
    from runners.sweep.run import run_sweep

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        config = SweepConfig(name="small", runs_dir=str(tmp_path / "runs"), cpus_per_trial=2, n_trials=1)
        with pytest.raises(ValueError, match="cpus_per_trial: 2 is more than any node has"), undo_new_run(config):
            run_sweep(config)
    finally:
        ray.shutdown()
    assert _files(tmp_path) == []
