"""The in-training progress line, one format for every command that trains (``nas search``, ``fidelity``,
``calibrate``, ``train``): the label and the caller's prefix are theirs, the rest is this.

    >>> epoch_text({"epoch": 1, "epochs": 3, "step": 20, "steps": 56, "images_per_second": 310.4}, 12)
    'epoch 1/3, step 20/56, 310 img/s, 12 s'
    >>> epoch_text({"epoch": 2, "epochs": 3, "val_accuracy": 0.91}, 30, eta=150)
    'epoch 2/3, val accuracy 0.9100, 30 s, ETA 2 min'
"""

from __future__ import annotations

from typing import Any


def duration(seconds: float) -> str:
    """``42 s``, ``12 min``, ``3.1 h``."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def epoch_text(info: dict[str, Any], seconds: float, *, eta: float | None = None) -> str:
    """Epoch, step, images/s and validation accuracy where ``info`` (a trainer's progress report) has them; time; ETA."""
    parts = [f"epoch {info['epoch']}/{info['epochs']}"]
    if info.get("steps"):
        parts.append(f"step {info.get('step', 0)}/{info['steps']}")
    if info.get("images_per_second"):
        parts.append(f"{info['images_per_second']:.0f} img/s")
    if info.get("val_accuracy") is not None:
        parts.append(f"val accuracy {info['val_accuracy']:.4f}")
    parts.append(f"{seconds:.0f} s")
    if eta is not None:
        parts.append(f"ETA {duration(eta)}")
    return ", ".join(parts)


def core_wait_text(info: dict[str, Any]) -> str | None:
    """The line for a core-wait event of :func:`nas.evaluate.trainer_cores` (None for other progress).

        >>> core_wait_text({"cores": "taken", "waited": 41.2})
        'got its core after 41 s; training'
    """
    if info.get("cores") == "waiting":
        return f"waiting for a core: other trainings on its host hold all {info['pool']} core slots (see NAS_HOST_CORES in the README)"
    if info.get("cores") == "taken":
        return f"got its core after {info['waited']:.0f} s; training"
    return None
