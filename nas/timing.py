"""Training step time: the trial's own training step (:class:`nas.step.TrainStep`, built by
:func:`nas.train.make_step` from the trial's train config: same optimizer, parameter groups, label
smoothing, precision, layout, compile) on a fixed batch, warm-up excluded, median.

CUDA events on a GPU; ``perf_counter`` on CPU (CPU kernels are synchronous). Trials that share a
device coordinate through :class:`~nas.lock.DeviceLock`: training holds it shared (and drains its
CUDA stream before yielding), timing holds it exclusive for the timed steps only, so a neighbour's
training cannot inflate a measurement (3.5x on 2 CPU cores without it).

    >>> from nas.zoo import get
    >>> t = measure_step_time(get("efficientnetv2-b0", 10), TimingConfig(batch_size=4, image_size=32, warmup=1, steps=3))
    >>> t.median_ms > 0
    True
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nas.configs import OptimizerConfig, TimingConfig, TrainConfig
from nas.io import atomic_write_json
from nas.lock import DeviceLock, device_id, file_lock, lock_path, trace_device_work
from nas.spec import NetworkSpec
from nas.step import TrainStep
from nas.train import make_step


@dataclass(frozen=True)
class StepTime:
    """Median step time with its spread over ``samples_ms`` (warm-up excluded)."""

    median_ms: float
    iqr_ms: float
    cv: float
    samples_ms: tuple[float, ...]
    batch_size: int
    image_size: int
    step: dict = field(default_factory=dict, compare=False)  # TrainStep.describe() of the step that was timed

    @property
    def images_per_second(self) -> float:
        return self.batch_size / (self.median_ms / 1000.0)


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu-{torch.get_num_threads()}threads"


def timing_step(spec: NetworkSpec, train: OptimizerConfig, device: str | torch.device) -> TrainStep:
    """The step that timing measures: :func:`nas.train.make_step`, the very function proxy training builds its step with."""
    return make_step(spec, train, device)


def measure_step_time(spec: NetworkSpec, config: TimingConfig = TimingConfig(), device: str | torch.device = "cpu", *,
                      lock: DeviceLock | None = None, train: OptimizerConfig = TrainConfig()) -> StepTime:
    """Median time of the training step of ``build(spec)`` as ``train`` configures it (optimizer, groups, loss, compile).

    Warm-up (and a whole ``torch.compile`` compilation) runs under ``lock``'s *shared* hold, like any
    trainer's work; only one re-warm step and the timed steps hold the device exclusively.
    """
    device = torch.device(device)
    size = config.image_size or spec.train_image_size
    generator = torch.Generator().manual_seed(0)
    lock = lock or DeviceLock("none", enabled=False)
    with lock.trainer(device) as hold:
        with hold.work():
            step = timing_step(spec, train, device)
            x = torch.randn(config.batch_size, 3, size, size, generator=generator).to(device)
            y = torch.randint(0, spec.num_classes, (config.batch_size,), generator=generator).to(device)
        # a compiled step compiles on its first call: never time that one
        for _ in range(config.warmup + (1 if step.compiled and config.warmup == 0 else 0)):
            with hold.work():
                step(x, y)
    with lock.exclusive():
        samples = _timed_steps(step, x, y, steps=config.steps, device=device)
    median = statistics.median(samples)
    q = statistics.quantiles(samples, n=4)
    cv = statistics.pstdev(samples) / statistics.fmean(samples)
    return StepTime(median, q[2] - q[0], cv, tuple(samples), config.batch_size, size, step.describe())


def _timed_steps(step: TrainStep, x: torch.Tensor, y: torch.Tensor, *, steps: int, device: torch.device) -> list[float]:
    """One re-warm step (caches after the neighbours' work), then ``steps`` timed steps in ms; drained before returning."""
    step(x, y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
        with trace_device_work("timed"):
            for start, end in events:
                start.record()
                step(x, y)
                end.record()
            torch.cuda.synchronize(device)  # drained before the exclusive hold ends
        return [start.elapsed_time(end) for start, end in events]
    samples = []
    with trace_device_work("timed"):
        for _ in range(steps):
            begin = time.perf_counter()
            step(x, y)
            samples.append((time.perf_counter() - begin) * 1000.0)
    return samples


class ReferenceCache:
    """Reference (backbone) step times, cached per instance in memory and optionally in a JSON file (a run
    directory), keyed by everything that changes the number, so S compares only like with like.

        >>> cache = ReferenceCache()
        >>> from nas.zoo import get
        >>> "|warmup=" in cache.key(get("efficientnetv2-b0", 10), TimingConfig(), "cpu", train=TrainConfig())
        True
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path else None
        self.memory: dict[str, float] = {}

    def key(self, backbone: NetworkSpec, config: TimingConfig, device: torch.device | str, *,
            train: OptimizerConfig = TrainConfig()) -> str:
        device = torch.device(device)
        size = config.image_size or backbone.train_image_size
        parts = {"host": socket.gethostname(), "device": device_id(device), "threads": torch.get_num_threads(),
                 "dtype": "bfloat16" if device.type == "cuda" else "float32", "torch": torch.__version__,
                 "spec": backbone.key(), "classes": backbone.num_classes, "batch": config.batch_size, "size": size,
                 "warmup": config.warmup, "steps": config.steps, "optimizer": train.optimizer,
                 "momentum": train.momentum if train.optimizer == "sgd" else None, "weight_decay": train.weight_decay,
                 "compile": getattr(train, "compile", False)}
        return "|".join(f"{name}={value}" for name, value in parts.items())

    def get(self, backbone: NetworkSpec, config: TimingConfig, device: torch.device | str, *, lock: DeviceLock | None = None,
            train: OptimizerConfig = TrainConfig()) -> float:
        """The reference step time in ms: from memory, else the file, else measured (once per file, under its lock)."""
        key = self.key(backbone, config, device, train=train)
        if key in self.memory:
            return self.memory[key]
        if self.path is None:
            self.memory[key] = measure_step_time(backbone, config, device, lock=lock, train=train).median_ms
            return self.memory[key]
        # concurrent trials wait for one measurement instead of each timing the backbone
        with file_lock(lock_path(f"reference-{hashlib.sha256(str(self.path.resolve()).encode()).hexdigest()[:16]}")):
            stored = _read_json(self.path) if self.path.is_file() else {}
            if key not in stored:
                stored[key] = measure_step_time(backbone, config, device, lock=lock, train=train).median_ms
                atomic_write_json(self.path, stored)
            self.memory[key] = float(stored[key])
        return self.memory[key]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}

