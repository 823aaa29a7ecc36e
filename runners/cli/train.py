"""``nas train``: final training of a spec with progressive learning (:mod:`nas.progressive`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from nas.io import printable
from runners.cli.common import (
    JSON_HELP,
    TRAIN_HELP,
    emit,
    finite_float,
    integer,
    positive_int,
)


def add_parsers(sub: Any) -> None:
    """train"""
    from nas.schedule import ProgressiveConfig

    PROG = ProgressiveConfig()  # the help texts show the dataclass's defaults
    p = sub.add_parser("train", help="final training with progressive learning (Algorithm 1)")
    p.add_argument("spec", help="registry name, spec JSON or an exported arch.json")
    p.add_argument("--data", required=True, help="required: digits (built in) or a path: IDX dir, CIFAR dir, image folder, .npz")
    p.add_argument("--epochs", type=positive_int, help=f"training epochs (default {PROG.epochs})")
    p.add_argument("--stages", type=integer, help=f"number of progressive stages M (default {PROG.stages}, also with --member; "
                   "never more than --epochs)")
    p.add_argument("--fixed", action="store_true", help="train every epoch at the end values (baseline)")
    p.add_argument("--member", help="take the start/end values of family member s, m or l (default: small-image defaults below)")
    for name in ("min-image-size", "max-image-size", "eval-image-size", "min-randaugment", "max-randaugment", "min-mixup",
                 "max-mixup", "min-dropout", "max-dropout"):
        field = name.replace("-", "_")
        default = getattr(PROG, field)
        shown = "the last stage's size" if default is None else f"{default:g}"
        p.add_argument(f"--{name}", type=integer if name.endswith("size") else finite_float,
                       help=f"{TRAIN_HELP[name.split('-', 1)[1]]}, {name.split('-')[0]} (default {shown}; --member sets its own)")
    p.add_argument("--batch-size", type=positive_int, help=f"batch size (default {PROG.batch_size})")
    p.add_argument("--lr", type=finite_float, help=f"peak learning rate (default {PROG.lr:g})")
    p.add_argument("--ema", type=finite_float, help="EMA decay of the weights (e.g. 0.999); off by default")
    p.add_argument("--seed", type=integer, help=f"seed (default {PROG.seed})")
    p.add_argument("--threads", type=positive_int, help="torch threads (default: torch's choice)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    p.add_argument("--out", help="output directory (default runs/train-SPECNAME); an existing checkpoint there is resumed, "
                   "and a larger --epochs extends a finished run")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_train)


def train_config(args: argparse.Namespace) -> Any:
    """The ``ProgressiveConfig`` of ``nas train``'s flags: ``--member``'s values or the defaults, flags given on top."""
    from nas.schedule import ProgressiveConfig, explicit_config

    explicit = {
        "epochs": args.epochs, "stages": args.stages, "min_image_size": args.min_image_size, "max_image_size": args.max_image_size,
        "eval_image_size": args.eval_image_size, "min_randaugment": args.min_randaugment, "max_randaugment": args.max_randaugment,
        "min_mixup": args.min_mixup, "max_mixup": args.max_mixup, "min_dropout": args.min_dropout, "max_dropout": args.max_dropout,
        "batch_size": args.batch_size, "lr": args.lr, "ema_decay": args.ema, "seed": args.seed, "threads": args.threads,
        "progressive": False if args.fixed else None,
    }
    base = ProgressiveConfig.for_member(args.member) if args.member else ProgressiveConfig()
    if args.stages is None and args.epochs is not None:  # the default number of stages fits the epochs given
        explicit["stages"] = min(base.stages, args.epochs)
    return explicit_config(base, **explicit)


def _memory_warning(need: int, device: str | None, config: Any) -> None:
    """A warning before training whose activations alone (a lower bound) take over a quarter of the free memory."""
    from runners.preflight import available_memory

    available = available_memory(device)
    if available is not None and need > available[0] / 4:
        print(f"nas train: warning: a step at {config.max_image_size} px, batch {config.batch_size} keeps at least {need / 2**30:.1f} GiB "
              f"of activations (real use is several times that); {available[0] / 2**30:.1f} GiB is free on {available[1]}: "
              "consider a smaller --max-image-size or --batch-size", file=sys.stderr, flush=True)


LONG_SECONDS = 3600.0  # a run estimated longer than this is warned about once, with what would shorten it


def progress_printer(config: Any) -> Callable[[dict[str, Any]], None]:
    """``nas train``'s in-epoch line on stderr with an ETA; the first estimate over an hour is also a warning."""
    from nas.schedule import remaining_seconds, schedule
    from runners.progress_text import duration, epoch_text

    stages, warned = schedule(config), []

    def on_progress(info: dict[str, Any]) -> None:  # the hook calls it at most every few seconds
        left = remaining_seconds(stages, epoch=info["epoch"], step=info["step"], steps=info["steps"], batch_size=config.batch_size,
                                 images_per_second=max(info["images_per_second"], 1e-9))
        print(f"  {epoch_text(info, info['seconds'], eta=left)}", file=sys.stderr, flush=True)
        if left > LONG_SECONDS and not warned:
            warned.append(left)
            print(f"nas train: warning: about {duration(left)} of training left at this speed ({info['images_per_second']:.0f} img/s; "
                  f"later stages at larger images are slower): consider fewer --epochs, a smaller --max-image-size, or a GPU "
                  "(Ctrl-C stops it; the same command resumes from the checkpoint)", file=sys.stderr, flush=True)

    return on_progress


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nas.data import load_dataset
    from nas.io import check_output_dir, load_spec, safe_name
    from nas.lock import DeviceLock
    from nas.plots import plot_curves
    from nas.progressive import train_progressive
    from nas.schedule import schedule
    from nas.train import pick_device
    from runners.preflight import activation_elements, check_device, check_memory

    check_device(args.device)
    spec = load_spec(args.spec)
    config = train_config(args)
    check_memory(activation_elements(spec, config.max_image_size), config.batch_size, args.device,
                 "--max-image-size/--batch-size")
    _memory_warning(activation_elements(spec, config.max_image_size) * config.batch_size * 4, args.device, config)
    out = str(check_output_dir(args.out or f"runs/train-{safe_name(spec.name)}", "--out"))
    data = load_dataset(args.data)
    header = [printable(f"training {spec.name} on {data.name} ({data.num_classes} classes): {config.epochs} epochs, "
                        f"{config.stages if config.progressive else 1} stage(s), {config.min_image_size}->{config.max_image_size} px, "
                        f"batch {config.batch_size}; output in {out}")]

    def log(message: str) -> None:  # the header comes with the first line of work: a refused resume stays one line
        if header:
            print(header.pop(), file=sys.stderr, flush=True)
        print(message, file=sys.stderr, flush=True)

    summary = train_progressive(spec, data, config, out_dir=out, device=args.device, log=log,
                                lock=DeviceLock.for_device(pick_device(args.device)),  # a sweep's timer on this device stays honest
                                on_progress=progress_printer(config))
    plot_curves(summary["history"], schedule(config), Path(out) / "curves.png")
    summary["out"] = out
    text = (f"{summary['mode']} training of {spec.name} on {summary['data']}: test accuracy {summary['test_accuracy']:.4f} "
            f"at {summary['eval_image_size']}px, {summary['train_seconds']:.0f} s of training\n"
            f"wrote {out}/summary.json, {out}/curves.png, {out}/checkpoint.pt")
    emit(args, summary, text)
    return 0
