"""The one training step and its settings: used by proxy training, final training and step timing alike.

:class:`OptimizerConfig` (:mod:`nas.configs`) holds what the step (and the schedule around it) is configured by: optimizer,
learning rate, weight decay, momentum, warm-up, label smoothing, validation split, seed and threads;
:class:`nas.configs.TrainConfig` and :class:`nas.schedule.ProgressiveConfig` extend it.
:class:`TrainStep` holds the model (channels_last on CUDA, optionally ``torch.compile``-d), the
optimizer (:func:`make_optimizer`: parameter groups, no weight decay on BN and biases) and the loss
(cross-entropy with label smoothing, optionally against mixup targets), and runs forward + backward +
optimizer step under bf16 autocast on CUDA. It never synchronizes with the host: the loss sum and a
"every loss was finite" flag are kept on the device and read once, by :meth:`TrainStep.drain_stats`.

    >>> from nas.model import build
    >>> from nas.zoo import get
    >>> step = TrainStep(build(get("efficientnetv2-b0", 10)), OptimizerConfig(optimizer="sgd"), "cpu")
    >>> loss = step(torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3]))
    >>> type(step.optimizer).__name__, step.loss.label_smoothing, step.drain_stats().finite
    ('SGD', 0.1, True)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from nas.configs import OptimizerConfig


def make_optimizer(model: torch.nn.Module, config: OptimizerConfig) -> torch.optim.Optimizer:
    """AdamW or SGD-nesterov over two parameter groups: weights with ``weight_decay``, BN and biases without."""
    # no weight decay on BN and biases (1-d parameters), as the reference code
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, nothing (fp32) elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def to_device_layout(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """channels_last on CUDA (tensor cores like NHWC), unchanged elsewhere."""
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


@dataclass(frozen=True)
class StepStats:
    """What :meth:`TrainStep.drain_stats` read from the device: loss summed over samples, steps, all finite."""

    loss_sum: float
    samples: int
    steps: int
    finite: bool

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(1, self.samples)


class TrainStep:
    """Forward + backward + optimizer step of ``model`` with the optimizer and loss that ``config`` asks for.

    ``step(x, y)`` trains on one batch; ``step(x, y, y_b, lam)`` on mixup targets
    (``lam * CE(y) + (1 - lam) * CE(y_b)``). Returns the loss tensor (not read: no host sync).
    """

    def __init__(self, model: torch.nn.Module, config: OptimizerConfig, device: str | torch.device, *,
                 compile: bool = False) -> None:
        self.device = torch.device(device)
        model = model.to(self.device).train()
        if self.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.model = model  # the module itself (state_dict, dropout, EMA); ``forward`` may be its compiled form
        self.forward = torch.compile(model) if compile else model
        self.compiled = compile
        self.optimizer = make_optimizer(model, config)
        self.loss = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self._loss_sum = torch.zeros((), device=self.device)
        self._finite = torch.ones((), dtype=torch.bool, device=self.device)
        self._samples = self._steps = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor, y_b: torch.Tensor | None = None, lam: float = 1.0) -> torch.Tensor:
        x = to_device_layout(x, self.device)
        with autocast(self.device):
            logits = self.forward(x)
            loss = self.loss(logits, y)
            if y_b is not None and lam < 1.0:
                loss = lam * loss + (1.0 - lam) * self.loss(logits, y_b)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        detached = loss.detach()
        # on the device: a NaN is found at the next drain_stats, not by a sync per step
        self._finite &= torch.isfinite(detached)
        self._loss_sum += detached.float() * len(y)
        self._samples += len(y)
        self._steps += 1
        return loss

    def drain_stats(self) -> StepStats:
        """Read (one host sync) and reset the loss sum and the finite flag since the last call."""
        loss_sum, finite = torch.stack([self._loss_sum, self._finite.float()]).tolist()
        stats = StepStats(loss_sum, self._samples, self._steps, finite == 1.0)
        self._loss_sum.zero_()
        self._finite.fill_(True)
        self._samples = self._steps = 0
        return stats

    def describe(self) -> dict[str, Any]:
        """The step's setup read off the live objects: optimizer class and settings, groups, loss, precision, layout."""
        groups = [{"params": sum(p.numel() for p in g["params"]), "tensors": len(g["params"]), "weight_decay": g["weight_decay"]}
                  for g in self.optimizer.param_groups]
        defaults = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.optimizer.defaults.items()
                    if isinstance(v, (bool, int, float, str, tuple, type(None)))}
        return {"optimizer": type(self.optimizer).__name__, "optimizer_defaults": defaults, "param_groups": groups,
                "loss": type(self.loss).__name__, "label_smoothing": self.loss.label_smoothing,
                "autocast": "bfloat16" if self.device.type == "cuda" else None,
                "channels_last": self.device.type == "cuda", "compiled": self.compiled, "device": self.device.type}
