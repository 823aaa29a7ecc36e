"""Regularization applied batched on the device during final training: RandAugment, mixup, EMA."""

from __future__ import annotations

import copy

import torch


def randaugment(magnitude: float, ops: int):
    if magnitude <= 0:
        return None
    from kornia.augmentation.auto import RandAugment

    return RandAugment(n=ops, m=int(round(max(1, magnitude))))



def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float, generator: torch.Generator):
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

