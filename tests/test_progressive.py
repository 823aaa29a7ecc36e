"""Progressive learning (Algorithm 1): schedule, weight carry-over, resume after SIGKILL, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from nas.data import load_dataset
from nas.progressive import train_progressive
from nas.scaling import MEMBERS
from nas.schedule import ProgressiveConfig, schedule
from nas.zoo import get
from tests.conftest import ROOT, assert_one_line_error, run_nas


@pytest.mark.parametrize("member", ["s", "m", "l"])
def test_schedule_interpolates_each_member(member):
    config = ProgressiveConfig.for_member(member, epochs=12, stages=4)
    p = MEMBERS[member].progressive
    plan = schedule(config)
    assert [(s.first_epoch, s.last_epoch) for s in plan] == [(1, 3), (4, 6), (7, 9), (10, 12)]
    for i, stage in enumerate(plan):
        assert stage.image_size == round(p.min_image_size + (p.max_image_size - p.min_image_size) * i / 3)
        assert stage.randaugment == pytest.approx(p.min_randaugment + (p.max_randaugment - p.min_randaugment) * i / 3)
        assert stage.mixup == pytest.approx(p.min_mixup + (p.max_mixup - p.min_mixup) * i / 3)
        assert stage.dropout == pytest.approx(p.min_dropout + (p.max_dropout - p.min_dropout) * i / 3)
    assert plan[0].image_size == p.min_image_size and plan[-1].image_size == p.max_image_size
    assert config.eval_image_size == MEMBERS[member].eval_image_size


def test_fixed_and_single_stage_use_end_values():
    fixed = schedule(ProgressiveConfig(epochs=6, stages=3, progressive=False, min_image_size=16, max_image_size=32))
    assert {s.image_size for s in fixed} == {32} and {s.dropout for s in fixed} == {0.2}
    single = schedule(ProgressiveConfig(epochs=5, stages=1, min_image_size=16, max_image_size=32))
    assert len(single) == 1 and single[0].image_size == 32 and single[0].last_epoch == 5
    uneven = schedule(ProgressiveConfig(epochs=7, stages=3))
    assert [(s.first_epoch, s.last_epoch) for s in uneven] == [(1, 3), (4, 5), (6, 7)]


def test_weights_carry_over_between_stages(tmp_path):
    states = {}

    def keep(epoch, stage, model):
        states[epoch] = ({k: v.clone() for k, v in model.state_dict().items()}, stage.index, model.dropout)

    config = ProgressiveConfig(epochs=2, stages=2, min_image_size=16, max_image_size=24, batch_size=64, min_randaugment=3,
                               max_randaugment=6, max_mixup=0.2, threads=2)
    summary = train_progressive(get("efficientnetv2-b0", 10), load_dataset("digits"), config, tmp_path, log=lambda m: None,
                                on_epoch_end=keep)
    assert states[1][1] == 0 and states[2][1] == 1
    assert states[2][2].p == pytest.approx(0.2) and states[1][2].p == pytest.approx(0.1)  # dropout changes per stage
    # stage 2 starts from stage 1's weights: one more epoch moves them a little, a re-init would move them far
    first, second = states[1][0], states[2][0]
    weight = "blocks.0.body.0.0.weight"
    drift = (second[weight] - first[weight]).norm() / first[weight].norm()
    fresh = torch.nn.init.kaiming_normal_(torch.empty_like(first[weight]), mode="fan_out")
    assert drift < 0.5 < (fresh - first[weight]).norm() / first[weight].norm()
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 2
    assert [h["image_size"] for h in summary["history"]] == [16, 24]
    assert not (tmp_path / "curves.png").exists()  # plotting is the caller's (nas train), not the loop's


def test_resume_after_sigkill(tmp_path):
    out = tmp_path / "train"
    args = [sys.executable, "-m", "runners.cli", "train", "efficientnetv2-b0", "--data", "digits", "--epochs", "5", "--stages", "2",
            "--min-image-size", "16", "--max-image-size", "24", "--threads", "2", "--out", str(out)]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    killed_after = None
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.3)
        if (out / "checkpoint.pt").exists():
            try:
                epoch = torch.load(out / "checkpoint.pt", weights_only=True)["epoch"]
            except Exception:
                continue
            if epoch >= 2:
                os.kill(proc.pid, signal.SIGKILL)
                killed_after = epoch
                break
    proc.wait()
    assert killed_after is not None and killed_after < 5, "training was not killed mid-run"
    before = json.loads(torch.load(out / "checkpoint.pt", weights_only=True)["history"])
    result = run_nas(*args[3:], "--json")
    assert result.code == 0, result.err
    assert f"resuming from {out / 'checkpoint.pt'} after epoch {len(before)}" in result.err
    summary = result.json()
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3, 4, 5]
    assert summary["history"][: len(before)] == before  # finished epochs kept, not re-run
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "args, needle",
    [(["--stages", "0"], "stages"), (["--min-image-size", "32", "--max-image-size", "16"], "max_image_size"),
     (["--max-randaugment", "31"], "RandAugment"), (["--member", "xl"], "xl"), (["--min-randaugment", "-1"], "min_randaugment")],
)
def test_bad_input(tmp_path, args, needle):
    assert_one_line_error(run_nas("train", "efficientnetv2-b0", "--out", tmp_path / "x", *args), needle)
    assert not (tmp_path / "x").exists()
