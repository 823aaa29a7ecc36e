"""The two roles of the device-lock tests, run as real processes: ``python tests/lock_roles.py ROLE LOCK_DIR on|off``.

Both trace their device work into ``$NAS_TRACE_DEVICE_WORK`` (the production trace points in
``nas.train`` and ``nas.timing``) and use the production code paths:

- ``trainer``: :func:`nas.train.train_proxy` on digits, validating every epoch in many small batches.
- ``timer``: waits until the trainer validates, then :func:`nas.timing.measure_step_time` ``N`` times
  (``N`` from ``$TIMINGS``); prints one JSON line per measurement with the seconds its exclusive hold
  was waited for (``waited``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from nas.configs import TimingConfig, TrainConfig
from nas.data import load_dataset
from nas.lock import TRACE_ENV, DeviceLock
from nas.spec import NetworkSpec
from nas.timing import measure_step_time
from nas.train import train_proxy

SPEC = NetworkSpec.from_block_strings("tiny", 16, ["r1_k3_s1_e1_i16_o16_c1", "r2_k3_s2_e4_i16_o24"], head_channels=64, num_classes=10)


def trainer(lock: DeviceLock) -> None:
    config = TrainConfig(epochs=int(os.environ.get("EPOCHS", "3")), image_size=32, batch_size=32, eval_batch_size=32, threads=1,
                         validation_fraction=0.5)  # a long validation pass: 29 batches
    result = train_proxy(SPEC, load_dataset("digits"), config, lock=lock)
    assert result.failure is None, result.failure


def wait_for_validation(trace: Path, deadline: float) -> None:
    """Until the trainer's trace shows a validation batch (so the first wait starts behind validation)."""
    while time.monotonic() < deadline:
        if trace.exists() and '"kind": "eval"' in trace.read_text():
            return
        time.sleep(0.01)
    raise SystemExit("the trainer never validated")


def timer(lock: DeviceLock) -> None:
    torch.set_num_threads(1)
    wait_for_validation(Path(os.environ[TRACE_ENV]), time.monotonic() + 300)
    config = TimingConfig(batch_size=16, image_size=32, warmup=1, steps=3)
    for _ in range(int(os.environ.get("TIMINGS", "4"))):
        begin = time.perf_counter()
        with lock.exclusive() as waited:  # the same wait measure_step_time's exclusive hold does, measured
            pass
        wait = time.perf_counter() - begin
        measured = measure_step_time(SPEC, config, "cpu", lock=lock)
        print(json.dumps({"waited": max(wait, waited), "median_ms": measured.median_ms}), flush=True)
        time.sleep(0.2)


if __name__ == "__main__":
    role, directory, switch = sys.argv[1:4]
    device_lock = DeviceLock("test-device", directory, enabled=switch == "on")
    {"trainer": trainer, "timer": timer}[role](device_lock)
