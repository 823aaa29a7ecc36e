"""Final training with progressive learning and adaptive regularization (EfficientNetV2, Algorithm 1).

Training is split into M stages; stage i (0-based) uses image size and regularization (dropout,
RandAugment magnitude, mixup alpha) interpolated linearly between the start and end values,
``v_i = start + (end - start) * i / (M - 1)``; the weights carry over between stages. ``--fixed``
trains every epoch at the end values (the baseline the paper compares against).

    >>> [s.image_size for s in schedule(ProgressiveConfig(epochs=8, stages=4, min_image_size=16, max_image_size=32))]
    [16, 21, 27, 32]
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from nas.data import Dataset, DeviceData
from nas.errors import InputError, check_ints
from nas.io import atomic_write_json
from nas.model import build
from nas.scaling import MEMBERS
from nas.spec import NetworkSpec
from nas.train import OptimizerConfig, autocast, evaluate, make_optimizer, pick_device, seed_everything, warmup_cosine

MAX_MAGNITUDE = 30.0  # kornia's RandAugment takes 0 < m < 30; 0 here means "off"


@dataclass(frozen=True)
class ProgressiveConfig(OptimizerConfig):
    """Settings of a final training run; ``min_*`` are the first stage's values, ``max_*`` the last's."""

    epochs: int = 12
    stages: int = 4
    progressive: bool = True
    min_image_size: int = 16
    max_image_size: int = 32
    eval_image_size: int | None = None
    min_randaugment: float = 0.0
    max_randaugment: float = 0.0
    min_mixup: float = 0.0
    max_mixup: float = 0.0
    min_dropout: float = 0.1
    max_dropout: float = 0.2
    randaugment_ops: int = 2
    batch_size: int = 128
    ema_decay: float | None = None
    validation_fraction: float = 0.1

    def __post_init__(self) -> None:
        check_ints(self, (("epochs", 1), ("stages", 1), ("min_image_size", 8), ("max_image_size", 8), ("batch_size", 2),
                          ("randaugment_ops", 1)))
        if self.stages > self.epochs:
            raise InputError(f"stages: {self.stages} is more than epochs {self.epochs}, allowed 1..{self.epochs}")
        if self.max_image_size < self.min_image_size:
            raise InputError(f"max_image_size: {self.max_image_size} is below min_image_size {self.min_image_size}")
        for name in ("min_randaugment", "max_randaugment"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value < MAX_MAGNITUDE:
                raise InputError(f"{name}: {value!r} is outside RandAugment's range, allowed [0, {MAX_MAGNITUDE:g}) (0 = off)")
        for name, high in (("min_mixup", 10.0), ("max_mixup", 10.0), ("min_dropout", 0.95), ("max_dropout", 0.95)):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value <= high:
                raise InputError(f"{name}: {value!r} is not allowed, allowed [0, {high:g}]")
        super().__post_init__()
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise InputError(f"ema_decay: {self.ema_decay!r} is not allowed, allowed (0, 1)")
        if self.eval_image_size is not None and self.eval_image_size < 8:
            raise InputError(f"eval_image_size: {self.eval_image_size!r} is not allowed, allowed >= 8")

    @classmethod
    def for_member(cls, member: str, **overrides: Any) -> ProgressiveConfig:
        """The paper's settings of family member ``s``, ``m`` or ``l`` (see :data:`nas.scaling.MEMBERS`)."""
        if member not in MEMBERS:
            raise InputError(f"member: unknown member {member!r}, allowed {', '.join(MEMBERS)}")
        m = MEMBERS[member]
        values = {**asdict(m.progressive), "eval_image_size": m.eval_image_size}
        return cls(**{**values, **{k: v for k, v in overrides.items() if v is not None}})


@dataclass(frozen=True)
class Stage:
    """One stage of the schedule: epochs ``[first_epoch, last_epoch]`` (1-based) and its settings."""

    index: int
    first_epoch: int
    last_epoch: int
    image_size: int
    dropout: float
    randaugment: float
    mixup: float


def _lerp(start: float, end: float, i: int, stages: int) -> float:
    return end if stages == 1 else start + (end - start) * i / (stages - 1)


