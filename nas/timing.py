"""Training step time: forward + backward + optimizer step on a fixed batch, warm-up excluded, median.

CUDA events on a GPU; ``perf_counter`` on CPU (CPU kernels are synchronous). Trials that share a
device coordinate through :class:`DeviceLock`: training holds it shared per step, timing holds it
exclusive, so a neighbour's training cannot inflate a measurement (FINDINGS: 3.5x on 2 cores).

    >>> from nas.zoo import get
    >>> t = measure_step_time(get("efficientnetv2-b0", 10), TimingConfig(batch_size=4, image_size=32, warmup=1, steps=3))
    >>> t.median_ms > 0
    True
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from nas.errors import check_ints, check_number
from nas.lock import DeviceLock, file_lock
from nas.model import build
from nas.spec import NetworkSpec


@dataclass(frozen=True)
class TimingConfig:
    """How step time is measured; ``image_size=None`` means the spec's own training image size."""

    batch_size: int = 32
    image_size: int | None = None
    warmup: int = 3
    steps: int = 10

    def __post_init__(self) -> None:
        check_ints(self, (("batch_size", 1), ("warmup", 0), ("steps", 3)))
        check_number("image_size", self.image_size, low=16, integer=True, optional=True)


@dataclass(frozen=True)
class StepTime:
    """Median step time with its spread over ``samples_ms`` (warm-up excluded)."""

    median_ms: float
    iqr_ms: float
    cv: float
    samples_ms: tuple[float, ...]
    batch_size: int
    image_size: int

    @property
    def images_per_second(self) -> float:
        return self.batch_size / (self.median_ms / 1000.0)


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu-{torch.get_num_threads()}threads"


def measure_step_time(spec: NetworkSpec, config: TimingConfig = TimingConfig(), device: str | torch.device = "cpu",
                      lock: DeviceLock | None = None) -> StepTime:
    """Median time of a full training step of ``build(spec)`` (AdamW, as in proxy training)."""
    device = torch.device(device)
    size = config.image_size or spec.train_image_size
    generator = torch.Generator().manual_seed(0)
    model = build(spec).to(device).train()
    x = torch.randn(config.batch_size, 3, size, size, generator=generator).to(device)
    y = torch.randint(0, spec.num_classes, (config.batch_size,), generator=generator).to(device)
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    samples: list[float] = []
    with lock.exclusive() if lock else contextlib.nullcontext():
        for _ in range(config.warmup):
            step()
        if cuda:
            torch.cuda.synchronize(device)
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(config.steps)]
            for start, end in events:
                start.record()
                step()
                end.record()
            torch.cuda.synchronize(device)
            samples = [start.elapsed_time(end) for start, end in events]
        else:
            import time

            for _ in range(config.steps):
                begin = time.perf_counter()
                step()
                samples.append((time.perf_counter() - begin) * 1000.0)
    median = statistics.median(samples)
    q = statistics.quantiles(samples, n=4)
    cv = statistics.pstdev(samples) / statistics.fmean(samples)
    return StepTime(median, q[2] - q[0], cv, tuple(samples), config.batch_size, size)


class ReferenceCache:
    """Reference (backbone) step times, cached in memory and optionally in a JSON file (a run directory)
    keyed by host, device, threads, backbone and timing settings, so S compares across machines."""

    _memory: dict[str, float] = {}

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path else None

    def key(self, backbone: NetworkSpec, config: TimingConfig, device: torch.device | str) -> str:
        size = config.image_size or backbone.train_image_size
        return f"{socket.gethostname()}|{device_name(device)}|{backbone.key()}|c{backbone.num_classes}|b{config.batch_size}|s{size}"

    def get(self, backbone: NetworkSpec, config: TimingConfig, device: torch.device | str, lock: DeviceLock | None = None) -> float:
        key = self.key(backbone, config, device)
        if key in self._memory:
            return self._memory[key]
        if self.path and self.path.is_file():
            stored = _read_json(self.path)
            if key in stored:
                self._memory[key] = float(stored[key])
                return self._memory[key]
        median = measure_step_time(backbone, config, device, lock).median_ms
        self._memory[key] = median
        if self.path:
            with file_lock(self.path.with_suffix(".lock")):
                stored = _read_json(self.path) if self.path.is_file() else {}
                stored[key] = median
                _write_json_atomic(self.path, stored)
        return median


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _write_json_atomic(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ref.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=1)
    os.replace(tmp, path)
