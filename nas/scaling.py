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
from dataclasses import dataclass, replace
from typing import Any

from nas.errors import check_number
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


def scale(spec: NetworkSpec, width: float, depth: float, *, name: str | None = None) -> NetworkSpec:
    """Scale ``spec`` uniformly by ``width`` (channels) and ``depth`` (layers per stage).

    Image sizes and regularization are copied; use :func:`dataclasses.replace` to change them.
    """
    for field, value in (("width", width), ("depth", depth)):
        check_number(field, value, low=0, high=16, low_open=True, error=SpecError)
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


# ---- the S / M / L family rule --------------------------------------------------------------
@dataclass(frozen=True)
class ProgressiveSettings:
    """Progressive-learning ranges of a member (Algorithm 1): start -> end over the training stages."""

    min_image_size: int
    max_image_size: int
    min_randaugment: float
    max_randaugment: float
    min_mixup: float
    max_mixup: float
    min_dropout: float
    max_dropout: float


@dataclass(frozen=True)
class Member:
    """One family member's scaling coefficients and training settings (literal data, from the paper)."""

    name: str
    width: float
    depth: float
    late_depth_bonus: float  # extra depth factor for the later stride-1 stages
    append_stage: bool  # append a wider stride-1 stage (M and L)
    train_image_size: int
    eval_image_size: int
    progressive: ProgressiveSettings


MAX_EVAL_IMAGE_SIZE = 480  # the paper caps inference image size
APPENDED_WIDTH = 5 / 3  # 304 -> 512 (M), 384 -> 640 (L)
APPENDED_DEPTH = 0.28  # 18 -> 5 (M), 25 -> 7 (L)

MEMBERS: dict[str, Member] = {
    "s": Member("s", 1.4, 1.8, 0.0, False, 300, 384, ProgressiveSettings(128, 300, 5, 10, 0.0, 0.0, 0.1, 0.2)),
    "m": Member("m", 1.6, 2.2, 0.25, True, 384, 480, ProgressiveSettings(128, 384, 5, 15, 0.0, 0.2, 0.1, 0.3)),
    "l": Member("l", 2.0, 3.1, 0.25, True, 384, 480, ProgressiveSettings(128, 384, 5, 20, 0.0, 0.5, 0.1, 0.4)),
}


def _member(member: Member | str) -> Member:
    if isinstance(member, Member):
        return member
    if member not in MEMBERS:
        raise SpecError(f"member: unknown member {member!r}, allowed {', '.join(MEMBERS)}")
    return MEMBERS[member]


def member_settings(member: Member | str) -> dict[str, Any]:
    """The spec fields a member sets: train/eval image sizes (eval capped at 480) and dropout.

        >>> member_settings("m")
        {'train_image_size': 384, 'eval_image_size': 480, 'dropout': 0.3}
    """
    member = _member(member)
    return {"train_image_size": member.train_image_size, "eval_image_size": min(member.eval_image_size, MAX_EVAL_IMAGE_SIZE),
            "dropout": member.progressive.max_dropout}


def scale_member(base: NetworkSpec, member: Member | str) -> NetworkSpec:
    """Scale ``base`` into one family member (pure), following the EfficientNetV2 paper:

    1. compound width/depth multipliers (``round_filters``, ``ceil``) on every stage;
    2. non-uniform depth: stride-1 stages in the later half of the network get ``late_depth_bonus``
       more layers (the paper adds layers to stages 5 and 6; M and L get 14 / 19 in stage 5 where
       uniform scaling gives 11 / 16);
    3. for M and L, a wider stride-1 MBConv stage appended after the last (width x5/3, depth x0.28 of it);
    4. the head stays at the base's width and the stem matches the first stage's width
       (the official S/M/L keep 1280 and use a 24 / 24 / 32 stem);
    5. train/eval image sizes of the member, eval capped at 480; dropout from its progressive settings.

        >>> from nas.zoo import get
        >>> [s.layers for s in scale_member(get("efficientnetv2-b0"), "m").stages]
        [3, 5, 5, 7, 14, 18, 5]
    """
    member = _member(member)
    count = len(base.stages)
    stages = []
    previous = None
    for index, stage in enumerate(base.stages):
        late = index >= count / 2 and stage.stride == 1 and index < count - 1
        layers = round_repeats(stage.layers, member.depth * (1 + member.late_depth_bonus if late else 1))
        cout = round_filters(stage.output_channels, member.width)
        cin = previous if previous is not None else round_filters(stage.input_channels, member.width)
        stages.append(replace(stage, layers=layers, input_channels=cin, output_channels=cout))
        previous = cout
    if member.append_stage:
        last = stages[-1]
        stages.append(replace(last, operator="mbconv", layers=max(1, round(last.layers * APPENDED_DEPTH)), stride=1,
                              expansion=6, kernel=3, se_ratio=last.se_ratio or 0.25, input_channels=last.output_channels,
                              output_channels=round_filters(last.output_channels, APPENDED_WIDTH, 8)))
    stem = stages[0].output_channels
    stages[0] = replace(stages[0], input_channels=stem)
    return replace(base, name=f"{base.name}-{member.name}", stem_channels=stem, stages=tuple(stages), **member_settings(member))


def family(base: NetworkSpec, members: tuple[str, ...] = ("s", "m", "l")) -> dict[str, NetworkSpec]:
    """The family members of ``base`` by name (pure)."""
    return {name: scale_member(base, name) for name in members}