def schedule(config: ProgressiveConfig) -> list[Stage]:
    """The per-stage settings (pure). Epochs split evenly; earlier stages take any remainder."""
    base, extra = divmod(config.epochs, config.stages)
    stages, first = [], 1
    for i in range(config.stages):
        count = base + (1 if i < extra else 0)
        if config.progressive:
            values = (round(_lerp(config.min_image_size, config.max_image_size, i, config.stages)),
                      _lerp(config.min_dropout, config.max_dropout, i, config.stages),
                      _lerp(config.min_randaugment, config.max_randaugment, i, config.stages),
                      _lerp(config.min_mixup, config.max_mixup, i, config.stages))
        else:
            values = (config.max_image_size, config.max_dropout, config.max_randaugment, config.max_mixup)
        stages.append(Stage(i, first, first + count - 1, int(values[0]), *values[1:]))
        first += count
    return stages


def _randaugment(magnitude: float, ops: int):
    if magnitude <= 0:
        return None
    from kornia.augmentation.auto import RandAugment

    return RandAugment(n=ops, m=int(round(max(1, magnitude))))


def _mixup(x: torch.Tensor, y: torch.Tensor, alpha: float, generator: torch.Generator):
    """Batched mixup: (mixed x, y, y of the partner, lambda); lambda ~ Beta(alpha, alpha)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample()) if alpha > 0 else 1.0
    perm = torch.randperm(len(x), generator=generator).to(x.device)
    return lam * x + (1 - lam) * x[perm], y, y[perm], lam


class EMA:
    """Exponential moving average of the weights (buffers copied), evaluated instead of the raw model."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval()
        self.decay = decay
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for ema, p in zip(self.model.parameters(), model.parameters()):
            ema.lerp_(p.detach(), 1 - self.decay)
        for ema, b in zip(self.model.buffers(), model.buffers()):
            ema.copy_(b)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a kill mid-save leaves the previous checkpoint intact


