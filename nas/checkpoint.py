"""Checkpoints of ``nas train``: the previous one is kept until the new one is complete.

Rule: ``save`` writes the new state to a temporary file (fsynced), then renames ``checkpoint.pt`` to
``checkpoint.prev.pt`` and the new file to ``checkpoint.pt``. ``load`` reads ``checkpoint.pt`` and,
when it is missing or unreadable (a truncated file, a disk error), warns once and falls back to
``checkpoint.prev.pt``; with neither readable, training starts from scratch.

Extending a run: the identity of a checkpoint ignores ``epochs``, so ``--epochs`` larger than a finished
run's continues it from its last finished epoch; the schedule (stages and the cosine learning rate) is
recomputed for the new epoch count. ``--epochs`` below the epochs already trained is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from nas.errors import InputError
from nas.io import atomic_open

NAME, PREVIOUS = "checkpoint.pt", "checkpoint.prev.pt"
REQUIRED = ("identity", "epoch", "model", "optimizer", "scheduler", "ema", "generator", "torch_rng", "history", "train_seconds")


def identity(spec: Any, config: Any, data_name: str) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed: the spec, data and settings, except ``epochs``.

        >>> from nas.zoo import get
        >>> from nas.schedule import ProgressiveConfig
        >>> a = identity(get("efficientnetv2-b0", 10), ProgressiveConfig(epochs=4), "digits")
        >>> a == identity(get("efficientnetv2-b0", 10), ProgressiveConfig(epochs=8), "digits")
        True
    """
    settings = {k: v for k, v in asdict(config).items() if k != "epochs"}
    return json.loads(json.dumps({"spec": spec.to_dict(), "config": settings, "data": data_name}))


def _comparable(stored: dict[str, Any]) -> dict[str, Any]:
    # checkpoints written before extending was allowed carry epochs in their identity
    return {**stored, "config": {k: v for k, v in stored.get("config", {}).items() if k != "epochs"}}


def save(out_dir: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` as the new ``checkpoint.pt``; the last complete one becomes ``checkpoint.prev.pt``."""
    out = Path(out_dir)
    current, previous = out / NAME, out / PREVIOUS
    staged = out / f".{NAME}.new"
    with atomic_open(staged, "wb") as handle:
        torch.save(state, handle)
    if current.is_file():
        os.replace(current, previous)
    os.replace(staged, current)  # between the two renames only checkpoint.prev.pt exists: load falls back to it
    return current


def _read(path: Path, device: torch.device | str) -> dict[str, Any]:
    state = torch.load(path, weights_only=True, map_location=device)
    missing = [key for key in REQUIRED if not isinstance(state, dict) or key not in state]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    return state


def load(out_dir: str | os.PathLike[str], expected: dict[str, Any], epochs: int, *, device: torch.device | str,
         log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """The newest readable checkpoint in ``out_dir`` (None: start from scratch).

    A checkpoint of another run (``expected`` differs) or one past ``epochs`` is an InputError naming ``--out``/``--epochs``.
    """
    out = Path(out_dir)
    candidates = [path for path in (out / NAME, out / PREVIOUS) if path.is_file()]
    state, path = None, None
    for index, candidate in enumerate(candidates):
        try:
            state, path = _read(candidate, device), candidate
            break
        except Exception as error:  # truncated or corrupt: torch raises several types
            later = candidates[index + 1].name if index + 1 < len(candidates) else "scratch"
            reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
            log(f"warning: {candidate} is unreadable ({reason}); resuming from {later}")
    if state is None:
        return None
    if _comparable(json.loads(state["identity"])) != _comparable(expected):
        raise InputError(f"--out: {out} holds a checkpoint of another run (spec, data or settings differ); use another --out")
    done = int(state["epoch"])
    if done > epochs:
        raise InputError(f"--epochs: {epochs} is below the {done} epochs already trained in {out}, allowed >= {done}")
    log(f"resuming from {path} after epoch {done}")
    return state
