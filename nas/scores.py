"""Proxy scores: what a finished proxy run says about an architecture, derived from its per-epoch curve.

Every record (a sweep trial's user attributes, a fidelity retraining) holds ``curve``: one dict per
epoch with ``val_accuracy``, ``val_loss`` and ``train_loss`` (the epoch's mean training loss). The
scores are all "higher is better":

- ``accuracy``: the final validation accuracy (the sweep's A so far);
- ``best_accuracy``: the best validation accuracy over the epochs;
- ``val_loss``: minus the final validation loss;
- ``sotl``: minus the sum over epochs of the training loss (Ru et al. 2020, "speedy performance
  estimation": a model that trains faster ranks higher);
- ``sotl_last``: minus the last epoch's training loss (its last-epoch form).

    >>> curve = [{"val_accuracy": 0.5, "val_loss": 1.2, "train_loss": 1.5}, {"val_accuracy": 0.4, "val_loss": 1.1, "train_loss": 1.0}]
    >>> proxy_scores({"curve": curve})
    {'accuracy': 0.4, 'best_accuracy': 0.5, 'val_loss': -1.1, 'sotl': -2.5, 'sotl_last': -1.0}
"""

from __future__ import annotations

import math
from typing import Any

from nas.errors import InputError

SCORES = ("accuracy", "best_accuracy", "val_loss", "sotl", "sotl_last")
ACCURACY_SCORES = ("accuracy", "best_accuracy")  # in [0, 1]: usable as A in the reward


def proxy_scores(record: dict[str, Any]) -> dict[str, float | None]:
    """Every score of :data:`SCORES` from ``record``'s curve; None where the record lacks what a score needs.

    A record without a curve (or an empty one) still gives ``accuracy`` from its ``accuracy`` field.
    """
    curve = [epoch for epoch in record.get("curve") or [] if isinstance(epoch, dict)]

    def column(name: str) -> list[float] | None:
        values = [epoch.get(name) for epoch in curve]
        ok = values and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        return [float(v) for v in values] if ok else None

    accuracy, val_loss, train_loss = column("val_accuracy"), column("val_loss"), column("train_loss")
    final = record.get("final_accuracy", record.get("accuracy"))  # a record scored by another A keeps the final one
    return {
        "accuracy": accuracy[-1] if accuracy else (float(final) if isinstance(final, (int, float)) else None),
        "best_accuracy": max(accuracy) if accuracy else None,
        "val_loss": -val_loss[-1] if val_loss else None,
        "sotl": -sum(train_loss) if train_loss else None,
        "sotl_last": -train_loss[-1] if train_loss else None,
    }


def check_score(name: str, allowed: tuple[str, ...] = SCORES, field: str = "score") -> str:
    """``name`` if it is one of ``allowed``, else the project's one-line InputError naming ``field``."""
    if name not in allowed:
        raise InputError(f"{field}: {name!r} is not allowed, allowed {', '.join(allowed)}")
    return name