def train_progressive(spec: NetworkSpec, data: Dataset, config: ProgressiveConfig, out_dir: str | Path,
                      device: str | None = None, log=print,
                      on_epoch_end: Callable[[int, Stage, torch.nn.Module], None] | None = None) -> dict[str, Any]:
    """Train ``spec`` on ``data`` with the schedule of ``config``; resume from ``out_dir`` if a checkpoint is there.

    Writes ``checkpoint.pt`` every epoch, then ``summary.json`` and ``curves.png``. Returns the summary.
    ``on_epoch_end(epoch, stage, model)`` runs after each epoch's checkpoint (logging, inspection).
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
    model = build(spec).to(torch_device)
    if torch_device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config)
    steps_per_epoch = max(1, len(data_dev.train_labels) // config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config.epochs * steps_per_epoch,
                                                                           int(config.warmup_epochs * steps_per_epoch)))
    ema = EMA(model, config.ema_decay) if config.ema_decay else None
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, Any]] = []
    start_epoch, train_seconds = 1, 0.0
    checkpoint_path = out / "checkpoint.pt"
    identity = {"spec": spec.to_dict(), "config": asdict(config), "data": data.name}
    if checkpoint_path.is_file():
        state = torch.load(checkpoint_path, weights_only=True, map_location=torch_device)
        if json.loads(state["identity"]) != json.loads(json.dumps(identity)):
            raise InputError(f"--out: {out} holds a checkpoint of another run (spec, data or settings differ); use another --out")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.model.load_state_dict(state["ema"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history, start_epoch, train_seconds = json.loads(state["history"]), int(state["epoch"]) + 1, float(state["train_seconds"])
        log(f"resuming from {checkpoint_path} after epoch {start_epoch - 1}")

    for stage in plan:
        if stage.last_epoch < start_epoch:
            continue
        model.set_dropout(stage.dropout)
        augment = _randaugment(stage.randaugment, config.randaugment_ops)
        log(f"stage {stage.index + 1}/{len(plan)}: epochs {stage.first_epoch}-{stage.last_epoch}, image {stage.image_size}, "
            f"dropout {stage.dropout:.3f}, RandAugment {stage.randaugment:.1f}, mixup {stage.mixup:.2f}")
        for epoch in range(max(stage.first_epoch, start_epoch), stage.last_epoch + 1):
            begin, loss_sum, seen = time.perf_counter(), 0.0, 0
            model.train()
            for x, y in data_dev.train_batches(config.batch_size, stage.image_size, generator, augment=augment):
                if torch_device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                x, y_a, y_b, lam = _mixup(x, y, stage.mixup, generator) if stage.mixup > 0 else (x, y, y, 1.0)
                with autocast(torch_device):
                    logits = model(x)
                    loss = lam * F.cross_entropy(logits, y_a, label_smoothing=config.label_smoothing)
                    if lam < 1.0:
                        loss = loss + (1 - lam) * F.cross_entropy(logits, y_b, label_smoothing=config.label_smoothing)
                if not torch.isfinite(loss):
                    raise RuntimeError(f"non-finite loss at epoch {epoch}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                if ema is not None:
                    ema.update(model)
                loss_sum += float(loss.detach()) * len(y)
                seen += len(y)
            seconds = time.perf_counter() - begin
            train_seconds += seconds
            evaluated = ema.model if ema is not None else model
            accuracy, val_loss = evaluate(evaluated, data_dev.eval_batches(512, stage.image_size), torch_device)
            history.append({"epoch": epoch, "stage": stage.index, "image_size": stage.image_size, "train_loss": loss_sum / max(1, seen),
                            "val_accuracy": accuracy, "val_loss": val_loss, "seconds": seconds, "lr": scheduler.get_last_lr()[0]})
            log(f"epoch {epoch}/{config.epochs}: train loss {loss_sum / max(1, seen):.4f}, val accuracy {accuracy:.4f} ({seconds:.1f} s)")
            _save_checkpoint(checkpoint_path, {
                "identity": json.dumps(identity), "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "ema": ema.model.state_dict() if ema is not None else {},
                "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "history": json.dumps(history),
                "train_seconds": train_seconds,
            })
            if on_epoch_end is not None:
                on_epoch_end(epoch, stage, model)
    final = ema.model if ema is not None else model
    eval_size = config.eval_image_size or config.max_image_size
    test_accuracy, test_loss = evaluate(final, data_dev.eval_batches(512, eval_size, split="test"), torch_device)
    summary = {
        "spec": spec.name, "data": data.name, "mode": "progressive" if config.progressive else "fixed", "epochs": config.epochs,
        "test_accuracy": test_accuracy, "test_loss": test_loss, "eval_image_size": eval_size, "train_seconds": train_seconds,
        "schedule": [asdict(s) for s in plan], "history": history, "config": asdict(config), "device": str(torch_device),
        "torch_version": torch.__version__,
    }
    atomic_write_json(out / "summary.json", summary)
    plot_curves(history, plan, out / "curves.png")
    return summary


def plot_curves(history: list[dict[str, Any]], plan: list[Stage], path: Path) -> None:
    """Loss and accuracy per epoch, stage boundaries as vertical lines labelled with their image size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [h["epoch"] for h in history]
    left.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    left.plot(epochs, [h["val_loss"] for h in history], label="val loss")
    right.plot(epochs, [h["val_accuracy"] for h in history], color="C2", label="val accuracy")
    for axis in (left, right):
        for stage in plan:
            axis.axvline(stage.first_epoch - 0.5, color="grey", linestyle=":", linewidth=1)
            axis.text(stage.first_epoch - 0.4, 1.0, f"{stage.image_size}px", transform=axis.get_xaxis_transform(), fontsize=8,
                      va="top", color="grey")
        axis.set_xlabel("epoch")
        axis.legend(loc="center right")
    left.set_title("loss")
    right.set_title("validation accuracy")
    figure.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    figure.savefig(tmp, dpi=100)
    plt.close(figure)
    os.replace(tmp, path)


def explicit_config(base: ProgressiveConfig, **overrides: Any) -> ProgressiveConfig:
    """``base`` with the non-None ``overrides`` applied (and validated)."""
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})



