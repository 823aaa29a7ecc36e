"""Real proxy training on the bundled digits (CPU)."""

import torch

from nas.data import load_dataset
from nas.lock import DeviceLock
from nas.timing import TimingConfig, measure_step_time
from nas.train import TrainConfig, train_proxy
from nas.zoo import get
from runners.evaluate import evaluate_candidate
from tests.conftest import run_nas

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
    # fault injection through the public step hook: poison the running optimizer's parameters
    import contextlib
    import gc

    calls = {"n": 0}

    @contextlib.contextmanager
    def poison():
        calls["n"] += 1
        if calls["n"] == 3:
            for obj in gc.get_objects():
                if isinstance(obj, torch.nn.Linear) and obj.out_features == 10:
                    obj.weight.data.fill_(float("nan"))
        yield

    result = train_proxy(get("efficientnetv2-b0", 10), load_dataset("digits"), TrainConfig(epochs=2, image_size=16), step_guard=poison)
    assert result.failure is not None and "non-finite loss" in result.failure and result.epochs_run == 0


def test_record_fields_and_normalization():
    record = evaluate_candidate(get("efficientnetv2-b0", 10), "digits", TrainConfig(epochs=1, image_size=16, threads=2), TINY_TIMING)
    for key in ("accuracy", "val_loss", "curve", "step_time_ms", "step_time_iqr_ms", "normalized_step_time", "params",
                "macs", "peak_memory_mb", "throughput_img_s", "device", "torch_version", "wall_seconds", "seed"):
        assert key in record, key
    assert record["status"] == "ok" and record["params"] == record["reference_params"]
    assert record["normalized_step_time"] == record["step_time_ms"] / record["reference_step_time_ms"]


def test_step_time_median_and_lock():
    t = measure_step_time(get("efficientnetv2-b0", 10), TINY_TIMING, "cpu", DeviceLock("test-cpu"))
    assert len(t.samples_ms) == 3 and min(t.samples_ms) <= t.median_ms <= max(t.samples_ms)
    assert t.images_per_second > 0


def test_evaluate_cli_json():
    result = run_nas("evaluate", "efficientnetv2-b0", "--epochs", "1", "--image-size", "16", "--timing-image-size", "32",
                     "--timing-batch-size", "4", "--timing-steps", "3", "--threads", "2", "--json")
    assert result.code == 0, result.err
    data = result.json()
    assert {"accuracy", "step_time_ms", "normalized_step_time", "params"} <= set(data)
    assert "epoch 1/1" in result.err  # progress on stderr, not stdout
    assert torch.__version__ == data["torch_version"]
