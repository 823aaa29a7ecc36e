"""Real proxy training on the bundled digits (CPU)."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from nas.configs import TimingConfig, TrainConfig
from nas.data import load_dataset
from nas.evaluate import evaluate_candidate
from nas.plan import count_spec_params
from nas.spec import NetworkSpec
from nas.step import TrainStep
from nas.timing import ReferenceCache, measure_step_time, timing_step
from nas.train import train_proxy
from nas.zoo import get
from tests.conftest import run_nas, tiny_backbone

TINY_TIMING = TimingConfig(batch_size=8, image_size=32, warmup=1, steps=3)


def test_digits_reaches_ninety_percent_with_default_schedule():
    result = train_proxy(get("efficientnetv2-b0", 10), load_dataset("digits"), TrainConfig(threads=2))
    assert result.failure is None and result.epochs_run == 10
    assert result.accuracy >= 0.9, result.curve


def test_same_seed_same_accuracy():
    ds = load_dataset("digits")
    spec = get("efficientnetv2-b0", 10)
    config = TrainConfig(epochs=2, image_size=16, seed=5, threads=2)
    a, b = train_proxy(spec, ds, config), train_proxy(spec, ds, config)
    assert a.accuracy == b.accuracy and a.val_loss == b.val_loss


def test_callback_can_stop_early():
    seen = []
    result = train_proxy(get("efficientnetv2-b0", 10), load_dataset("digits"), TrainConfig(epochs=3, image_size=16),
                         on_epoch=lambda epoch, m: seen.append(m) or True)
    assert result.stopped_early and result.epochs_run == 1 and len(seen) == 1
    assert set(seen[0]) >= {"val_accuracy", "val_loss", "train_loss"}


def test_non_finite_loss_is_a_failure():
    # fault injection through the public progress hook: poison the running model's parameters
    import gc

    calls = {"n": 0}

    def poison(progress):  # called after every step with progress_interval=0
        calls["n"] += 1
        if calls["n"] == 3:
            for obj in gc.get_objects():
                if type(obj) is torch.nn.Linear and obj.out_features == 10:  # type(): isinstance reads __class__ of deprecated objects, which warns
                    obj.weight.data.fill_(float("nan"))

    result = train_proxy(get("efficientnetv2-b0", 10), load_dataset("digits"), TrainConfig(epochs=2, image_size=16),
                         on_progress=poison, progress_interval=0)
    assert result.failure is not None and "non-finite loss" in result.failure and result.epochs_run == 0
    assert calls["n"] > 3  # read at the epoch's end, not at the poisoned step


def test_record_fields_and_normalization_against_another_backbone(tmp_path):
    """S and P are the candidate's over the *backbone's*: a planted reference time for the backbone must be the divisor."""
    candidate, backbone = get("efficientnetv2-b0", 10), get("efficientnet-b0", 10)
    timing = TimingConfig(batch_size=5, image_size=32, warmup=1, steps=3)  # settings no other test uses: no cached entry
    torch.set_num_threads(2)  # the cache key holds the thread count evaluate_candidate will set
    cache = ReferenceCache(tmp_path / "reference.json")
    planted = 1234.5  # ms; no real 5-image step on this machine takes that long, so a measured value would differ
    train = TrainConfig(epochs=1, image_size=16, threads=2)
    (tmp_path / "reference.json").write_text(json.dumps({cache.key(backbone, timing, "cpu", train=train): planted}))
    record = evaluate_candidate(candidate, "digits", train, timing_config=timing,
                                backbone=backbone, reference_cache=cache)
    for key in ("accuracy", "val_loss", "curve", "step_time_ms", "step_time_iqr_ms", "normalized_step_time", "params",
                "macs", "peak_memory_mb", "throughput_img_s", "device", "torch_version", "wall_seconds", "seed"):
        assert getattr(record, key) is not None, key
    assert record.status == "ok" and record.backbone == "efficientnet-b0"
    assert record.reference_step_time_ms == planted
    low, middle, high = sorted(record.step_time_samples_ms)  # the three timed steps (warm-up excluded), as stored
    assert record.step_time_ms == middle  # S is their median, by hand
    assert record.step_time_iqr_ms == pytest.approx(high - low)  # quartiles of three points (exclusive method): the extremes
    assert record.throughput_img_s == pytest.approx(timing.batch_size / (middle / 1000.0))
    assert record.normalized_step_time == middle / planted
    assert record.params == count_spec_params(candidate) and record.reference_params == count_spec_params(backbone)
    assert record.normalized_params == count_spec_params(candidate) / count_spec_params(backbone) != 1.0
    assert record.timed_step == record.trained_step and record.timed_step["optimizer"] == "AdamW"


def test_step_time_is_the_median_of_its_samples():
    """The statistics of a step time, computed by hand from the samples it keeps (five timed steps, warm-up excluded)."""
    t = measure_step_time(NetworkSpec.from_dict(tiny_backbone()), TimingConfig(batch_size=4, image_size=16, warmup=1, steps=5), "cpu")
    assert len(t.samples_ms) == 5 and len(set(t.samples_ms)) == 5  # five distinct timings: median, mean and extremes differ
    s = sorted(t.samples_ms)
    assert t.median_ms == s[2]
    assert t.iqr_ms == pytest.approx((s[3] + s[4]) / 2 - (s[0] + s[1]) / 2)  # quartiles of five points, exclusive method
    mean = sum(s) / 5
    assert t.cv == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in s) / 5) / mean)
    assert t.images_per_second == pytest.approx(4 / (s[2] / 1000.0)) and (t.batch_size, t.image_size) == (4, 16)


def test_evaluate_cli_json():
    result = run_nas("evaluate", "efficientnetv2-b0", "--epochs", "1", "--image-size", "16", "--timing-image-size", "32",
                     "--timing-batch-size", "4", "--timing-steps", "3", "--threads", "2", "--json")
    assert result.code == 0, result.err
    data = result.json()
    assert {"accuracy", "step_time_ms", "normalized_step_time", "params"} <= set(data)
    assert "epoch 1/1" in result.err  # progress on stderr, not stdout
    assert torch.__version__ == data["torch_version"]


# ---- one step for training and timing (issue 13) ----------------------------------------------
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_timing_times_the_step_that_trains(optimizer):
    # the objects, not the times: optimizer class and settings, parameter groups, loss and label smoothing
    config = TrainConfig(epochs=1, image_size=16, threads=2, optimizer=optimizer, lr=0.05, weight_decay=0.01,
                         momentum=0.8, label_smoothing=0.2)
    spec = get("efficientnetv2-b0", 10)
    built = timing_step(spec, config, "cpu")
    expected = torch.optim.SGD if optimizer == "sgd" else torch.optim.AdamW
    assert type(built.optimizer) is expected and built.loss.label_smoothing == 0.2
    assert [g["weight_decay"] for g in built.optimizer.param_groups] == [0.01, 0.0]
    assert all(p.ndim <= 1 for p in built.optimizer.param_groups[1]["params"])  # BN and biases: no decay
    if optimizer == "sgd":
        assert built.optimizer.defaults["momentum"] == 0.8 and built.optimizer.defaults["nesterov"] is True
    record = evaluate_candidate(spec, "digits", config, timing_config=TINY_TIMING)
    assert record.status == "ok", record.failure_reason
    assert record.timed_step == record.trained_step == built.describe()
    assert record.trained_step["optimizer"] == expected.__name__
    assert record.timed_step["label_smoothing"] == 0.2


def test_train_step_mixup_targets_and_stats():
    step = TrainStep(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)), TrainConfig(label_smoothing=0.0), "cpu")
    x, y, y_b = torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 0]), torch.tensor([1, 1, 0, 2])
    with torch.no_grad():
        logits = step.model(x)
    expected = 0.25 * F.cross_entropy(logits, y) + 0.75 * F.cross_entropy(logits, y_b)
    loss = step(x, y, y_b, 0.25)
    assert torch.allclose(loss, expected)
    stats = step.drain_stats()
    assert stats.finite and stats.samples == 4 and stats.steps == 1 and stats.mean_loss == pytest.approx(float(expected))
    assert step.drain_stats().samples == 0  # reset after reading
