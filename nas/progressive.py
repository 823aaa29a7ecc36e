"""Final training with progressive learning and adaptive regularization (EfficientNetV2, Algorithm 1).

The schedule is :mod:`nas.schedule`; RandAugment, mixup and EMA are :mod:`nas.regularize`;
curves are drawn by :func:`nas.plots.plot_curves` after training.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from nas import checkpoint
from nas.cores import use_threads
from nas.data import Dataset
from nas.io import atomic_write_json
from nas.lock import DeviceLock, TrainerHold, trace_device_work
from nas.model import build
from nas.pipeline import DeviceData
from nas.regularize import EMA, mixup, randaugment
from nas.schedule import ProgressiveConfig, Stage, schedule
from nas.spec import NetworkSpec
from nas.step import StepStats, TrainStep, autocast
from nas.train import NonFiniteLoss, Progress, ProgressCallback, evaluate, pick_device, seed_everything, warmup_cosine

BATCHNORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)


def _recalibrate(model: torch.nn.Module, data_dev: DeviceData, config: ProgressiveConfig, *, image_size: int, key: int) -> None:
    """BN statistics re-estimated at ``image_size`` on un-augmented training batches (own generator: resume-safe)."""
    generator = torch.Generator().manual_seed(config.seed * 1000 + key)
    batches = data_dev.train_batches(config.batch_size, image_size, generator, crop_padding=0, flip=False)
    reestimate_batchnorm(model, islice(batches, config.batchnorm_batches), data_dev.device)



@torch.no_grad()
def reestimate_batchnorm(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> int:
    """Replace every BatchNorm's running statistics by their plain average over ``batches``; returns the batch count.

    Only the BN layers run in train mode (no dropout, no stochastic depth); the weights do not change.

        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
        >>> reestimate_batchnorm(net, [(torch.randn(8, 3, 9, 9) + 5, None)], torch.device("cpu"))
        1
    """
    norms = [m for m in model.modules() if isinstance(m, BATCHNORMS)]
    was_training, momenta = model.training, [m.momentum for m in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # None: cumulative average over the batches seen
        norm.train()
    count = 0
    for x, _ in batches:
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device):
            model(x)
        count += 1
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.train(was_training)
    return count


def _train_epoch(step: TrainStep, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], *, hold: TrainerHold,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, ema: EMA | None, mixup_alpha: float,
                 generator: torch.Generator, progress: Progress, epoch: int) -> StepStats:
    """One epoch of steps, each batch (made, mixed, stepped, averaged) one unit of device work; no host sync per step."""
    progress.start_epoch()
    device = step.device
    # the mixup permutation is drawn on the device, from a generator seeded by the (checkpointed) CPU generator
    device_generator = (torch.Generator(device=device).manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
                        if mixup_alpha > 0 else None)
    count = images = 0
    while True:
        with hold.work(), trace_device_work("train"):
            batch = next(batches, None)
            if batch is None:
                break
            x, y_a, y_b, lam = mixup(*batch, mixup_alpha, generator=generator, device_generator=device_generator) if mixup_alpha > 0 else (*batch, batch[1], 1.0)
            step(x, y_a, y_b, lam)
            scheduler.step()
            if ema is not None:
                ema.update(step.model)
        count, images = count + 1, images + len(y_a)
        if progress.due():
            hold.pause()
            progress.report(epoch, count, images)
    with hold.work(), trace_device_work("train"):
        return step.drain_stats()  # one host sync per epoch


def train_progressive(spec: NetworkSpec, data: Dataset, config: ProgressiveConfig, *, out_dir: str | Path,
                      device: str | None = None, log=print,
                      on_epoch_end: Callable[[int, Stage, torch.nn.Module], None] | None = None,
                      lock: DeviceLock | None = None, on_progress: ProgressCallback | None = None,
                      progress_interval: float = 5.0) -> dict[str, Any]:
    """Train ``spec`` on ``data`` with the schedule of ``config``; resume from ``out_dir`` if a checkpoint is there.

    Writes ``checkpoint.pt`` every epoch, then ``summary.json``. Returns the summary.
    ``on_epoch_end(epoch, stage, model)`` runs after each epoch's checkpoint (logging, inspection).
    Device work runs under ``lock``'s shared hold (``nas train`` passes the device's
    :class:`~nas.lock.DeviceLock`, so a sweep's timer on the same device is not disturbed);
    ``on_progress`` as in :func:`nas.train.train_proxy`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch_device = pick_device(device)
    if config.threads:
        use_threads(config.threads)
    spec = spec.with_classes(data.num_classes)
    plan = schedule(config)
    data_dev = DeviceData(*data.split_validation(config.validation_fraction, seed=0), device=torch_device)
    data_dev.add_split("test", data.test_images, data.test_labels)
    seed_everything(config.seed, torch_device.type == "cpu")
    run = _ProgressiveRun(spec, data_dev, config, out=out, log=log, on_progress=on_progress, progress_interval=progress_interval)
    run.resume(checkpoint.identity(spec, config, data.name))
    with (lock or DeviceLock("none", enabled=False)).trainer(torch_device) as hold:
        for stage in plan:
            if stage.last_epoch >= run.start_epoch:
                run.train_stage(stage, plan, hold=hold, on_epoch_end=on_epoch_end)
        eval_size = config.eval_image_size or config.max_image_size
        test_accuracy, test_loss = run.test(eval_size, plan, hold=hold)
    summary = {
        "spec": spec.name, "data": data.name, "mode": "progressive" if config.progressive else "fixed", "epochs": config.epochs,
        "test_accuracy": test_accuracy, "test_loss": test_loss, "eval_image_size": eval_size, "train_seconds": run.train_seconds,
        "train_cpu_seconds": sum(h.get("cpu_seconds", 0.0) for h in run.history),
        "schedule": [asdict(s) for s in plan], "history": run.history, "config": asdict(config), "device": str(torch_device),
        "torch_version": torch.__version__,
    }
    atomic_write_json(out / "summary.json", summary)
    return summary


