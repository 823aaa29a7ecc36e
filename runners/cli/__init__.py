"""The ``nas`` command: parse, call, print. Nothing else lives here.

Conventions: ``--json`` prints exactly one JSON document on stdout (logs go to stderr);
exit 0 on success, 2 on bad input or usage, 1 on a runtime failure, 130 on Ctrl-C, 143 on SIGTERM.
Every check runs before anything is created (:mod:`runners.preflight`); an existing output file is
refused without ``--force``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from typing import Any, NoReturn

from nas.errors import InputError
from nas.io import printable
from runners.cli import common, results, search, specs, train


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints usage too)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (the sweep's cleanup runs), but exit 143."""


def make_parser() -> argparse.ArgumentParser:
    """The ``nas`` argument parser: each subcommand's arguments sit next to its handler; help texts show the real defaults."""
    parser = Parser(prog="nas", description="Training-aware neural architecture search (EfficientNetV2-style).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in (specs, search, results, train):
        module.add_parsers(sub)
    return parser


_SIGTERM_SEEN: list[int] = []  # Ray turns an exception raised in ray.wait into a plain KeyboardInterrupt: remember the signal


def _terminate(signum: int, frame: Any) -> None:
    _SIGTERM_SEEN.append(signum)
    raise Terminated


def _one_line(error: BaseException) -> str:
    from runners.credentials import scrub

    return " ".join(printable(scrub(str(error))).split())  # no storage password in any message


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``nas`` console script."""
    args = make_parser().parse_args(argv)
    try:
        previous, installed = signal.signal(signal.SIGTERM, _terminate), True
    except ValueError:  # not the main thread: leave signals alone
        previous, installed = None, False
    common.OUT[0] = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):  # e.g. "(raylet) ..." lines: --json stays one JSON document
            return args.func(args)
    except (InputError, FileExistsError) as error:
        print(f"nas {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        terminated = isinstance(interrupt, Terminated) or bool(_SIGTERM_SEEN)
        print(f"nas {args.command}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    except SystemExit as exit_:
        if isinstance(exit_.code, signal.Signals):  # Ray's driver turns SIGTERM into sys.exit(SIGTERM)
            print(f"nas {args.command}: terminated", file=sys.stderr)
            return 128 + exit_.code
        raise
    except Exception as error:  # runtime failure: one line unless NAS_DEBUG asks for the traceback
        if os.environ.get("NAS_DEBUG"):
            raise
        print(f"nas {args.command}: failed: {type(error).__name__}: {_one_line(error)}", file=sys.stderr)
        return 1
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
