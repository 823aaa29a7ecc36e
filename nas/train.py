"""Proxy training: a few epochs at a reduced image size, as the search's inner loop.

Data stay on the device (:class:`nas.pipeline.DeviceData`); the optimizer is AdamW with a linear
warm-up and a cosine decay, label smoothing, bf16 autocast and channels_last on CUDA, fp32 with
an explicit thread count on CPU.

    >>> from nas.data import load_dataset
    >>> from nas.zoo import get
    >>> ds = load_dataset("digits")
    >>> out = train_proxy(get("efficientnetv2-b0", 10), ds, TrainConfig(epochs=1, image_size=16))
    >>> 0.0 <= out.accuracy <= 1.0
    True
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from nas.configs import OptimizerConfig, TrainConfig
from nas.cores import use_threads
from nas.data import Dataset
from nas.errors import InputError
from nas.lock import DeviceLock, TrainerHold, trace_device_work
from nas.model import build
from nas.pipeline import DeviceData
from nas.spec import NetworkSpec
from nas.step import TrainStep, autocast, to_device_layout

__all__ = ["EpochCallback", "NonFiniteLoss", "ProgressCallback", "TrainConfig", "TrainResult", "evaluate", "make_step",
           "pick_device", "seed_everything", "train_proxy", "warmup_cosine"]

@dataclass
class TrainResult:
    """What a proxy training run produced; ``failure`` is set when it could not finish."""

    accuracy: float = 0.0
    val_loss: float = float("nan")
    curve: list[dict[str, float]] = field(default_factory=list)
    epochs_run: int = 0
    stopped_early: bool = False
    failure: str | None = None
    seconds: float = 0.0
    step: dict = field(default_factory=dict)  # TrainStep.describe(): optimizer, groups, loss as trained


class NonFiniteLoss(RuntimeError):
    pass


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def pick_device(prefer: str | None = None) -> torch.device:
    """``cuda`` when present (or asked for), else ``cpu``."""
    if prefer:
        if prefer.startswith("cuda") and not torch.cuda.is_available():
            raise InputError(f"device: {prefer!r} asked for but CUDA is not available, allowed cpu")
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up to 1, then cosine to 0 (``LambdaLR`` form)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], device: torch.device, *,
             work: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` over ``batches``; sums stay on the device, read once.

    Each batch (made and evaluated) is one ``work()`` unit: a trainer's device hold, which a waiting timer
    can take between two batches.
    """
    model.eval()
    correct = torch.zeros((), device=device)
    loss_sum = torch.zeros((), device=device)
    total = 0
    batches = iter(batches)
    while True:
        with work(), trace_device_work("eval"):
            batch = next(batches, None)
            if batch is None:
                break
            x, y = batch
            with autocast(device):
                logits = model(to_device_layout(x, device))
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            total += len(y)
    with work(), trace_device_work("eval"):
        correct_count, loss_total = torch.stack([correct, loss_sum]).tolist()
    model.train()
    return correct_count / max(1, total), loss_total / max(1, total)


def make_step(spec: NetworkSpec, config: OptimizerConfig, device: str | torch.device) -> TrainStep:
    """The training step of ``build(spec)`` under ``config``: what proxy training trains and timing times.

        >>> from nas.zoo import get
        >>> make_step(get("efficientnetv2-b0", 10), TrainConfig(optimizer="sgd"), "cpu").describe()["optimizer"]
        'SGD'
    """
    return TrainStep(build(spec), config, device, compile=getattr(config, "compile", False))


EpochCallback = Callable[[int, dict[str, float]], bool | None]
ProgressCallback = Callable[[dict[str, float]], None]
AUTO = "auto"  # train_proxy's default lock: the device's own DeviceLock


class Progress:
    """Calls ``callback`` at most every ``interval`` seconds with the epoch, step and images/s so far this epoch.

    No host sync: only counts and the host clock are read.
    """

    def __init__(self, callback: ProgressCallback | None, epochs: int, steps: int, interval: float = 5.0) -> None:
        self.callback, self.epochs, self.steps, self.interval = callback, epochs, steps, interval
        self.epoch_begin = self.last = time.perf_counter()

    def start_epoch(self) -> None:
        self.epoch_begin = self.last = time.perf_counter()

    def due(self) -> bool:
        return self.callback is not None and time.perf_counter() - self.last >= self.interval

    def report(self, epoch: int, step: int, images: int) -> None:
        now = time.perf_counter()
        self.last, seconds = now, now - self.epoch_begin
        assert self.callback is not None
        self.callback({"epoch": epoch, "epochs": self.epochs, "step": step, "steps": self.steps,
                       "images_per_second": images / max(seconds, 1e-9), "seconds": seconds})


