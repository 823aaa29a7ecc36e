"""``nas search``: run, resume or join a sweep (:mod:`runners.sweep`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rewards import DEFAULT_V, DEFAULT_W
from runners.cli.common import (
    JSON_HELP,
    emit,
    finite_float,
    integer,
    positive_int,
)


def add_parsers(sub: Any) -> None:
    """search"""
    from nas.scores import ACCURACY_SCORES
    from runners.config import DEFAULT_TIMING as SWEEP_TIMING
    from runners.config import DEFAULT_TRAIN as SWEEP_TRAIN

    p = sub.add_parser("search", help="run (or resume) a search sweep on Ray with an Optuna study")
    p.add_argument("--config", help="sweep config (YAML, TOML or JSON); flags override it")
    p.add_argument("--name", help="sweep name: the run directory is RUNS_DIR/NAME (default 'default')")
    p.add_argument("--runs-dir", help="parent of run directories (default ./runs)")
    p.add_argument("--data", help="digits (default) or a data path")
    p.add_argument("--backbone", help="backbone spec for the space and the S/P reference (default efficientnetv2-b0)")
    p.add_argument("--space", help="search-space config file (see `nas space`)")
    p.add_argument("--trials", type=positive_int, help="number of finished trials to reach (default 8)")
    p.add_argument("--concurrent", type=positive_int, help="max concurrent trials (default: from the machine, see README Layout)")
    p.add_argument("--cpus-per-trial", type=finite_float, help="CPUs (and torch threads) per trial (default: from the machine, see README Layout)")
    p.add_argument("--gpus-per-trial", type=finite_float, help="GPUs per trial; fractions share a GPU (default 0)")
    p.add_argument("--sampler", help="tpe (default, multivariate), random, qmc, nsga2, rl (REINFORCE), evolution (regularized)")
    p.add_argument("--seed", type=integer, help="sampler and training seed (default 0)")
    p.add_argument("--objective", help="reward (default) or multi (maximize A, minimize S and P)")
    p.add_argument("--reward", help="paper (default), constrained, accuracy")
    p.add_argument("--w", type=finite_float, help=f"step-time exponent of the paper reward (default {DEFAULT_W})")
    p.add_argument("--v", type=finite_float, help=f"params exponent of the paper reward (default {DEFAULT_V})")
    p.add_argument("--pruner", help="none (default) or asha (successive halving on per-epoch accuracy)")
    p.add_argument("--epochs", type=positive_int, help=f"proxy training epochs per trial (default {SWEEP_TRAIN.epochs})")
    p.add_argument("--image-size", type=positive_int, help=f"proxy training image size in px (default {SWEEP_TRAIN.image_size})")
    p.add_argument("--batch-size", type=positive_int, help=f"proxy training batch size (default {SWEEP_TRAIN.batch_size})")
    p.add_argument("--data-fraction", type=finite_float, help="fraction of the training split the proxy trains on, in (0, 1] "
                   f"(default {SWEEP_TRAIN.data_fraction:g}; `nas calibrate` recommends one)")
    p.add_argument("--score", help=f"the proxy score that is A in the reward: {', '.join(ACCURACY_SCORES)} (default {SWEEP_TRAIN.score})")
    p.add_argument("--timing-image-size", type=positive_int, help=f"image size of the timed step (default {SWEEP_TIMING.image_size})")
    p.add_argument("--timing-batch-size", type=positive_int, help=f"batch size of the timed step (default {SWEEP_TIMING.batch_size})")
    p.add_argument("--timing-steps", type=positive_int, help=f"timed steps, median taken (default {SWEEP_TIMING.steps})")
    p.add_argument("--storage", help="Optuna RDB URL (default: $NAS_STORAGE, else sqlite in the run directory; postgresql://... for a team)")
    p.add_argument("--address", help="join a Ray cluster (HOST:PORT of `ray start --head`, or auto)")
    p.add_argument("--ray-tmpdir", help="Ray's temp directory (default: Ray's, /tmp/ray)")
    p.add_argument("--ray-dashboard", action="store_true", help="start Ray's own dashboard (off by default)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr (trial start/end, in-trial progress, ETA)")
    p.add_argument("--trial-timeout", type=finite_float, help="seconds; a longer trial is cancelled and stored FAIL (default 21600)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_search)


def cmd_search(args: argparse.Namespace) -> int:
    from runners.config import resolve_config
    from runners.credentials import storage_option, url_password
    from runners.preflight import undo_new_run
    from runners.sweep.run import run_sweep

    train = {k: v for k, v in {"epochs": args.epochs, "image_size": args.image_size, "batch_size": args.batch_size,
                               "data_fraction": args.data_fraction, "score": args.score}.items() if v is not None}
    timing = {k: v for k, v in {"image_size": args.timing_image_size, "batch_size": args.timing_batch_size,
                                "steps": args.timing_steps}.items() if v is not None}
    reward = {k: v for k, v in {"name": args.reward, "w": args.w, "v": args.v}.items() if v is not None}
    overrides = {
        "name": args.name, "runs_dir": args.runs_dir, "data": args.data, "backbone": args.backbone, "n_trials": args.trials,
        "max_concurrent": args.concurrent, "cpus_per_trial": args.cpus_per_trial, "gpus_per_trial": args.gpus_per_trial,
        "sampler": args.sampler, "seed": args.seed, "objective": args.objective, "pruner": args.pruner, "storage": storage_option(args.storage),
        "address": args.address, "ray_tmpdir": args.ray_tmpdir, "ray_dashboard": args.ray_dashboard or None,
        "quiet": args.quiet or None, "trial_timeout": args.trial_timeout, "train": train or None, "timing": timing or None, "reward": reward or None,
    }
    if args.space:
        from nas.io import load_config_file

        overrides["space"] = load_config_file(args.space, "space config")
    config = resolve_config(args.config, overrides)
    with undo_new_run(config):  # a check that needs Ray running comes after the run directory exists
        summary = run_sweep(config)
    if args.storage and url_password(args.storage):  # after the sweep: bad input stays a one-line error
        print("nas search: warning: a password in --storage is visible to other users (process list) and Ray records the "
              "command line as the job's entrypoint; prefer NAS_STORAGE or PGPASSWORD / ~/.pgpass", file=sys.stderr)
    text = (f"sweep {summary['study']} in {summary['run_dir']}: {summary['complete']} complete, {summary['pruned']} pruned, "
            f"{summary['failed']} failed, {summary['wall_seconds']:.0f} s")
    if summary.get("best_reward") is not None:
        from runners.yardstick import verdict

        text += (f"\nbest {verdict(summary['best_trial'], summary['best_metrics'], summary['against_backbone'])}"
                 f"\n  {summary['best_spec_key']}")
    elif summary["complete"]:
        text += "\nno trial has a reward"
    text += (f"\nnext: nas export {summary['run_dir']} -o arch.json   |   nas report {summary['run_dir']}   |   "
             f"nas dashboard {summary['run_dir']}")
    emit(args, summary, text)
    return 0 if summary["complete"] or summary["pruned"] else 1  # nothing finished: a runtime failure
