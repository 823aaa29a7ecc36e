"""Rewards: tiny pure functions, numbers in, float out. Nothing here imports the rest of the project.

``paper`` is EfficientNetV2's ``A * S**w * P**v`` (w = -0.07, v = -0.05), with S the candidate's
training step time over the backbone's and P its parameter count over the backbone's::

    >>> round(paper(0.8, 1.25, 1.5), 6) == round(0.8 * 1.25**-0.07 * 1.5**-0.05, 6)
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

DEFAULT_W = -0.07
DEFAULT_V = -0.05
DEFAULT_OPTIONS: dict[str, dict[str, float]] = {"paper": {"w": DEFAULT_W, "v": DEFAULT_V}}  # what a config without options gets


class RewardError(ValueError):
    """An invalid reward input or option; the message names the value."""


def _number(name: str, value: Any, positive: bool = False, unit: bool = False) -> None:
    # Own check, same rules as nas.errors.check_number (bools, NaN, inf rejected): rewards import nothing of ours
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (positive and value <= 0) or (unit and not 0 <= value <= 1):
        allowed = "a number in [0, 1]" if unit else "a finite number > 0" if positive else "a finite number"
        raise RewardError(f"{name}: {value!r} is not allowed, allowed {allowed}")


def _check(accuracy: float, step_time: float, params: float) -> None:
    _number("accuracy", accuracy, unit=True)
    _number("step_time", step_time, positive=True)
    _number("params", params, positive=True)


def paper(accuracy: float, step_time: float, params: float, w: float = DEFAULT_W, v: float = DEFAULT_V) -> float:
    """EfficientNetV2's reward ``A * S**w * P**v``.

    Args:
        accuracy: A, validation accuracy in [0, 1].
        step_time: S, normalized training step time (candidate median / backbone median, same device).
        params: P, normalized parameter size (candidate params / backbone params).
        w, v: exponents; negative values penalize slow and big networks. ``w = v = 0`` gives A.
    """
    _check(accuracy, step_time, params)
    return float(accuracy * step_time**w * params**v)


def constrained(
    accuracy: float, step_time: float, params: float, target: float = 1.0, alpha: float = 0.0, beta: float = -1.0
) -> float:
    """MnasNet-style reward ``A * (S / target)**e`` with ``e = alpha`` when ``S <= target`` else ``beta``.

    The defaults make a hard-ish constraint: no bonus under the target, a steep penalty over it.

        >>> constrained(0.9, 0.8, 1.0), round(constrained(0.9, 2.0, 1.0), 3)
        (0.9, 0.45)
    """
    _check(accuracy, step_time, params)
    _number("target", target, positive=True)
    exponent = alpha if step_time <= target else beta
    return float(accuracy * (step_time / target) ** exponent)


def accuracy_only(accuracy: float, step_time: float, params: float) -> float:
    """Plain accuracy (inputs still validated, so a bad record never scores)."""
    _check(accuracy, step_time, params)
    return float(accuracy)


REWARDS: dict[str, Callable[..., float]] = {"paper": paper, "constrained": constrained, "accuracy": accuracy_only}
REWARD_OPTIONS: dict[str, tuple[str, ...]] = {"paper": ("w", "v"), "constrained": ("target", "alpha", "beta"), "accuracy": ()}


def get_reward(name: str, **options: Any) -> Callable[[float, float, float], float]:
    """The reward called ``name`` with its options bound; unknown names or options raise RewardError.

        >>> get_reward("paper", w=0, v=0)(0.7, 3.0, 9.0)
        0.7
    """
    if name not in REWARDS:
        raise RewardError(f"reward: unknown reward {name!r}, allowed {', '.join(REWARDS)}")
    allowed = REWARD_OPTIONS[name]
    options = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise RewardError(f"reward {name}: unknown option(s) {', '.join(unknown)}, allowed {', '.join(allowed) or 'none'}")
    for key, value in options.items():
        _number(f"reward {name}: {key}", value)
    function = REWARDS[name]
    return lambda a, s, p: function(a, s, p, **options)


def pareto_front(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points; ``directions`` holds ``"maximize"``/``"minimize"`` per objective.

        >>> pareto_front([(0.9, 2.0), (0.8, 1.0), (0.7, 1.5)], ["maximize", "minimize"])
        [0, 1]
    """
    signs = [1.0 if d == "maximize" else -1.0 for d in directions]
    keyed = [tuple(s * x for s, x in zip(signs, p)) for p in points]  # all objectives maximized

    def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))

    return [i for i, p in enumerate(keyed) if not any(dominates(q, p) for j, q in enumerate(keyed) if j != i)]
