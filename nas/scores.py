"""Proxy scores: what a finished proxy run says about an architecture, derived from its per-epoch curve.

Every record (a sweep trial's user attributes, a fidelity retraining) holds ``curve``: one dict per
epoch with ``val_accuracy``, ``val_loss`` and ``train_loss`` (the epoch's mean training loss). The
scores are all "higher is better":

- ``accuracy``: the final validation accuracy (the sweep's A so far);
- ``best_accuracy``: the best validation accuracy over the epochs;
- ``val_loss``: minus the final validation loss;
- ``sotl``: minus the sum over epochs of the training loss (Ru et al. 2020, "speedy performance
  estimation": a model that trains faster ranks higher);
- ``sotl_last``: minus the last epoch's training loss (its last-epoch form);
- ``train_likelihood``: exp(minus the mean per-epoch training loss), in (0, 1] (without label
  smoothing, the geometric-mean probability the network gave the right class while it trained). At
  a fixed number of epochs it ranks exactly as ``sotl`` does, and it is accuracy-like, so the sweep
  can use it as A (calibration on CIFAR-10 found ``sotl`` the best cheap ranker: ``bench/RESULTS.md``).

    >>> curve = [{"val_accuracy": 0.5, "val_loss": 1.2, "train_loss": 1.5}, {"val_accuracy": 0.4, "val_loss": 1.1, "train_loss": 1.0}]
    >>> scores = proxy_scores(TrialRecord(curve=curve))
    >>> {name: round(value, 4) for name, value in scores.items()}
    {'accuracy': 0.4, 'best_accuracy': 0.5, 'val_loss': -1.1, 'sotl': -2.5, 'sotl_last': -1.0, 'train_likelihood': 0.2865}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from nas.errors import InputError
from nas.record import TrialRecord

SCORES = ("accuracy", "best_accuracy", "val_loss", "sotl", "sotl_last", "train_likelihood")
ACCURACY_SCORES = ("accuracy", "best_accuracy", "train_likelihood")  # in [0, 1]: usable as A in the reward


def proxy_scores(record: TrialRecord | Mapping[str, Any]) -> dict[str, float | None]:
    """Every score of :data:`SCORES` from ``record``'s curve; None where the record lacks what a score needs.

    A record without a curve (or an empty one) still gives ``accuracy`` from its final accuracy. ``record``
    may be a stored record's attributes (a trial's, or a fidelity retraining's).
    """
    if not isinstance(record, TrialRecord):
        record = TrialRecord.from_attrs(record)
    curve = [epoch for epoch in record.curve or [] if isinstance(epoch, dict)]

    def column(name: str) -> list[float] | None:
        values = [epoch.get(name) for epoch in curve]
        ok = values and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        return [float(v) for v in values] if ok else None

    accuracy, val_loss, train_loss = column("val_accuracy"), column("val_loss"), column("train_loss")
    final = record.final_accuracy if record.final_accuracy is not None else record.accuracy  # scored by another A: the final one
    return {
        "accuracy": accuracy[-1] if accuracy else (float(final) if isinstance(final, (int, float)) else None),
        "best_accuracy": max(accuracy) if accuracy else None,
        "val_loss": -val_loss[-1] if val_loss else None,
        "sotl": -sum(train_loss) if train_loss else None,
        "sotl_last": -train_loss[-1] if train_loss else None,
        "train_likelihood": math.exp(-sum(train_loss) / len(train_loss)) if train_loss else None,
    }


def score_so_far(curve: list[dict[str, Any]], score: str = "accuracy") -> float | None:
    """``score`` of the run stopped after ``curve``'s last epoch: A as the pruner and the learning curves see it.

    >>> round(score_so_far([{"train_loss": 1.5}, {"train_loss": 1.0}], "train_likelihood"), 4)
    0.2865
    """
    return proxy_scores(TrialRecord(curve=list(curve)))[score]


A_NAMES = {"accuracy": "validation accuracy", "best_accuracy": "best validation accuracy",
           "train_likelihood": "train likelihood, exp(-mean training loss)"}


def a_label(score: str = "accuracy") -> str:
    """A's name in plots and tables: what ``train.score`` made it.

    >>> a_label(), a_label("train_likelihood")
    ('A (validation accuracy)', 'A (train likelihood, exp(-mean training loss))')
    """
    return f"A ({A_NAMES.get(score, score)})"


def check_score(name: str, allowed: tuple[str, ...] = SCORES, field: str = "score") -> str:
    """``name`` if it is one of ``allowed``, else the project's one-line InputError naming ``field``."""
    if name not in allowed:
        raise InputError(f"{field}: {name!r} is not allowed, allowed {', '.join(allowed)}")
    return name
