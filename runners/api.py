"""``runners.api.search``: a sweep from Python, on the user's own tensors or ``torch.utils.data.Dataset``, with any reward.

    summary = search((x_train, y_train), reward=lambda a, s, p: a * s**-0.1, name="mine", trials=8, epochs=3)

The study records what ran: ``data`` names the user data (counts, shape, classes, a content hash)
and ``reward`` is ``{"name": "custom", "function": "module.qualname"}`` for a function. ``nas
report``, ``export``, ``dashboard`` and ``rescore`` work on the run directory as for a CLI sweep;
resuming a custom-reward sweep goes through ``search`` again (the CLI cannot call the function).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from nas.api import user_dataset
from nas.errors import InputError
from runners.analysis.results import export as write_export
from runners.config import resolve_config
from runners.preflight import undo_new_run
from runners.study import open_run
from runners.sweep.run import run_sweep

Reward = Callable[[float, float, float], float]


def _reward_record(reward: str | dict | Reward | None) -> tuple[dict[str, Any] | None, Reward | None]:
    """(the config's reward entry, the function to call) for a name, a mapping, a function or None (the default)."""
    if reward is None or isinstance(reward, (str, dict)):
        return ({"name": reward} if isinstance(reward, str) else reward), None
    if not callable(reward):
        raise InputError(f"reward: a {type(reward).__name__} is not allowed, allowed a name, a mapping or a function (A, S, P) -> float")
    try:
        value = float(reward(0.5, 1.0, 1.0))
    except Exception as error:
        raise InputError(f"reward: the function failed on (A=0.5, S=1, P=1): {type(error).__name__}: {error}") from None
    if not math.isfinite(value):
        raise InputError(f"reward: the function returned {value} on (A=0.5, S=1, P=1), allowed a finite number")
    name = f"{getattr(reward, '__module__', '?')}.{getattr(reward, '__qualname__', type(reward).__name__)}"
    return {"name": "custom", "function": name}, reward


def search(data: Any = "digits", *, reward: str | dict | Reward | None = None, test: Any = None, num_classes: int | None = None,
           name: str = "default", runs_dir: str = "runs", trials: int | None = None, epochs: int | None = None,
           image_size: int | None = None, quiet: bool = False, export: str | None = None, **settings: Any) -> dict[str, Any]:
    """Run (or resume) a sweep and return its summary (``run_dir``, counts, ``best_trial``, ``against_backbone``...).

    ``data``: ``"digits"`` or a data path (as ``--data``), ``(images, labels)`` tensors (uint8 or floats in
    [0, 1], ``(N, C, H, W)`` or ``(N, H, W)``) or a ``torch.utils.data.Dataset`` of ``(image, label)``;
    ``test`` the same for a test split (default: 20% of ``data`` held out). ``reward``: a name
    (``paper``, ``constrained``, ``accuracy``), a mapping with options, or a function ``(A, S, P) -> float``.
    ``export``: write the best trial's ``arch.json`` there (as ``nas export RUN_DIR -o PATH --force``), its
    path in the summary as ``exported``. Other keywords are sweep config keys (``sampler``, ``seed``, ``backbone``, ``space``, ``max_concurrent``, ...).
    """
    dataset = None
    if not isinstance(data, str):
        dataset = user_dataset(data, test, num_classes=num_classes)
    reward_entry, function = _reward_record(reward)
    train = {k: v for k, v in {"epochs": epochs, "image_size": image_size}.items() if v is not None}
    overrides = {"name": name, "runs_dir": str(runs_dir), "data": dataset.name if dataset is not None else data, "n_trials": trials,
                 "quiet": quiet or None, "reward": reward_entry, "train": {**settings.pop("train", {}), **train} or None, **settings}
    config = resolve_config(None, overrides)
    with undo_new_run(config):
        summary = run_sweep(config, dataset=dataset, reward=function)
    if export is not None and summary["best_trial"] is not None:
        summary["exported"] = str(write_export(open_run(config.run_dir, config.storage), "best", export, force=True)[0])
    return summary
