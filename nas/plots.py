"""Plots of training runs (written after training, never inside the loop, through :func:`nas.io.atomic_open`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nas.io import atomic_open
from nas.schedule import Stage


def plot_curves(history: list[dict[str, Any]], plan: list[Stage], path: Path) -> None:
    """Loss, accuracy and learning rate per epoch, stage boundaries as vertical lines labelled with their image size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [h["epoch"] for h in history]
    left.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    left.plot(epochs, [h["val_loss"] for h in history], label="val loss")
    right.plot(epochs, [h["val_accuracy"] for h in history], color="C2", label="val accuracy")
    if all("lr" in h for h in history):  # a size step late in the cosine adapts at a tiny rate (bench/RESULTS.md)
        rate = right.twinx()
        rate.plot(epochs, [h["lr"] for h in history], color="C7", linestyle="--", linewidth=1)
        rate.set_ylabel("learning rate (dashed)", color="C7")
    for axis in (left, right):
        for stage in plan:
            axis.axvline(stage.first_epoch - 0.5, color="grey", linestyle=":", linewidth=1)
            axis.text(stage.first_epoch - 0.4, 1.0, f"{stage.image_size}px", transform=axis.get_xaxis_transform(), fontsize=8,
                      va="top", color="grey")
        axis.set_xlabel("epoch")
        axis.legend(loc="center right")
    left.set_title("loss")
    right.set_title("validation accuracy")
    figure.tight_layout()
    try:
        with atomic_open(path, "wb") as handle:  # nas.io's one atomic writer: a reader never sees half a PNG
            figure.savefig(handle, format="png", dpi=100)
    finally:
        plt.close(figure)

