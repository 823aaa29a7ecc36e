"""Error types the CLI maps to exit codes (:class:`InputError` -> 2; anything else -> 1) and the one number check.

Every config and spec dataclass validates its numbers with :func:`check_number`, so they agree on what a
number is: booleans, NaN, infinities and strings are rejected; messages name the field and the allowed values.
"""

from __future__ import annotations

import math
from typing import Any


class InputError(ValueError):
    """Bad user input (spec, config, path, flag value); the message is one line naming the field."""


def _bounds(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    return f"{'<' if high_open else '<='} {high:g}" if high is not None else ""


def check_number(
    field: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    integer: bool = False,
    optional: bool = False,
    low_open: bool = False,
    high_open: bool = False,
    note: str = "",
    error: type[ValueError] = InputError,
) -> None:
    """Raise ``error`` unless ``value`` is a number (an int if ``integer``) within the bounds, or None if ``optional``.

    ``True`` is an int in Python but never a number here (``lr: true`` is a typo, not 1).

        >>> check_number("lr", True, low=0, high=10)
        Traceback (most recent call last):
        nas.errors.InputError: lr: True is not allowed, allowed a number in [0, 10]
    """
    if value is None and optional:
        return
    kinds = (int,) if integer else (int, float)
    ok = isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (low is None or (value > low if low_open else value >= low)) and (
            high is None or (value < high if high_open else value <= high))
    if not ok:
        kind = "an integer" if integer else "a number"
        allowed = " ".join(part for part in (kind, _bounds(low, high, low_open, high_open)) if part)
        raise error(f"{field}: {value!r} is not allowed, allowed {allowed}{' or null' if optional else ''}{note}")


def check_ints(owner: object, bounds: tuple[tuple[str, int], ...]) -> None:
    """Each named attribute of ``owner`` must be an integer (not a bool) at least its bound."""
    for name, low in bounds:
        check_number(name, getattr(owner, name), low=low, integer=True)
