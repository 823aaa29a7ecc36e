"""Compound scaling (pure functions on specs).

``scale(spec, width, depth)`` is the EfficientNet rule of the reference code: channels
``round_filters`` (multiples of 8, never more than 10% below the exact product), layers
``ceil(layers * depth)``, stem and head scaled with the same width rule.

    >>> from nas.zoo import get
    >>> scale(get("efficientnet-b0"), 1.1, 1.2).stages[0].output_channels
    16
"""

from __future__ import annotations

import math
from dataclasses import replace

from nas.spec import NetworkSpec, SpecError


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Channels under a width multiplier, rounded to ``divisor`` with the reference's 10% guard.

        >>> round_filters(320, 1.1), round_filters(40, 1.2)
        (352, 48)
    """
    exact = channels * width
    rounded = max(divisor, int(exact + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * exact:  # never round down by more than 10%
        rounded += divisor
    return int(rounded)


def round_repeats(layers: int, depth: float) -> int:
    """Layers under a depth multiplier: ``ceil(layers * depth)``."""
    return int(math.ceil(layers * depth))


def _check_multiplier(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or not 0 < value <= 16:
        raise SpecError(f"{name}: {value!r} is not allowed, allowed a number in (0, 16]")


def scale(spec: NetworkSpec, width: float, depth: float, name: str | None = None) -> NetworkSpec:
    """Scale ``spec`` uniformly by ``width`` (channels) and ``depth`` (layers per stage).

    Image sizes and regularization are copied; use :func:`dataclasses.replace` to change them.
    """
    _check_multiplier("width", width)
    _check_multiplier("depth", depth)
    stages = tuple(
        replace(
            stage,
            layers=round_repeats(stage.layers, depth),
            input_channels=round_filters(stage.input_channels, width),
            output_channels=round_filters(stage.output_channels, width),
        )
        for stage in spec.stages
    )
    return replace(
        spec,
        name=name or f"{spec.name}-w{width:g}-d{depth:g}",
        stem_channels=round_filters(spec.stem_channels, width),
        head_channels=round_filters(spec.head_channels, width),
        stages=stages,
    )
