"""The progressive-learning schedule (EfficientNetV2, Algorithm 1), pure: settings in, stages out.

Training is split into M stages; stage i (0-based) uses image size and regularization (dropout,
RandAugment magnitude, mixup alpha) interpolated linearly between the start and end values,
``v_i = start + (end - start) * i / (M - 1)``; the weights carry over between stages. ``--fixed``
trains every epoch at the end values (the baseline the paper compares against).

    >>> [s.image_size for s in schedule(ProgressiveConfig(epochs=8, stages=4, min_image_size=16, max_image_size=32))]
    [16, 21, 27, 32]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from nas.configs import OptimizerConfig
from nas.errors import InputError, check_ints, check_number
from nas.scaling import MEMBERS

MAX_MAGNITUDE = 30.0  # kornia's RandAugment takes 0 < m < 30; 0 here means "off"


@dataclass(frozen=True)
class ProgressiveConfig(OptimizerConfig):
    """Settings of a final training run; ``min_*`` are the first stage's values, ``max_*`` the last's."""

    epochs: int = 12
    stages: int = 2
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
    batchnorm_batches: int = 10
    final_stage_fraction: float | None = 0.5

    def __post_init__(self) -> None:
        check_ints(self, (("epochs", 1), ("stages", 1), ("min_image_size", 8), ("max_image_size", 8), ("batch_size", 2),
                          ("randaugment_ops", 1), ("batchnorm_batches", 0)))
        if self.stages > self.epochs:
            raise InputError(f"stages: {self.stages} is more than epochs {self.epochs}, allowed 1..{self.epochs}")
        if self.max_image_size < self.min_image_size:
            raise InputError(f"max_image_size: {self.max_image_size} is below min_image_size {self.min_image_size}, allowed >= {self.min_image_size}")
        for name in ("min_randaugment", "max_randaugment"):
            check_number(name, getattr(self, name), low=0, high=MAX_MAGNITUDE, high_open=True, note=" (RandAugment's range, 0 = off)")
        for name, high in (("min_mixup", 10.0), ("max_mixup", 10.0), ("min_dropout", 0.95), ("max_dropout", 0.95)):
            check_number(name, getattr(self, name), low=0, high=high)
        super().__post_init__()
        check_number("ema_decay", self.ema_decay, low=0, high=1, low_open=True, high_open=True, optional=True)
        check_number("final_stage_fraction", self.final_stage_fraction, low=0, high=1, low_open=True, optional=True)
        check_number("eval_image_size", self.eval_image_size, low=8, integer=True, optional=True)

    @classmethod
    def for_member(cls, member: str, **overrides: Any) -> ProgressiveConfig:
        """The paper's settings of family member ``s``, ``m`` or ``l`` (see :data:`nas.scaling.MEMBERS`)."""
        if member not in MEMBERS:
            raise InputError(f"member: unknown member {member!r}, allowed {', '.join(MEMBERS)}")
        m = MEMBERS[member]
        # the paper's even stages (its stages span ~87 epochs each, so the last one adapts at a usable learning rate)
        values = {**asdict(m.progressive), "eval_image_size": m.eval_image_size, "final_stage_fraction": None}
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



def stage_epochs(epochs: int, stages: int, final_fraction: float | None = None) -> list[int]:
    """Epochs per stage: the last stage gets ``round(final_fraction * epochs)`` (at least 1, leaving 1 per other
    stage), the others split the rest evenly, earlier stages taking any remainder; ``None`` splits all evenly.

        >>> stage_epochs(10, 4), stage_epochs(10, 3, 0.4)
        ([3, 3, 2, 2], [3, 3, 4])
    """
    if stages == 1:
        return [epochs]
    last = None if final_fraction is None else min(epochs - stages + 1, max(1, round(final_fraction * epochs)))
    rest, count = (epochs, stages) if last is None else (epochs - last, stages - 1)
    base, extra = divmod(rest, count)
    return [base + (1 if i < extra else 0) for i in range(count)] + ([] if last is None else [last])


def schedule(config: ProgressiveConfig) -> list[Stage]:
    """The per-stage settings (pure); epochs per stage from :func:`stage_epochs` (fixed training: an even split)."""
    counts = stage_epochs(config.epochs, config.stages, config.final_stage_fraction if config.progressive else None)
    stages, first = [], 1
    for i, count in enumerate(counts):
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



def remaining_seconds(stages: list[Stage], *, epoch: int, step: int, steps: int, batch_size: int, images_per_second: float) -> float:
    """Seconds left at ``images_per_second`` measured in ``epoch`` (at step ``step`` of ``steps``), other stages scaled by pixels.

    A step's cost grows with the image's pixels, so a stage at twice the size takes about four times as long.

        >>> stages = [Stage(0, 1, 1, 16, 0, 0, 0), Stage(1, 2, 2, 32, 0, 0, 0)]
        >>> remaining_seconds(stages, epoch=1, step=5, steps=10, batch_size=10, images_per_second=10.0)  # 5 + 4 * 10
        45.0
    """
    size_now = next(stage.image_size for stage in stages if stage.first_epoch <= epoch <= stage.last_epoch)
    total = 0.0
    for stage in stages:
        for number in range(max(epoch, stage.first_epoch), stage.last_epoch + 1):
            left = steps - step if number == epoch else steps
            total += left * batch_size * (stage.image_size / size_now) ** 2 / images_per_second
    return total


def explicit_config(base: ProgressiveConfig, **overrides: Any) -> ProgressiveConfig:
    """``base`` with the non-None ``overrides`` applied (and validated)."""
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})

