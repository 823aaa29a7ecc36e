"""What every ``nas`` subcommand shares: printing its result, argument types, help texts."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from nas.io import printable

OUT = [sys.stdout]  # the command's result only: main() sends everything else printed to stdout (Ray's log lines) to stderr
STORAGE_HELP = "the run's storage URL with its password, for a study in PostgreSQL (default $NAS_STORAGE)"
RUN_DIR_HELP = "the run directory of a sweep (RUNS_DIR/NAME, as `nas search` printed it)"
JSON_HELP = "print one JSON document on stdout (logs stay on stderr)"
TRAIN_HELP = {"image-size": "image size in px", "randaugment": "RandAugment magnitude (0 = off)", "mixup": "mixup alpha (0 = off)",
              "dropout": "dropout rate"}


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """The result on stdout: one JSON document with ``--json``, else ``text``."""
    # names come from user files: no escape sequence reaches the terminal (JSON escapes them itself)
    print(json.dumps(data, indent=2) if getattr(args, "json", False) else printable(text), file=OUT[0], flush=True)


def integer(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not allowed, allowed an integer") from None


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer, allowed an integer >= 1") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed, allowed an integer >= 1")
    return number


def port(value: str) -> int:
    number = positive_int(value)
    if number > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port, allowed 1..65535")
    return number


def finite_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number, allowed a finite number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{value!r} is not allowed, allowed a finite number")
    return number


def number_list(kind: Any) -> Any:
    def parse(value: str) -> list:
        try:
            return [kind(part) for part in value.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not allowed, allowed a comma-separated list of {kind.__name__}s") from None

    return parse


def fixed_width(rows: list[tuple[str, ...]]) -> str:
    """Right-aligned columns, two spaces apart."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows)
