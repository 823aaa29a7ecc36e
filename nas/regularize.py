"""Regularization applied batched on the device during final training: RandAugment, mixup, EMA."""

from __future__ import annotations

import copy

import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn


def randaugment(magnitude: float, ops: int):
    if magnitude <= 0:
        return None
    from kornia.augmentation.auto import RandAugment

    return RandAugment(n=ops, m=int(round(max(1, magnitude))))



def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float, *, generator: torch.Generator,
          device_generator: torch.Generator | None = None):
    """Batched mixup: (mixed x, y, y of the partner, lambda); lambda ~ Beta(alpha, alpha).

    lambda is drawn on the host from ``generator`` (a CPU tensor: no device sync); the permutation is
    drawn on ``x``'s device from ``device_generator`` (none: the device's default generator), so
    nothing is copied to the device per step.
    """
    lam = float(torch.distributions.Beta(alpha, alpha).sample()) if alpha > 0 else 1.0
    perm = torch.randperm(len(x), device=x.device, generator=device_generator)  # (B,) on the device
    return lam * x + (1 - lam) * x[perm], y, y[perm], lam


class EMA:
    """Exponential moving average of the weights, evaluated instead of the raw model; buffers (BN statistics) copied.

    One multi-tensor update per step for the weights and one for the floating-point buffers
    (``torch.optim.swa_utils.get_ema_multi_avg_fn``), instead of a Python loop over tensors.
    Integer buffers (BN's ``num_batches_tracked``) are not followed: evaluation does not read them.

        >>> net = torch.nn.Linear(2, 2)
        >>> ema = EMA(net, 0.5)
        >>> with torch.no_grad():
        ...     _ = net.weight.add_(2.0)
        >>> ema.update(net)
        >>> torch.allclose(ema.model.weight, net.weight - 1.0)
        True
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval()
        self.decay = decay
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.average = get_ema_multi_avg_fn(decay)
        self.copy = get_ema_multi_avg_fn(0.0)  # lerp by 1: a copy, in one multi-tensor call

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.average(list(self.model.parameters()), list(model.parameters()), None)  # under no_grad: no detach needed
        pairs = [(e, b) for e, b in zip(self.model.buffers(), model.buffers()) if e.is_floating_point()]
        if pairs:
            self.copy([e for e, _ in pairs], [b for _, b in pairs], None)
