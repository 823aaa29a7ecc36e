"""The Python API of the core package: build a model from an exported architecture, and wrap a user's own data.

    >>> import torch, nas
    >>> model = nas.create_model("efficientnetv2-b0", num_classes=10, in_chans=1)
    >>> model(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 10])

A sweep on your tensors or ``Dataset`` with your reward function is ``runners.api.search``: it needs the
driver, and this core package imports nothing above it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from nas.data import DataError, Dataset, hold_out_test
from nas.errors import InputError
from nas.io import load_spec as load_named_or_path
from nas.model import Network, build
from nas.spec import NetworkSpec

SpecSource = NetworkSpec | dict | str | Path


def load_spec(source: SpecSource, num_classes: int | None = None) -> NetworkSpec:
    """A :class:`NetworkSpec` from a NetworkSpec, a dict (a spec or an exported ``arch.json``), a path or a registry name."""
    if isinstance(source, NetworkSpec):
        spec = source
    elif isinstance(source, dict):
        spec = NetworkSpec.from_dict(source)  # an arch.json's {"spec", "provenance"} works too
    elif isinstance(source, (str, Path)):
        return load_named_or_path(str(source), num_classes)
    else:
        raise InputError(f"spec: a {type(source).__name__} is not allowed, allowed a NetworkSpec, a dict, a JSON path or a registry name")
    return spec.with_classes(num_classes) if num_classes is not None else spec


def create_model(spec_or_path: SpecSource, *, num_classes: int | None = None, in_chans: int = 3) -> Network:
    """An untrained ``nn.Module`` for an architecture (``arch.json``, a spec JSON, a registry name or a NetworkSpec).

    ``in_chans`` other than 3 (e.g. 1 for grey images) replaces the stem convolution by one with that
    many input channels (its weights the 3-channel initialization summed over channels and spread evenly).
    """
    model = build(load_spec(spec_or_path, num_classes))
    if not isinstance(in_chans, int) or isinstance(in_chans, bool) or in_chans < 1:
        raise InputError(f"in_chans: {in_chans!r} is not allowed, allowed an integer >= 1")
    if in_chans != 3:
        old = model.stem.conv
        new = torch.nn.Conv2d(in_chans, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
        with torch.no_grad():
            new.weight.copy_(old.weight.sum(dim=1, keepdim=True).repeat(1, in_chans, 1, 1) / in_chans)
        model.stem.conv = new
    return model


def _as_uint8(images: torch.Tensor, what: str) -> torch.Tensor:
    """(N, C, H, W) or (N, H, W) images, uint8 or floats in [0, 1], as uint8 (N, C, H, W)."""
    images = torch.as_tensor(images)
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if images.ndim != 4:
        raise DataError(f"{what}: images of shape {tuple(images.shape)}, allowed (N, C, H, W) or (N, H, W)")
    if images.dtype == torch.uint8:
        return images.contiguous()
    if not images.is_floating_point():
        raise DataError(f"{what}: images of dtype {images.dtype}, allowed uint8 or floats in [0, 1]")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise DataError(f"{what}: float images must lie in [0, 1], got {images.min():.3g}..{images.max():.3g}")
    return (images * 255).round().to(torch.uint8).contiguous()


def _from_dataset(dataset: torch.utils.data.Dataset, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ``(image, label)`` of a map-style ``torch.utils.data.Dataset``, stacked."""
    images, labels = [], []
    for index in range(len(dataset)):
        image, label = dataset[index]
        images.append(torch.as_tensor(image))
        labels.append(int(label))
    if not images:
        raise DataError(f"{what}: the Dataset is empty")
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def user_dataset(train: Any, test: Any = None, *, num_classes: int | None = None, name: str = "user data", seed: int = 0) -> Dataset:
    """A :class:`nas.data.Dataset` from ``(images, labels)`` tensors or a ``torch.utils.data.Dataset`` (and an optional test split).

    Without ``test``, a fixed 20% of ``train`` is held out as the test split (as for the built-in loaders).
    The name records what it is: shapes, counts and a content hash, so a study says which data it ran on.
    """
    splits = []
    for what, split in (("train", train), ("test", test)):
        if split is None:
            continue
        if isinstance(split, torch.utils.data.Dataset) and not isinstance(split, (tuple, list)):
            images, labels = _from_dataset(split, what)
        elif isinstance(split, (tuple, list)) and len(split) == 2:
            images, labels = split
        else:
            raise DataError(f"{what}: a {type(split).__name__} is not allowed, allowed (images, labels) or a torch.utils.data.Dataset")
        splits.append((_as_uint8(images, what), torch.as_tensor(labels).to(torch.int64).reshape(-1)))
    classes = num_classes or int(max(int(labels.max()) for _, labels in splits)) + 1
    digest = hashlib.sha256()
    for images, labels in splits:
        digest.update(images.numpy().tobytes())
        digest.update(labels.numpy().tobytes())
    shape = "x".join(map(str, splits[0][0].shape[1:]))
    counts = f"{len(splits[0][0])} train / {len(splits[1][0])} test images {shape}" if len(splits) > 1 else \
        f"{len(splits[0][0])} images {shape} (20% held out for test)"
    label = f"{name}: {counts}, {classes} classes, sha256 {digest.hexdigest()[:12]}"
    if len(splits) == 1:
        return hold_out_test(label, *splits[0], seed=seed, classes=classes, names=[str(i) for i in range(classes)])
    (train_images, train_labels), (test_images, test_labels) = splits
    return Dataset(label, train_images, train_labels, test_images, test_labels, classes, [str(i) for i in range(classes)])


def spec_json(spec: NetworkSpec) -> str:
    """The spec as the JSON text ``nas`` writes (for saving a spec built in Python)."""
    return json.dumps(spec.to_dict(), indent=2)