class _ProgressiveRun:
    """One run of :func:`train_progressive`: the step (the same as proxy training and timing), its schedule, EMA
    and generator, and the history so far; all of it is checkpointed after every epoch and restored on resume.
    """

    def __init__(self, spec: NetworkSpec, data_dev: DeviceData, config: ProgressiveConfig, *, out: Path, log: Callable[[str], None],
                 on_progress: ProgressCallback | None, progress_interval: float) -> None:
        self.data_dev, self.config, self.device, self.out, self.log = data_dev, config, data_dev.device, out, log
        self.step = TrainStep(build(spec), config, self.device)
        self.steps_per_epoch = max(1, len(data_dev.train_labels) // config.batch_size)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.step.optimizer, warmup_cosine(config.epochs * self.steps_per_epoch, int(config.warmup_epochs * self.steps_per_epoch)))
        self.ema = EMA(self.step.model, config.ema_decay) if config.ema_decay else None
        self.generator = torch.Generator().manual_seed(config.seed)
        self.on_progress, self.progress_interval = on_progress, progress_interval
        self.history: list[dict[str, Any]] = []
        self.start_epoch, self.train_seconds = 1, 0.0
        self.identity: dict[str, Any] = {}

    @property
    def evaluated(self) -> torch.nn.Module:
        """The weights validated and tested: the EMA's when there is one."""
        return self.ema.model if self.ema is not None else self.step.model

    def resume(self, identity: dict[str, Any]) -> None:
        """Restore the newest checkpoint of this run in ``out`` (falls back to ``checkpoint.prev.pt``), if any."""
        self.identity = identity
        state = checkpoint.load(self.out, identity, self.config.epochs, device=self.device, log=self.log)
        if state is None:
            return
        self.step.model.load_state_dict(state["model"])
        self.step.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.model.load_state_dict(state["ema"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.history, self.start_epoch = json.loads(state["history"]), int(state["epoch"]) + 1
        self.train_seconds = float(state["train_seconds"])

    def save(self, epoch: int) -> None:
        checkpoint.save(self.out, {
            "identity": json.dumps(self.identity), "epoch": epoch, "model": self.step.model.state_dict(),
            "optimizer": self.step.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.model.state_dict() if self.ema is not None else {},
            "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(), "history": json.dumps(self.history),
            "train_seconds": self.train_seconds,
        })

    def train_stage(self, stage: Stage, plan: list[Stage], *, hold: TrainerHold,
                    on_epoch_end: Callable[[int, Stage, torch.nn.Module], None] | None) -> None:
        """The stage's epochs not yet trained, each checkpointed; BN statistics re-estimated when the image size changes."""
        self.step.model.set_dropout(stage.dropout)
        resized = stage.index > 0 and stage.image_size != plan[stage.index - 1].image_size
        augment = randaugment(stage.randaugment, self.config.randaugment_ops)
        self.log(f"stage {stage.index + 1}/{len(plan)}: epochs {stage.first_epoch}-{stage.last_epoch}, image {stage.image_size}, "
                 f"dropout {stage.dropout:.3f}, RandAugment {stage.randaugment:.1f}, mixup {stage.mixup:.2f}")
        for epoch in range(max(stage.first_epoch, self.start_epoch), stage.last_epoch + 1):
            self.train_epoch(stage, epoch, hold=hold, augment=augment, recalibrate=resized and epoch == stage.first_epoch)
            hold.pause()  # logging and the checkpoint write happen with the device free
            entry = self.history[-1]
            self.log(f"epoch {epoch}/{self.config.epochs}: train loss {entry['train_loss']:.4f}, "
                     f"val accuracy {entry['val_accuracy']:.4f} ({entry['seconds']:.1f} s)")
            self.save(epoch)
            if on_epoch_end is not None:
                on_epoch_end(epoch, stage, self.step.model)

    def train_epoch(self, stage: Stage, epoch: int, *, hold: TrainerHold, augment: Callable | None, recalibrate: bool) -> None:
        """Train and validate one epoch; its entry goes to ``history``."""
        config, begin, cpu_begin = self.config, time.perf_counter(), time.process_time()
        if config.batchnorm_batches and recalibrate:  # timed: part of training
            with hold.work():
                _recalibrate(self.step.model, self.data_dev, config, image_size=stage.image_size, key=stage.index)  # new size
        batches = self.data_dev.train_batches(config.batch_size, stage.image_size, self.generator, augment=augment)
        stats = _train_epoch(self.step, batches, hold=hold, scheduler=self.scheduler, ema=self.ema, mixup_alpha=stage.mixup,
                             generator=self.generator, epoch=epoch,
                             progress=Progress(self.on_progress, config.epochs, self.steps_per_epoch, self.progress_interval))
        if not stats.finite:
            raise NonFiniteLoss(f"non-finite loss at epoch {epoch}")
        seconds, cpu_seconds = time.perf_counter() - begin, time.process_time() - cpu_begin
        self.train_seconds += seconds
        accuracy, val_loss = evaluate(self.evaluated, self.data_dev.eval_batches(512, stage.image_size), self.device, work=hold.work)
        self.history.append({"epoch": epoch, "stage": stage.index, "image_size": stage.image_size,
                             "train_loss": stats.loss_sum / max(1, stats.samples), "val_accuracy": accuracy, "val_loss": val_loss,
                             "seconds": seconds, "cpu_seconds": cpu_seconds, "lr": self.scheduler.get_last_lr()[0]})

    def test(self, eval_size: int, plan: list[Stage], *, hold: TrainerHold) -> tuple[float, float]:
        """(accuracy, loss) on the test split at ``eval_size``; BN statistics re-estimated there if training ended at another size."""
        final = self.evaluated
        if self.config.batchnorm_batches and eval_size != plan[-1].image_size:
            with hold.work():
                _recalibrate(final, self.data_dev, self.config, image_size=eval_size, key=len(plan))  # train/test size discrepancy
        return evaluate(final, self.data_dev.eval_batches(512, eval_size, split="test"), self.device, work=hold.work)
