"""``nas rescore``, ``export``, ``dashboard``, ``report``, ``fidelity`` and ``calibrate``: reading a sweep back (:mod:`runners.analysis`)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from nas.errors import InputError
from nas.io import printable
from nas.record import METRICS, SPEC_KEY
from rewards import DEFAULT_V, DEFAULT_W
from runners.cli.common import (
    JSON_HELP,
    RUN_DIR_HELP,
    STORAGE_HELP,
    emit,
    finite_float,
    number_list,
    port,
    positive_int,
)

CONSTRAINED = {"target": 1.0, "alpha": 0.0, "beta": -1.0}  # rewards.constrained's keyword defaults


def run_options(p: argparse.ArgumentParser, *, json: bool = True) -> None:
    """What every command on a run directory takes: the directory, its storage, and ``--json``."""
    p.add_argument("run_dir", help=RUN_DIR_HELP)
    p.add_argument("--storage", help=STORAGE_HELP)
    if json:
        p.add_argument("--json", action="store_true", help=JSON_HELP)


def add_parsers(sub: Any) -> None:
    """rescore, export, dashboard, report, fidelity, calibrate"""
    p = sub.add_parser("rescore", help="re-rank a finished sweep under another reward, without training")
    p.add_argument("--reward", default="paper", help="paper (default), constrained, accuracy")
    p.add_argument("--w", type=finite_float, help=f"paper: step-time exponent (default {DEFAULT_W})")
    p.add_argument("--v", type=finite_float, help=f"paper: params exponent (default {DEFAULT_V})")
    p.add_argument("--target", type=finite_float, help=f"constrained: target normalized step time (default {CONSTRAINED['target']})")
    p.add_argument("--alpha", type=finite_float, help=f"constrained: exponent when the target is met (default {CONSTRAINED['alpha']})")
    p.add_argument("--beta", type=finite_float, help=f"constrained: exponent when it is not (default {CONSTRAINED['beta']})")
    p.add_argument("--top", type=positive_int, default=10, help="rows to print (default 10)")
    p.add_argument("--score", default="accuracy", help="proxy score from each trial's curve: accuracy (final, default), "
                   "best_accuracy, train_likelihood (A in the reward), val_loss, sotl, sotl_last (rank by the score itself)")
    run_options(p)
    p.set_defaults(func=cmd_rescore)

    p = sub.add_parser("export", help="write the spec JSON of a trial with provenance")
    p.add_argument("--trial", default="best", help="best (default), pareto (writes a directory), or a trial number")
    p.add_argument("-o", "--output", help="arch.json (with --trial pareto: a directory, written DIR/ with a trailing slash)")
    p.add_argument("--out-dir", help="with --trial pareto: the directory for trial-N.json files (instead of -o DIR/)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    run_options(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("dashboard", help="serve the sweep in optuna-dashboard with NAS notes")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port, default=8080, help="TCP port (default 8080)")
    run_options(p, json=False)
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("report", help="write a self-contained HTML report of a sweep")
    p.add_argument("-o", "--output", help="report.html (default RUN_DIR/report.html, refreshed each time)")
    p.add_argument("--force", action="store_true", help="overwrite an existing -o file")
    run_options(p)
    p.set_defaults(func=cmd_report)

    add_audit_parsers(sub)


def add_audit_parsers(sub: Any) -> None:
    """fidelity, calibrate: retraining stored trials to judge the proxy."""
    p = sub.add_parser("fidelity", help="retrain K finished trials longer: does the proxy rank them like a long schedule?")
    p.add_argument("--trials", type=positive_int, default=8, help="trials to retrain, incl. the best and the backbone (default 8)")
    p.add_argument("--epochs", type=positive_int, help="long-schedule epochs (default 4x the sweep's)")
    p.add_argument("--image-size", type=positive_int, help="long-schedule image size (default the sweep's)")
    p.add_argument("--data-fraction", type=finite_float, default=1.0, help="share of the training split used (default 1)")
    p.add_argument("--concurrent", type=positive_int, help="retrainings at a time (default the sweep's)")
    p.add_argument("--no-ceiling", action="store_true", help="train the long schedule once (no second seed: no noise ceiling)")
    run_options(p)
    p.set_defaults(func=cmd_fidelity)

    p = sub.add_parser("calibrate", help="proxy settings grid vs the long schedule twice: the cheapest proxy near the seed ceiling")
    p.add_argument("--trials", type=positive_int, default=12, help="architectures, incl. the backbone (default 12)")
    p.add_argument("--epochs", type=number_list(int), default=[1, 2], help="proxy epochs to try (default 1,2)")
    p.add_argument("--image-sizes", type=number_list(int), default=[16, 32], help="proxy image sizes to try (default 16,32)")
    p.add_argument("--data-fractions", type=number_list(float), default=[0.25, 1.0], help="training-data fractions (default 0.25,1)")
    p.add_argument("--long-epochs", type=positive_int, help="long-schedule epochs (default 8x the largest proxy epochs)")
    p.add_argument("--long-image-size", type=positive_int, help="long-schedule image size (default the largest proxy size)")
    p.add_argument("--long-data-fraction", type=finite_float, default=1.0, help="long-schedule data fraction (default 1)")
    p.add_argument("--target", type=finite_float, default=0.8, help="fraction of the seed ceiling to reach (default 0.8)")
    p.add_argument("--concurrent", type=positive_int, help="trainings at a time (default the sweep's)")
    run_options(p)
    p.set_defaults(func=cmd_calibrate)


def cmd_rescore(args: argparse.Namespace) -> int:
    from nas.scores import check_score
    from runners.analysis.results import rescore
    from runners.credentials import storage_option
    from runners.preflight import check_reward
    from runners.study import open_run

    options = {"w": args.w, "v": args.v, "target": args.target, "alpha": args.alpha, "beta": args.beta}
    check_reward(args.reward, {k: v for k, v in options.items() if v is not None})
    check_score(args.score)  # before the run is opened: a refused command touches nothing
    run = open_run(args.run_dir, storage_option(args.storage))
    rows = rescore(run, args.reward, score=args.score, **options)
    top = rows[: args.top]
    lines = [" ".join([f"{len(rows)} finished trials re-scored with {args.reward}",
                       *(f"{k}={v:g}" for k, v in options.items() if v is not None)]) + f", proxy score {args.score}",
             f"{'rank':>4} {'change':>6} {'trial':>5} {'reward':>8} {'old':>8} {'acc':>6} {'S':>6} {'P':>6}  spec"]
    for r in top:
        change = f"{r['rank_change']:+d}" if r["rank_change"] else "="
        a, s, p, key = (r[name] for name in (*METRICS, SPEC_KEY))
        lines.append(f"{r['rank']:>4} {change:>6} {r['number']:>5} {r['reward']:>8.4f} {r['old_reward']:>8.4f} "
                     f"{a:>6.3f} {s:>6.3f} {p:>6.3f}  {key}")
    from runners.analysis.results import rescore_yardstick
    from runners.yardstick import summary_lines

    yardstick = rescore_yardstick(run, args.reward, **options)
    emit(args, {"reward": args.reward, "score": args.score, "options": {k: v for k, v in options.items() if v is not None}, "trials": top,
                 "backbone": yardstick}, "\n".join(lines + summary_lines(yardstick)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from nas.io import check_output_dir, check_output_file
    from runners.analysis.results import export
    from runners.credentials import storage_option
    from runners.study import open_run

    output = _export_target(args)
    if args.trial == "pareto":
        check_output_dir(output, "--out-dir" if args.out_dir else "-o")
    else:
        check_output_file(output, "-o", args.force)
    from nas.record import record_of
    from runners.analysis.results import pick_trials
    from runners.yardstick import against_backbone, verdict

    run = open_run(args.run_dir, storage_option(args.storage))
    paths = export(run, args.trial, output, force=args.force)
    trials = pick_trials(run, args.trial)
    comparisons = [against_backbone(run.study, t) for t in trials]
    for trial, against in zip(trials, comparisons):  # the answer to "did the search find anything?", up front
        print(printable(verdict(trial.number, record_of(trial), against)), file=sys.stderr)
    beats = [bool(c and c["beats_reward"]) for c in comparisons]
    data = {"written": [str(p) for p in paths], "trials": [t.number for t in trials], "against_backbone": comparisons,
            "beats_backbone": beats}
    emit(args, data, "\n".join(f"wrote {p}" for p in paths))
    return 0


def _export_target(args: argparse.Namespace) -> str:
    """Where ``nas export`` writes: a file (-o), or with ``--trial pareto`` a directory named explicitly (-o DIR/ or --out-dir)."""
    if args.trial != "pareto":
        if args.out_dir:
            raise InputError("--out-dir: only with --trial pareto, allowed -o FILE.json for one trial")
        if not args.output:
            raise InputError("-o: missing, allowed -o arch.json")
        return args.output
    if args.out_dir and args.output:
        raise InputError("-o/--out-dir: give one, allowed --out-dir DIR or -o DIR/")
    if args.out_dir:
        return args.out_dir
    if not args.output:
        raise InputError("--out-dir: missing, --trial pareto writes one file per trial: allowed --out-dir DIR or -o DIR/")
    if not args.output.endswith(("/", os.sep)) and not os.path.isdir(args.output):
        raise InputError(f"-o: {args.output!r} is not a directory; --trial pareto writes one trial-N.json per Pareto trial into a "
                         f"directory named explicitly, allowed -o {args.output}/ or --out-dir {args.output}")
    return args.output


def cmd_dashboard(args: argparse.Namespace) -> int:
    from runners.analysis.dashboard import serve
    from runners.credentials import owner_only_files, storage_option

    owner_only_files()  # its artifacts go into the run directory
    serve(args.run_dir, host=args.host, port=args.port, storage=storage_option(args.storage))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from nas.io import check_output_file
    from runners.analysis.report import write_report
    from runners.credentials import owner_only_files, storage_option
    from runners.study import open_run

    if args.output:  # the default RUN_DIR/report.html is the tool's own and is refreshed
        check_output_file(args.output, "-o", args.force)
    owner_only_files()  # the report goes into the run directory by default
    run = open_run(args.run_dir, storage_option(args.storage))
    path = write_report(run, args.output or run.path / "report.html")
    emit(args, {"report": str(path)}, f"wrote {path}")
    return 0


def cmd_fidelity(args: argparse.Namespace) -> int:
    from runners.analysis.fidelity import FidelityConfig, run_fidelity, summary_text
    from runners.credentials import storage_option
    from runners.study import open_run

    run = open_run(args.run_dir, storage_option(args.storage))
    config = FidelityConfig(trials=args.trials, epochs=args.epochs or 4 * run.config.train.epochs,
                            image_size=args.image_size or run.config.train.image_size, data_fraction=args.data_fraction,
                            concurrent=args.concurrent or run.config.max_concurrent, ceiling=not args.no_ceiling)
    result = run_fidelity(run, config)
    emit(args, result, summary_text(result))
    return 0 if result["trials"] else 1


def cmd_calibrate(args: argparse.Namespace) -> int:
    from runners.analysis.calibrate import CalibrationConfig, run_calibration, summary_text
    from runners.credentials import storage_option
    from runners.study import open_run

    run = open_run(args.run_dir, storage_option(args.storage))
    config = CalibrationConfig(trials=args.trials, epochs=tuple(args.epochs), image_sizes=tuple(args.image_sizes),
                               data_fractions=tuple(args.data_fractions), long_epochs=args.long_epochs or 8 * max(args.epochs),
                               long_image_size=args.long_image_size or max(args.image_sizes), long_data_fraction=args.long_data_fraction,
                               target=args.target, concurrent=args.concurrent or run.config.max_concurrent)
    result = run_calibration(run, config)
    emit(args, result, summary_text(result))
    return 0
