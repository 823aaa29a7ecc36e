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


def _recalibrate(model: torch.nn.Module, data_dev: DeviceData, config: ProgressiveConfig, image_size: int, key: int,
                 device: torch.device) -> None:
    """BN statistics re-estimated at ``image_size`` on un-augmented training batches (own generator: resume-safe)."""
    generator = torch.Generator().manual_seed(config.seed * 1000 + key)
    batches = data_dev.train_batches(config.batch_size, image_size, generator, crop_padding=0, flip=False)
    reestimate_batchnorm(model, islice(batches, config.batchnorm_batches), device)



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
            x, y_a, y_b, lam = mixup(*batch, mixup_alpha, generator, device_generator) if mixup_alpha > 0 else (*batch, batch[1], 1.0)
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


def train_progressive(spec: NetworkSpec, data: Dataset, config: ProgressiveConfig, out_dir: str | Path, *,
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
        torch.set_num_threads(config.threads)
    spec = spec.with_classes(data.num_classes)
    plan = schedule(config)
    data_dev = DeviceData(*data.split_validation(config.validation_fraction, seed=0), device=torch_device)
    data_dev.add_split("test", data.test_images, data.test_labels)
    seed_everything(config.seed, torch_device.type == "cpu")
    step = TrainStep(build(spec), config, torch_device)  # the same step as proxy training and timing
    model, optimizer = step.model, step.optimizer
    steps_per_epoch = max(1, len(data_dev.train_labels) // config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config.epochs * steps_per_epoch,
                                                                           int(config.warmup_epochs * steps_per_epoch)))
    ema = EMA(model, config.ema_decay) if config.ema_decay else None
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, Any]] = []
    start_epoch, train_seconds = 1, 0.0
    identity = checkpoint.identity(spec, config, data.name)
    state = checkpoint.load(out, identity, config.epochs, torch_device, log)  # falls back to checkpoint.prev.pt
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.model.load_state_dict(state["ema"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history, start_epoch, train_seconds = json.loads(state["history"]), int(state["epoch"]) + 1, float(state["train_seconds"])

    device_lock = lock or DeviceLock("none", enabled=False)
    with device_lock.trainer(torch_device) as hold:
        for stage in plan:
            if stage.last_epoch < start_epoch:
                continue
            model.set_dropout(stage.dropout)
            resized = stage.index > 0 and stage.image_size != plan[stage.index - 1].image_size
            augment = randaugment(stage.randaugment, config.randaugment_ops)
            log(f"stage {stage.index + 1}/{len(plan)}: epochs {stage.first_epoch}-{stage.last_epoch}, image {stage.image_size}, "
                f"dropout {stage.dropout:.3f}, RandAugment {stage.randaugment:.1f}, mixup {stage.mixup:.2f}")
            for epoch in range(max(stage.first_epoch, start_epoch), stage.last_epoch + 1):
                begin, cpu_begin = time.perf_counter(), time.process_time()
                if config.batchnorm_batches and resized and epoch == stage.first_epoch:  # timed: part of training
                    with hold.work():
                        _recalibrate(model, data_dev, config, stage.image_size, stage.index, torch_device)  # stats of the new size
                batches = data_dev.train_batches(config.batch_size, stage.image_size, generator, augment=augment)
                stats = _train_epoch(step, batches, hold=hold, scheduler=scheduler, ema=ema, mixup_alpha=stage.mixup,
                                     generator=generator, progress=Progress(on_progress, config.epochs, steps_per_epoch,
                                                                            progress_interval), epoch=epoch)
                if not stats.finite:
                    raise NonFiniteLoss(f"non-finite loss at epoch {epoch}")
                loss_sum, seen = stats.loss_sum, stats.samples
                seconds, cpu_seconds = time.perf_counter() - begin, time.process_time() - cpu_begin
                train_seconds += seconds
                evaluated = ema.model if ema is not None else model
                accuracy, val_loss = evaluate(evaluated, data_dev.eval_batches(512, stage.image_size), torch_device, work=hold.work)
                hold.pause()  # logging and the checkpoint write happen with the device free
                history.append({"epoch": epoch, "stage": stage.index, "image_size": stage.image_size,
                                "train_loss": loss_sum / max(1, seen), "val_accuracy": accuracy, "val_loss": val_loss,
                                "seconds": seconds, "cpu_seconds": cpu_seconds, "lr": scheduler.get_last_lr()[0]})
                log(f"epoch {epoch}/{config.epochs}: train loss {loss_sum / max(1, seen):.4f}, val accuracy {accuracy:.4f} "
                    f"({seconds:.1f} s)")
                checkpoint.save(out, {
                    "identity": json.dumps(identity), "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "ema": ema.model.state_dict() if ema is not None else {},
                    "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "history": json.dumps(history),
                    "train_seconds": train_seconds,
                })
                if on_epoch_end is not None:
                    on_epoch_end(epoch, stage, model)
        final = ema.model if ema is not None else model
        eval_size = config.eval_image_size or config.max_image_size
        if config.batchnorm_batches and eval_size != plan[-1].image_size:
            with hold.work():
                _recalibrate(final, data_dev, config, eval_size, len(plan), torch_device)  # train/test size discrepancy
        test_accuracy, test_loss = evaluate(final, data_dev.eval_batches(512, eval_size, split="test"), torch_device,
                                            work=hold.work)
    summary = {
        "spec": spec.name, "data": data.name, "mode": "progressive" if config.progressive else "fixed", "epochs": config.epochs,
        "test_accuracy": test_accuracy, "test_loss": test_loss, "eval_image_size": eval_size, "train_seconds": train_seconds,
        "train_cpu_seconds": sum(h.get("cpu_seconds", 0.0) for h in history),
        "schedule": [asdict(s) for s in plan], "history": history, "config": asdict(config), "device": str(torch_device),
        "torch_version": torch.__version__,
    }
    atomic_write_json(out / "summary.json", summary)
    return summary
