"""Progressive learning (Algorithm 1): schedule, weight carry-over, resume after SIGKILL, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from itertools import islice

import pytest
import torch

from nas.data import load_dataset
from nas.errors import InputError
from nas.model import build, load_checkpoint
from nas.pipeline import DeviceData
from nas.progressive import reestimate_batchnorm, train_progressive
from nas.schedule import ProgressiveConfig, schedule
from nas.spec import NetworkSpec
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
    uneven = schedule(ProgressiveConfig(epochs=7, stages=3, final_stage_fraction=None))
    assert [(s.first_epoch, s.last_epoch) for s in uneven] == [(1, 3), (4, 5), (6, 7)]


def test_weights_carry_over_between_stages(tmp_path):
    states = {}

    def keep(epoch, stage, model):
        states[epoch] = ({k: v.clone() for k, v in model.state_dict().items()}, stage.index, model.dropout)

    config = ProgressiveConfig(epochs=2, stages=2, min_image_size=16, max_image_size=24, batch_size=64, min_randaugment=3,
                               max_randaugment=6, max_mixup=0.2, threads=2)
    summary = train_progressive(get("efficientnetv2-b0", 10), load_dataset("digits"), config, out_dir=tmp_path, log=lambda m: None,
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
    assert_one_line_error(run_nas("train", "efficientnetv2-b0", "--data", "digits", "--out", tmp_path / "x", *args), needle)
    assert not (tmp_path / "x").exists()


def test_final_stage_fraction_gives_literal_stage_lengths():
    plan = schedule(ProgressiveConfig(epochs=8, stages=3, min_image_size=16, max_image_size=32, final_stage_fraction=0.5))
    assert [(s.first_epoch, s.last_epoch, s.image_size) for s in plan] == [(1, 2, 16), (3, 4, 24), (5, 8, 32)]
    plan = schedule(ProgressiveConfig(epochs=10, stages=4, final_stage_fraction=0.4))
    assert [(s.first_epoch, s.last_epoch) for s in plan] == [(1, 2), (3, 4), (5, 6), (7, 10)]
    plan = schedule(ProgressiveConfig(epochs=5, stages=3, final_stage_fraction=1.0))  # every other stage keeps 1 epoch
    assert [(s.first_epoch, s.last_epoch) for s in plan] == [(1, 1), (2, 2), (3, 5)]
    plan = schedule(ProgressiveConfig(epochs=8, stages=3, final_stage_fraction=0.5, progressive=False))  # fixed: even
    assert [(s.first_epoch, s.last_epoch) for s in plan] == [(1, 3), (4, 6), (7, 8)]
    with pytest.raises(InputError, match="final_stage_fraction"):
        ProgressiveConfig(final_stage_fraction=0.0)
    with pytest.raises(InputError, match="batchnorm_batches"):
        ProgressiveConfig(batchnorm_batches=-1)


def test_batchnorm_reestimated_at_new_size():
    data = load_dataset("digits")
    dd = DeviceData(*data.split_validation(0.2, seed=0), device="cpu")
    model = build(get("efficientnetv2-b0", 10))
    model.train()
    with torch.no_grad():  # running statistics of 16 px batches, the old size
        for x, _ in islice(dd.train_batches(64, 16, torch.Generator().manual_seed(0)), 5):
            model(x)
    stem_bn = model.stem.bn
    before = stem_bn.running_mean.clone(), stem_bn.running_var.clone()
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    x24, _ = next(dd.train_batches(64, 24, torch.Generator().manual_seed(1), crop_padding=0, flip=False))
    assert reestimate_batchnorm(model, [(x24, None)], torch.device("cpu")) == 1
    with torch.no_grad():
        stem_out = model.stem.conv(x24)  # the stem conv's output at 24 px: what its BN normalizes
    # one batch with cumulative averaging: running statistics = that batch's statistics (unbiased variance)
    assert torch.allclose(stem_bn.running_mean, stem_out.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(stem_bn.running_var, stem_out.var((0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(stem_bn.running_mean, before[0], atol=1e-3)
    assert stem_bn.momentum == 0.1 and model.training  # settings restored
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())  # weights untouched
    bn_count = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    deepest = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)][-1]
    assert bn_count > 10 and int(deepest.num_batches_tracked) == 1  # every BN, down to the head, re-estimated


def test_stage_change_reestimates_batchnorm_and_times_cpu(tmp_path):
    calls = []

    def keep(epoch, stage, model):
        calls.append((epoch, stage.image_size, int(model.stem.bn.num_batches_tracked)))

    config = ProgressiveConfig(epochs=2, stages=2, min_image_size=16, max_image_size=24, batch_size=64, threads=2,
                               batchnorm_batches=3)
    tiny = NetworkSpec.from_block_strings("tiny", 8, ["r1_k3_s1_e1_i8_o8_c1", "r1_k3_s2_e2_i8_o16_c1"], head_channels=32)
    summary = train_progressive(tiny, load_dataset("digits"), config, out_dir=tmp_path, log=lambda m: None, on_epoch_end=keep)
    steps = calls[0][2]  # a fresh model's BN counts epoch 1's training steps
    assert steps > 3 and calls[0][1] == 16 and calls[1][1] == 24
    # at the size change the statistics are reset and re-estimated from 3 batches, then epoch 2 trains
    assert calls[1][2] == 3 + steps
    assert all(h["cpu_seconds"] > 0 for h in summary["history"])
    assert summary["train_cpu_seconds"] == pytest.approx(sum(h["cpu_seconds"] for h in summary["history"]))


def test_ema_update_is_the_lerp_and_buffers_follow_the_model():
    """One multi-tensor update: ema = decay * ema + (1 - decay) * p for weights; BN statistics copied."""
    from nas.regularize import EMA

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    ema = EMA(net, 0.9)
    before = [p.detach().clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    net(torch.randn(8, 3, 9, 9))  # moves the BN running statistics
    ema.update(net)
    for old, new, p in zip(before, ema.model.parameters(), net.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * p.detach())
    torch.testing.assert_close(ema.model[1].running_mean, net[1].running_mean)
    torch.testing.assert_close(ema.model[1].running_var, net[1].running_var)


def test_mixup_permutation_is_drawn_on_the_device_generator():
    from nas.regularize import mixup

    x, y = torch.arange(8.0).view(8, 1), torch.arange(8)
    mixed, y_a, y_b, lam = mixup(x, y, 0.4, generator=torch.Generator().manual_seed(0), device_generator=torch.Generator().manual_seed(1))
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(1))  # the device generator's draw
    assert torch.equal(y_b, y[perm]) and torch.equal(y_a, y)
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x[perm])
