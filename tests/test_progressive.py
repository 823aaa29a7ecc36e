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
from nas.model import load_checkpoint
from nas.progressive import train_progressive
from nas.schedule import ProgressiveConfig, schedule
from nas.zoo import get
from tests.conftest import ROOT, assert_one_line_error, run_nas

# the paper's ranges (Table 6) split over 4 stages, written out by hand: (image, RandAugment, mixup, dropout) per stage
EXPECTED_SCHEDULES = {
    "s": ([128, 185, 243, 300], [5, 6.667, 8.333, 10], [0, 0, 0, 0], [0.1, 0.1333, 0.1667, 0.2], 384),
    "m": ([128, 213, 299, 384], [5, 8.333, 11.667, 15], [0, 0.0667, 0.1333, 0.2], [0.1, 0.1667, 0.2333, 0.3], 480),
    "l": ([128, 213, 299, 384], [5, 10, 15, 20], [0, 0.1667, 0.3333, 0.5], [0.1, 0.2, 0.3, 0.4], 480),
}


@pytest.mark.parametrize("member", ["s", "m", "l"])
def test_schedule_interpolates_each_member(member):
    config = ProgressiveConfig.for_member(member, epochs=12, stages=4)
    plan = schedule(config)
    images, randaugment, mixup, dropout, eval_size = EXPECTED_SCHEDULES[member]
    assert [(s.first_epoch, s.last_epoch) for s in plan] == [(1, 3), (4, 6), (7, 9), (10, 12)]
    assert [s.image_size for s in plan] == images
    assert [s.randaugment for s in plan] == pytest.approx(randaugment, abs=1e-3)
    assert [s.mixup for s in plan] == pytest.approx(mixup, abs=1e-4)
    assert [s.dropout for s in plan] == pytest.approx(dropout, abs=1e-4)
    assert config.eval_image_size == eval_size


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
    weight = "stages.0.0.conv_exp.conv.weight"
    drift = (second[weight] - first[weight]).norm() / first[weight].norm()
    fresh = torch.nn.init.kaiming_normal_(torch.empty_like(first[weight]), mode="fan_out")
    assert drift < 0.5 < (fresh - first[weight]).norm() / first[weight].norm()
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 2
    loaded = load_checkpoint(tmp_path / "checkpoint.pt")  # rebuilt from the spec inside, with the data's 10 classes
    assert loaded.spec == get("efficientnetv2-b0", 10) and loaded.classifier.out_features == 10
    assert all(torch.equal(value, second[key]) for key, value in loaded.state_dict().items())
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