def train_proxy(spec: NetworkSpec, data: Dataset | DeviceData, config: TrainConfig = TrainConfig(), *,
                on_epoch: EpochCallback | None = None, device: str | torch.device | None = None,
                lock: DeviceLock | None | str = AUTO, on_progress: ProgressCallback | None = None,
                progress_interval: float = 5.0) -> TrainResult:
    """Train ``build(spec)`` for ``config.epochs`` epochs; validate on the held-out split after each.

    All device work (batches, steps, statistics, validation) runs under ``lock``'s shared hold
    (default: the device's :class:`~nas.lock.DeviceLock`; ``None``: no lock), so a timer on the same
    device waits at most one batch. ``on_epoch(epoch, metrics)`` runs with the hold released and may
    return True to stop early (pruning); so does ``on_progress(info)``, at most every
    ``progress_interval`` seconds (keys epoch, epochs, step, steps, images_per_second, seconds).
    A non-finite loss or a CUDA out-of-memory error ends the run with ``failure`` set.
    """
    if config.threads:
        use_threads(config.threads)
    if isinstance(data, Dataset):
        data = DeviceData(*data.split_validation(config.validation_fraction, seed=0), device=pick_device(device and str(device)))
    device = data.device
    seed_everything(config.seed, config.deterministic and device.type == "cpu")
    if not isinstance(lock, DeviceLock):  # AUTO: this device's lock; None: the same code path, locking nothing
        lock = DeviceLock.for_device(device, enabled=lock is not None)
    result = TrainResult()
    begin = time.perf_counter()
    try:
        with lock.trainer(device) as hold:
            _train_epochs(spec, data, config, result=result, hold=hold, on_epoch=on_epoch,
                          progress=Progress(on_progress, config.epochs, max(1, len(data.train_labels) // config.batch_size),
                                            progress_interval))
    except NonFiniteLoss as error:
        result.failure = str(error)
    except torch.cuda.OutOfMemoryError as error:
        result.failure = f"CUDA out of memory: {str(error).splitlines()[0]}"
    finally:
        result.seconds = time.perf_counter() - begin
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def _train_epochs(spec: NetworkSpec, data: DeviceData, config: TrainConfig, *, result: TrainResult, hold: TrainerHold,
                  on_epoch: EpochCallback | None, progress: Progress) -> None:
    """The epoch loop of :func:`train_proxy`; fills ``result`` as epochs finish."""
    device = data.device
    with hold.work():
        step = make_step(spec, config, device)  # the model's weights go to the device under the hold too
    result.step = step.describe()
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        step.optimizer, warmup_cosine(config.epochs * progress.steps, int(config.warmup_epochs * progress.steps)))
    generator = torch.Generator().manual_seed(config.seed)
    for epoch in range(1, config.epochs + 1):
        progress.start_epoch()
        batches, count, images = data.train_batches(config.batch_size, config.image_size, generator), 0, 0
        while True:
            with hold.work(), trace_device_work("train"):
                batch = next(batches, None)  # made (sliced, cropped, flipped) on the device: device work
                if batch is None:
                    break
                step(*batch)
                scheduler.step()
            count, images = count + 1, images + len(batch[1])
            if progress.due():
                hold.pause()
                progress.report(epoch, count, images)
        with hold.work(), trace_device_work("train"):
            stats = step.drain_stats()  # the epoch's only host sync in training
        if not stats.finite:
            raise NonFiniteLoss(f"non-finite loss (mean {stats.mean_loss}) at epoch {epoch}")
        train_seconds = time.perf_counter() - progress.epoch_begin
        accuracy, val_loss = evaluate(step.model, data.eval_batches(config.eval_batch_size, config.image_size), device,
                                      work=hold.work)
        metrics = {"epoch": epoch, "val_accuracy": accuracy, "val_loss": val_loss, "train_loss": stats.mean_loss,
                   "lr": scheduler.get_last_lr()[0], "seconds": time.perf_counter() - progress.epoch_begin,
                   "train_seconds": train_seconds, "images": stats.samples}
        result.curve.append(metrics)
        result.accuracy, result.val_loss, result.epochs_run = accuracy, val_loss, epoch
        hold.pause()  # the pruning decision may wait on the driver: never with the device held
        if on_epoch is not None and on_epoch(epoch, metrics) and epoch < config.epochs:
            result.stopped_early = True
            break
