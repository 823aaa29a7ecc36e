"""The settings of training and timing, as frozen validated dataclasses: no torch here, so reading a
sweep's config (``nas --help``, ``nas rescore``, ``nas report``) does not pay for importing it.

:class:`OptimizerConfig` is what the one training step is configured by (:mod:`nas.step`);
:class:`TrainConfig` (the proxy's, :mod:`nas.train`) and :class:`nas.schedule.ProgressiveConfig` extend
it; :class:`TimingConfig` is how step time is measured (:mod:`nas.timing`).

    >>> TrainConfig(epochs=2, score="train_likelihood").data_fraction
    1.0
    >>> TrainConfig(epochs=0)
    Traceback (most recent call last):
    ...
    nas.errors.InputError: epochs: 0 is not allowed, allowed an integer >= 1
"""

from __future__ import annotations

from dataclasses import dataclass

from nas.errors import InputError, check_ints, check_number
from nas.scores import ACCURACY_SCORES, check_score

OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer, schedule and data-split settings shared by proxy and final training."""

    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    validation_fraction: float = 0.2
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"optimizer: {self.optimizer!r} is not allowed, allowed {', '.join(OPTIMIZERS)}")
        for name, low, high in (("lr", 1e-8, 10.0), ("weight_decay", 0.0, 1.0), ("momentum", 0.0, 1.0),
                                ("warmup_epochs", 0.0, 1000.0), ("label_smoothing", 0.0, 0.99), ("validation_fraction", 0.01, 0.9)):
            check_number(name, getattr(self, name), low=low, high=high)
        check_number("seed", self.seed, integer=True)
        check_number("threads", self.threads, low=1, integer=True, optional=True)


@dataclass(frozen=True)
class TrainConfig(OptimizerConfig):
    """Proxy-training settings; defaults are the measured good setup on small data.

    Measured on the bundled digits (efficientnetv2-b0 at 32 px): AdamW lr 2e-3, weight decay 0.05, batch 64, one
    warm-up epoch then cosine, label smoothing 0.1, crop padding 2 reach 0.997 validation accuracy in 10 epochs
    (>= 0.9 from epoch 2); SGD-Nesterov lr 0.1 reached 0.75.
    """

    epochs: int = 10
    image_size: int = 32
    batch_size: int = 64
    deterministic: bool = True
    eval_batch_size: int = 512
    compile: bool = False  # torch.compile the model (timing then times the compiled step too)
    data_fraction: float = 1.0  # the proxy trains on this fraction of the training split (validation unchanged)
    score: str = "accuracy"  # the proxy score that is A in the reward (nas.scores.ACCURACY_SCORES)

    def __post_init__(self) -> None:
        check_ints(self, (("epochs", 1), ("image_size", 8), ("batch_size", 2), ("eval_batch_size", 1)))
        check_number("data_fraction", self.data_fraction, low=0.0, high=1.0, low_open=True)
        check_score(self.score, ACCURACY_SCORES)
        super().__post_init__()


@dataclass(frozen=True)
class TimingConfig:
    """How step time is measured; ``image_size=None`` means the spec's own training image size."""

    batch_size: int = 32
    image_size: int | None = None
    warmup: int = 3
    steps: int = 10

    def __post_init__(self) -> None:
        check_ints(self, (("batch_size", 1), ("warmup", 0), ("steps", 3)))
        check_number("image_size", self.image_size, low=16, integer=True, optional=True)
