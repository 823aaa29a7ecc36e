"""The on-device batch pipeline (airbench style): images on the device once, batches by slicing.

:class:`DeviceData` holds the uint8 splits on the device, resizes them once per image size, and
makes batches by slicing, with random crop/flip and normalization done batched on the device:
no per-sample Python in the training loop. Loaders live in :mod:`nas.data`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def resize_uint8(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize ``(N, C, H, W)`` uint8 to ``size`` x ``size`` (done once per size, on the device); grey -> RGB."""
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[2:] == (size, size):
        return images.contiguous()
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8, device=images.device)
    for start in range(0, len(images), chunk):  # bounded float memory for large data sets
        part = images[start : start + chunk].float()
        out[start : start + chunk] = F.interpolate(part, size=(size, size), mode="bilinear", antialias=size < images.shape[2],
                                                   align_corners=False).round().clamp(0, 255).to(torch.uint8)
    return out



class DeviceData:
    """Training and validation tensors held once on ``device``; batches are slices.

        >>> from nas.data import load_dataset
        >>> ds = load_dataset("digits")
        >>> dd = DeviceData(*ds.split_validation(0.2, seed=0), device="cpu")
        >>> x, y = next(dd.train_batches(32, image_size=16, generator=torch.Generator().manual_seed(0)))
        >>> x.shape, x.dtype
        (torch.Size([32, 3, 16, 16]), torch.float32)
    """

    def __init__(self, train_images: torch.Tensor, train_labels: torch.Tensor, val_images: torch.Tensor,
                 val_labels: torch.Tensor, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.add_split("train", train_images, train_labels)
        self.add_split("val", val_images, val_labels)
        rgb = resize_uint8(self.train_images, self.train_images.shape[2]).float() / 255.0  # (N, 3, H, W)
        self.mean = rgb.mean((0, 2, 3)).view(1, 3, 1, 1)
        self.std = rgb.std((0, 2, 3)).clamp_min(1e-3).view(1, 3, 1, 1)
        self._resized: dict[tuple[str, int], torch.Tensor] = {}

    def add_split(self, name: str, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Hold another split (e.g. ``test``) on the device, normalized with the training statistics."""
        self.splits[name] = (images.to(self.device), labels.to(self.device))

    @property
    def train_images(self) -> torch.Tensor:
        return self.splits["train"][0]

    @property
    def train_labels(self) -> torch.Tensor:
        return self.splits["train"][1]

    @property
    def val_labels(self) -> torch.Tensor:
        return self.splits["val"][1]

    def images(self, split: str, size: int) -> torch.Tensor:
        """The split's images at ``size`` as uint8 (N, 3, size, size), resized once and cached."""
        key = (split, size)
        if key not in self._resized:
            self._resized = {k: v for k, v in self._resized.items() if k[0] != split}  # keep one size per split
            self._resized[key] = resize_uint8(self.splits[split][0], size)
        return self._resized[key]

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        return ((batch.float() / 255.0 if batch.dtype == torch.uint8 else batch) - self.mean) / self.std

    def train_batches(self, batch_size: int, image_size: int, generator: torch.Generator, *, crop_padding: int | None = None,
                      flip: bool = True, drop_last: bool = True,
                      augment: Callable[[torch.Tensor], torch.Tensor] | None = None):
        """One epoch of shuffled, augmented, normalized float batches ``(B, 3, S, S)`` with labels ``(B,)``.

        ``augment`` (e.g. RandAugment) gets the float batch in [0, 1] before normalization.
        """
        images = self.images("train", image_size)
        n = len(images)
        padding = max(1, image_size // 16) if crop_padding is None else crop_padding
        order = torch.randperm(n, generator=generator).to(self.device)
        # the augmentation randomness is drawn on the CPU generator: same seed, same batches
        shifts = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator).to(self.device) if padding else None
        flips = (torch.rand(n, generator=generator) < 0.5).to(self.device) if flip else None
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for start in range(0, stop, batch_size):
            index = order[start : start + batch_size]
            batch = images[index]  # (B, 3, S, S) uint8
            if padding:
                batch = random_crop(batch, padding, shifts[start : start + batch_size])
            if flip:
                batch = torch.where(flips[start : start + batch_size].view(-1, 1, 1, 1), batch.flip(3), batch)
            if augment is not None:
                batch = augment(batch.float() / 255.0)
            yield self.normalize(batch), self.train_labels[index]

    def eval_batches(self, batch_size: int, image_size: int, split: str = "val"):
        images, labels = self.images(split, image_size), self.splits[split][1]
        for start in range(0, len(images), batch_size):
            yield self.normalize(images[start : start + batch_size]), labels[start : start + batch_size]



def random_crop(batch: torch.Tensor, padding: int, shifts: torch.Tensor) -> torch.Tensor:
    """Per-sample crop of a reflect-padded batch: (B, C, S, S) -> (B, C, S, S); ``shifts`` (B, 2) in [0, 2p]."""
    b, _, h, w = batch.shape
    padded = F.pad(batch.float() if batch.dtype == torch.uint8 and batch.device.type == "cpu" else batch,
                   (padding,) * 4, mode="reflect" if padding < min(h, w) else "replicate")
    rows = shifts[:, 0:1] + torch.arange(h, device=batch.device)  # (B, H)
    cols = shifts[:, 1:2] + torch.arange(w, device=batch.device)  # (B, W)
    n = torch.arange(b, device=batch.device)[:, None, None]
    out = padded[n, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).to(batch.dtype).contiguous()

