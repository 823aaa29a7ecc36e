"""The ``nas`` command: parse, call, print. Nothing else lives here.

Conventions: ``--json`` prints exactly one JSON document on stdout (logs go to stderr);
exit 0 on success, 2 on bad input or usage, 1 on a runtime failure, 130 on Ctrl-C, 143 on SIGTERM.
Every check runs before anything is created (:mod:`runners.preflight`); an existing output file is
refused without ``--force``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from typing import Any, NoReturn

from nas.errors import InputError
from nas.io import printable
from rewards import DEFAULT_V, DEFAULT_W


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints usage too)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (the sweep's cleanup runs), but exit 143."""


_STDOUT = sys.stdout  # the command's result only: main() sends everything else printed to stdout (Ray's log lines) to stderr


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    # names come from user files: no escape sequence reaches the terminal (JSON escapes them itself)
    print(json.dumps(data, indent=2) if getattr(args, "json", False) else printable(text), file=_STDOUT, flush=True)


def _integer(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not allowed, allowed an integer") from None


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer, allowed an integer >= 1") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed, allowed an integer >= 1")
    return number


def _port(value: str) -> int:
    number = _positive_int(value)
    if number > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port, allowed 1..65535")
    return number


def _finite_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number, allowed a finite number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{value!r} is not allowed, allowed a finite number")
    return number


def _fixed_width(rows: list[tuple[str, ...]]) -> str:
    """Right-aligned columns, two spaces apart."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows)


STORAGE_HELP = "the run's storage URL with its password, for a study in PostgreSQL (default $NAS_STORAGE)"
RUN_DIR_HELP = "the run directory of a sweep (RUNS_DIR/NAME, as `nas search` printed it)"
JSON_HELP = "print one JSON document on stdout (logs stay on stderr)"
TRAIN_HELP = {"image-size": "image size in px", "randaugment": "RandAugment magnitude (0 = off)", "mixup": "mixup alpha (0 = off)",
              "dropout": "dropout rate"}


# ---- inspect / scale ---------------------------------------------------------------------
def stage_table(spec: Any) -> str:
    """A fixed-width table of the stages of ``spec``."""
    rows = [("stage", "operator", "layers", "kernel", "stride", "exp", "in", "out", "se")]
    for index, s in enumerate(spec.stages, 1):
        rows.append((str(index), s.operator, str(s.layers), str(s.kernel), str(s.stride), str(s.expansion),
                     str(s.input_channels), str(s.output_channels), f"{s.se_ratio:g}"))
    return _fixed_width(rows)


def cmd_inspect(args: argparse.Namespace) -> int:
    from nas.io import load_spec
    from nas.plan import count_macs, count_spec_params

    spec = load_spec(args.spec, args.num_classes)
    searched = _searched_sizes(args.spec)
    size = args.image_size or (searched["trained_image_size"] if searched else spec.eval_image_size)
    params, macs = count_spec_params(spec), count_macs(spec, size)  # from the spec: nothing is allocated
    data = {"name": spec.name, "params": params, "macs": macs, "image_size": size, "key": spec.key(), "spec": spec.to_dict(),
            "searched": searched}
    sizes = (f"searched and trained at {searched['trained_image_size']} px ({searched['epochs']} proxy epochs on "
             f"{searched['data']}), step time at {searched['timed_image_size']} px; spec's own train/eval image "
             f"{spec.train_image_size}/{spec.eval_image_size}" if searched else
             f"train/eval image {spec.train_image_size}/{spec.eval_image_size}")
    text = (
        f"{spec.name}: stem {spec.stem_channels}, head {spec.head_channels}, {spec.num_classes} classes, {sizes}\n"
        f"{stage_table(spec)}\nparams {params:,}   MACs @{size}: {macs / 1e9:.3f} B"
    )
    _emit(args, data, text)
    return 0


def _searched_sizes(path: str) -> dict[str, Any] | None:
    """For an ``nas export`` file: the image sizes its trial was trained and timed at in the sweep; None for other specs."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
        provenance = document["provenance"]
        train, timing = provenance.get("train_config") or {}, provenance.get("timing_config") or {}
        return {"trained_image_size": int(train["image_size"]), "epochs": train.get("epochs"),
                "timed_image_size": timing.get("image_size"), "data": provenance.get("data"), "trial": provenance.get("trial"),
                "study": provenance.get("study")}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cmd_scale(args: argparse.Namespace) -> int:
    from nas.io import atomic_write_json, load_spec

    spec = load_spec(args.spec)
    if args.family:
        return _scale_family(spec, args)
    if args.width is None or args.depth is None:
        raise InputError("--width/--depth: both are needed, allowed --width W --depth D, or --family")
    if not args.output:
        raise InputError("-o: missing, allowed -o OUT.json")
    from nas.io import check_output_file
    from nas.plan import count_macs, count_spec_params
    from nas.scaling import scale

    check_output_file(args.output, "-o", args.force)
    scaled = scale(spec, args.width, args.depth)
    atomic_write_json(args.output, scaled.to_dict())
    params = count_spec_params(scaled)
    data = {"output": args.output, "params": params, "macs": count_macs(scaled, scaled.eval_image_size), "spec": scaled.to_dict()}
    _emit(args, data, f"wrote {args.output}: {scaled.name}, params {params:,}\n{stage_table(scaled)}")
    return 0


def cmd_space(args: argparse.Namespace) -> int:
    from search_spaces import SearchSpace

    if args.config:
        space = SearchSpace.from_file(args.config, backbone=args.backbone)
    else:
        space = SearchSpace.default(args.backbone or "efficientnetv2-b0")
    info = space.describe()
    rows = [("stage", "operators", "layers", "kernels", "expansions", "stride", "in->out", "choices")]
    for st in info["stages"]:
        rows.append((str(st["stage"]), "/".join(st["operators"]), "{}-{}".format(*st["layers"]),
                     "/".join(map(str, st["kernels"])), "/".join(map(str, st["expansions"])), str(st["stride"]),
                     "{}->{}".format(*st["channels"]), str(st["choices"])))
    table = _fixed_width(rows)
    text = (f"search space over {info['backbone']}\n{table}\n"
            f"distinct architectures: {info['size']:,}\n"
            f"params (at {info['num_classes']} classes): smallest {info['min_params']:,}, largest {info['max_params']:,}")
    _emit(args, info, text)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from nas.io import load_spec
    from nas.timing import TimingConfig
    from nas.train import TrainConfig
    from runners.evaluate import evaluate_candidate
    from runners.preflight import activation_elements, check_device, check_memory

    check_device(args.device)
    spec = load_spec(args.spec)
    backbone = load_spec(args.backbone) if args.backbone else spec
    # flags left out (None) keep the dataclasses' defaults: the one source of evaluate's defaults
    train = TrainConfig(**{k: v for k, v in dict(epochs=args.epochs, image_size=args.image_size, batch_size=args.batch_size,
                                                  seed=args.seed, threads=args.threads).items() if v is not None})
    timing = TimingConfig(**{k: v for k, v in dict(batch_size=args.timing_batch_size, image_size=args.timing_image_size,
                                                   steps=args.timing_steps).items() if v is not None})
    check_memory(activation_elements(spec, train.image_size), train.batch_size, args.device, "--image-size/--batch-size")
    timing_size = timing.image_size or backbone.train_image_size
    for timed in (spec, backbone):
        check_memory(activation_elements(timed, timing_size), timing.batch_size, args.device,
                     "--timing-image-size/--timing-batch-size")

    def progress(epoch: int, m: dict) -> bool:
        print(f"epoch {epoch}/{train.epochs}: val accuracy {m['val_accuracy']:.4f}  val loss {m['val_loss']:.4f}  "
              f"({m['seconds']:.1f} s)", file=sys.stderr)
        return False

    record = evaluate_candidate(spec, args.data, train, timing, backbone=backbone, device=args.device, on_epoch=progress)
    text = (f"{spec.name} on {record['data']}: accuracy {record['accuracy']:.4f}, "
            f"step {record.get('step_time_ms', float('nan')):.1f} ms (S = {record.get('normalized_step_time', float('nan')):.3f} "
            f"vs {backbone.name}), params {record['params']:,}, {record['wall_seconds']:.0f} s on {record['device']}")
    if record["status"] == "failed":
        text += f"\nFAILED: {record['failure_reason']}"
    _emit(args, record, text)
    return 1 if record["status"] == "failed" else 0


def cmd_search(args: argparse.Namespace) -> int:
    from runners.config import resolve_config
    from runners.credentials import storage_option, url_password
    from runners.preflight import undo_new_run
    from runners.sweep import run_sweep

    train = {k: v for k, v in {"epochs": args.epochs, "image_size": args.image_size, "batch_size": args.batch_size}.items()
             if v is not None}
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
    _emit(args, summary, text)
    return 0 if summary["complete"] or summary["pruned"] else 1  # nothing finished: a runtime failure


def cmd_rescore(args: argparse.Namespace) -> int:
    from nas.scores import check_score
    from runners.credentials import storage_option
    from runners.preflight import check_reward
    from runners.results import rescore
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
        lines.append(f"{r['rank']:>4} {change:>6} {r['number']:>5} {r['reward']:>8.4f} {r['old_reward']:>8.4f} "
                     f"{r['accuracy']:>6.3f} {r['normalized_step_time']:>6.3f} {r['normalized_params']:>6.3f}  {r['spec_key']}")
    from runners.results import rescore_yardstick
    from runners.yardstick import summary_lines

    yardstick = rescore_yardstick(run, args.reward, **options)
    _emit(args, {"reward": args.reward, "score": args.score, "options": {k: v for k, v in options.items() if v is not None}, "trials": top,
                 "backbone": yardstick}, "\n".join(lines + summary_lines(yardstick)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from nas.io import check_output_dir, check_output_file
    from runners.credentials import storage_option
    from runners.results import export
    from runners.study import open_run

    output = _export_target(args)
    if args.trial == "pareto":
        check_output_dir(output, "--out-dir" if args.out_dir else "-o")
    else:
        check_output_file(output, "-o", args.force)
    from runners.results import pick_trials
    from runners.yardstick import against_backbone, verdict

    run = open_run(args.run_dir, storage_option(args.storage))
    paths = export(run, args.trial, output, force=args.force)
    trials = pick_trials(run, args.trial)
    comparisons = [against_backbone(run.study, t) for t in trials]
    for trial, against in zip(trials, comparisons):  # the answer to "did the search find anything?", up front
        print(printable(verdict(trial.number, trial.user_attrs, against)), file=sys.stderr)
    beats = [bool(c and c["beats_reward"]) for c in comparisons]
    data = {"written": [str(p) for p in paths], "trials": [t.number for t in trials], "against_backbone": comparisons,
            "beats_backbone": beats}
    _emit(args, data, "\n".join(f"wrote {p}" for p in paths))
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
    from runners.credentials import owner_only_files, storage_option
    from runners.dashboard import serve

    owner_only_files()  # its artifacts go into the run directory
    serve(args.run_dir, host=args.host, port=args.port, storage=storage_option(args.storage))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from nas.io import check_output_file
    from runners.credentials import owner_only_files, storage_option
    from runners.report import write_report
    from runners.study import open_run

    if args.output:  # the default RUN_DIR/report.html is the tool's own and is refreshed
        check_output_file(args.output, "-o", args.force)
    owner_only_files()  # the report goes into the run directory by default
    run = open_run(args.run_dir, storage_option(args.storage))
    path = write_report(run, args.output or run.path / "report.html")
    _emit(args, {"report": str(path)}, f"wrote {path}")
    return 0


def cmd_fidelity(args: argparse.Namespace) -> int:
    from runners.credentials import storage_option
    from runners.fidelity import FidelityConfig, run_fidelity, summary_text
    from runners.study import open_run

    run = open_run(args.run_dir, storage_option(args.storage))
    config = FidelityConfig(trials=args.trials, epochs=args.epochs or 4 * run.config.train.epochs,
                            image_size=args.image_size or run.config.train.image_size, data_fraction=args.data_fraction,
                            concurrent=args.concurrent or run.config.max_concurrent, ceiling=not args.no_ceiling)
    result = run_fidelity(run, config)
    _emit(args, result, summary_text(result))
    return 0 if result["trials"] else 1


def cmd_calibrate(args: argparse.Namespace) -> int:
    from runners.calibrate import CalibrationConfig, run_calibration, summary_text
    from runners.study import open_run

    run = open_run(args.run_dir)
    config = CalibrationConfig(trials=args.trials, epochs=tuple(args.epochs), image_sizes=tuple(args.image_sizes),
                               data_fractions=tuple(args.data_fractions), long_epochs=args.long_epochs or 8 * max(args.epochs),
                               long_image_size=args.long_image_size or max(args.image_sizes), long_data_fraction=args.long_data_fraction,
                               target=args.target, concurrent=args.concurrent or run.config.max_concurrent)
    result = run_calibration(run, config)
    _emit(args, result, summary_text(result))
    return 0


def _number_list(kind: Any) -> Any:
    def parse(value: str) -> list:
        try:
            return [kind(part) for part in value.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not allowed, allowed a comma-separated list of {kind.__name__}s") from None

    return parse


def _scale_family(spec: Any, args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from nas.io import atomic_write_json, check_output_dir, safe_name
    from nas.plan import count_macs, count_spec_params
    from nas.scaling import MEMBERS, family

    members = tuple(m.strip() for m in args.members.split(",") if m.strip())
    unknown = [m for m in members if m not in MEMBERS]
    if unknown or not members:
        raise InputError(f"--members: unknown member(s) {', '.join(unknown) or '(none)'}, allowed {', '.join(MEMBERS)}")
    if not args.output:
        raise InputError("-o: missing, allowed -o OUT_DIR with --family")
    out = check_output_dir(args.output, "-o")
    specs = family(spec, members)
    # a spec's name becomes a file name: sanitized, so it cannot leave -o (../../x) or hide (.x)
    paths = {name: out / f"{safe_name(member_spec.name)}.json" for name, member_spec in specs.items()}
    existing = [p for p in paths.values() if p.exists()]
    if existing and not args.force:
        raise InputError(f"-o: {existing[0]} exists, allowed a new path or --force to overwrite")
    rows, data = [], []
    for name, member_spec in specs.items():
        path = paths[name]
        atomic_write_json(path, member_spec.to_dict())
        p = MEMBERS[name].progressive
        params, macs = count_spec_params(member_spec), count_macs(member_spec, member_spec.eval_image_size)
        data.append({"member": name, "path": str(path), "params": params, "macs": macs,
                     "train_image_size": member_spec.train_image_size, "eval_image_size": member_spec.eval_image_size,
                     "progressive": asdict(p), "spec": member_spec.to_dict()})
        rows.append(f"{name:>6} {params:>13,} {macs / 1e9:>8.2f} {member_spec.train_image_size:>6} {member_spec.eval_image_size:>5}  "
                    f"{p.min_image_size}->{p.max_image_size}  RA {p.min_randaugment:g}->{p.max_randaugment:g}  "
                    f"mixup {p.min_mixup:g}->{p.max_mixup:g}  dropout {p.min_dropout:g}->{p.max_dropout:g}  {path}")
    header = f"{'member':>6} {'params':>13} {'GMACs':>8} {'train':>6} {'eval':>5}  progressive learning (size, RandAugment, mixup, dropout)"
    _emit(args, {"base": spec.name, "members": data}, "\n".join([f"family of {spec.name}", header, *rows]))
    return 0


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


def _print_progress(info: dict[str, Any]) -> None:
    """``nas train``'s in-epoch line on stderr (the hook calls it at most every few seconds)."""
    print(f"  epoch {info['epoch']}/{info['epochs']}, step {info['step']}/{info['steps']}, "
          f"{info['images_per_second']:.0f} img/s, {info['seconds']:.0f} s", file=sys.stderr, flush=True)


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
                                on_progress=_print_progress)
    plot_curves(summary["history"], schedule(config), Path(out) / "curves.png")
    summary["out"] = out
    text = (f"{summary['mode']} training of {spec.name} on {summary['data']}: test accuracy {summary['test_accuracy']:.4f} "
            f"at {summary['eval_image_size']}px, {summary['train_seconds']:.0f} s of training\n"
            f"wrote {out}/summary.json, {out}/curves.png, {out}/checkpoint.pt")
    _emit(args, summary, text)
    return 0


def make_parser() -> argparse.ArgumentParser:
    """The ``nas`` argument parser; help texts show the real defaults (read from the config dataclasses)."""
    from nas.schedule import ProgressiveConfig
    from nas.timing import TimingConfig
    from nas.train import TrainConfig
    from runners.config import DEFAULT_TIMING, DEFAULT_TRAIN

    global PROG, TRAIN, TIMING, SWEEP_TRAIN, SWEEP_TIMING, CONSTRAINED
    PROG, TRAIN, TIMING, SWEEP_TRAIN, SWEEP_TIMING = ProgressiveConfig(), TrainConfig(), TimingConfig(), DEFAULT_TRAIN, DEFAULT_TIMING
    CONSTRAINED = {"target": 1.0, "alpha": 0.0, "beta": -1.0}  # rewards.constrained's keyword defaults
    parser = _Parser(prog="nas", description="Training-aware neural architecture search (EfficientNetV2-style).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("inspect", help="print a spec's stage table, params and MACs")
    p.add_argument("spec", help="registry name or path to a spec JSON")
    p.add_argument("--image-size", type=_positive_int, help="image size for MACs (default: the spec's eval size)")
    p.add_argument("--num-classes", type=_positive_int, help="override the classifier size")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("scale", help="compound-scale a spec, or write an S/M/L family")
    p.add_argument("spec", help="registry name or path to a spec JSON")
    p.add_argument("--width", type=_finite_float, help="width (channel) multiplier, e.g. 1.1 (no default; needed without --family)")
    p.add_argument("--depth", type=_finite_float, help="depth (layer) multiplier, e.g. 1.2 (no default; needed without --family)")
    p.add_argument("--family", action="store_true", help="write the S/M/L family (rule in nas.scaling)")
    p.add_argument("--members", default="s,m,l", help="family members to write (default s,m,l)")
    p.add_argument("-o", "--output", help="OUT.json (or OUT_DIR with --family); required")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_scale)

    p = sub.add_parser("space", help="print the search space, its size and parameter range")
    p.add_argument("--backbone", help="registry name or spec JSON (default efficientnetv2-b0)")
    p.add_argument("--config", help="space config (YAML, TOML or JSON; default: the full default space)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_space)

    p = sub.add_parser("evaluate", help="proxy-train one spec, time its training step, count it")
    p.add_argument("spec", help="registry name or spec JSON")
    p.add_argument("--data", default="digits", help="digits (built in) or a path: IDX dir, CIFAR dir, image folder, .npz")
    p.add_argument("--epochs", type=_positive_int, help=f"proxy training epochs (default {TRAIN.epochs})")
    p.add_argument("--image-size", type=_positive_int, help=f"proxy training image size in px (default {TRAIN.image_size})")
    p.add_argument("--batch-size", type=_positive_int, help=f"proxy training batch size (default {TRAIN.batch_size})")
    p.add_argument("--seed", type=_integer, help=f"training seed (default {TRAIN.seed})")
    p.add_argument("--threads", type=_positive_int, help="torch threads (default: torch's choice)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    p.add_argument("--backbone", help="reference spec for S and P (default: the spec itself)")
    p.add_argument("--timing-batch-size", type=_positive_int, help=f"batch size of the timed step (default {TIMING.batch_size})")
    p.add_argument("--timing-image-size", type=_positive_int, help="image size of the timed step (default: the reference's training image size)")
    p.add_argument("--timing-steps", type=_positive_int, help=f"timed steps, median taken (default {TIMING.steps})")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("search", help="run (or resume) a search sweep on Ray with an Optuna study")
    p.add_argument("--config", help="sweep config (YAML, TOML or JSON); flags override it")
    p.add_argument("--name", help="sweep name: the run directory is RUNS_DIR/NAME (default 'default')")
    p.add_argument("--runs-dir", help="parent of run directories (default ./runs)")
    p.add_argument("--data", help="digits (default) or a data path")
    p.add_argument("--backbone", help="backbone spec for the space and the S/P reference (default efficientnetv2-b0)")
    p.add_argument("--space", help="search-space config file (see `nas space`)")
    p.add_argument("--trials", type=_positive_int, help="number of finished trials to reach (default 8)")
    p.add_argument("--concurrent", type=_positive_int, help="max concurrent trials (default: from the machine, see README Layout)")
    p.add_argument("--cpus-per-trial", type=_finite_float, help="CPUs (and torch threads) per trial (default: from the machine, see README Layout)")
    p.add_argument("--gpus-per-trial", type=_finite_float, help="GPUs per trial; fractions share a GPU (default 0)")
    p.add_argument("--sampler", help="tpe (default, multivariate), random, qmc, nsga2, rl (REINFORCE), evolution (regularized)")
    p.add_argument("--seed", type=_integer, help="sampler and training seed (default 0)")
    p.add_argument("--objective", help="reward (default) or multi (maximize A, minimize S and P)")
    p.add_argument("--reward", help="paper (default), constrained, accuracy")
    p.add_argument("--w", type=_finite_float, help=f"step-time exponent of the paper reward (default {DEFAULT_W})")
    p.add_argument("--v", type=_finite_float, help=f"params exponent of the paper reward (default {DEFAULT_V})")
    p.add_argument("--pruner", help="none (default) or asha (successive halving on per-epoch accuracy)")
    p.add_argument("--epochs", type=_positive_int, help=f"proxy training epochs per trial (default {SWEEP_TRAIN.epochs})")
    p.add_argument("--image-size", type=_positive_int, help=f"proxy training image size in px (default {SWEEP_TRAIN.image_size})")
    p.add_argument("--batch-size", type=_positive_int, help=f"proxy training batch size (default {SWEEP_TRAIN.batch_size})")
    p.add_argument("--timing-image-size", type=_positive_int, help=f"image size of the timed step (default {SWEEP_TIMING.image_size})")
    p.add_argument("--timing-batch-size", type=_positive_int, help=f"batch size of the timed step (default {SWEEP_TIMING.batch_size})")
    p.add_argument("--timing-steps", type=_positive_int, help=f"timed steps, median taken (default {SWEEP_TIMING.steps})")
    p.add_argument("--storage", help="Optuna RDB URL (default: $NAS_STORAGE, else sqlite in the run directory; postgresql://... for a team)")
    p.add_argument("--address", help="join a Ray cluster (HOST:PORT of `ray start --head`, or auto)")
    p.add_argument("--ray-tmpdir", help="Ray's temp directory (default: Ray's, /tmp/ray)")
    p.add_argument("--ray-dashboard", action="store_true", help="start Ray's own dashboard (off by default)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr (trial start/end, in-trial progress, ETA)")
    p.add_argument("--trial-timeout", type=_finite_float, help="seconds; a longer trial is cancelled and stored FAIL (default 21600)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("rescore", help="re-rank a finished sweep under another reward, without training")
    p.add_argument("run_dir", help=RUN_DIR_HELP)
    p.add_argument("--reward", default="paper", help="paper (default), constrained, accuracy")
    p.add_argument("--w", type=_finite_float, help=f"paper: step-time exponent (default {DEFAULT_W})")
    p.add_argument("--v", type=_finite_float, help=f"paper: params exponent (default {DEFAULT_V})")
    p.add_argument("--target", type=_finite_float, help=f"constrained: target normalized step time (default {CONSTRAINED['target']})")
    p.add_argument("--alpha", type=_finite_float, help=f"constrained: exponent when the target is met (default {CONSTRAINED['alpha']})")
    p.add_argument("--beta", type=_finite_float, help=f"constrained: exponent when it is not (default {CONSTRAINED['beta']})")
    p.add_argument("--top", type=_positive_int, default=10, help="rows to print (default 10)")
    p.add_argument("--score", default="accuracy", help="proxy score from each trial's curve: accuracy (final, default), "
                   "best_accuracy (A in the reward), val_loss, sotl, sotl_last (rank by the score itself)")
    p.add_argument("--storage", help=STORAGE_HELP)
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_rescore)

    p = sub.add_parser("export", help="write the spec JSON of a trial with provenance")
    p.add_argument("run_dir", help=RUN_DIR_HELP)
    p.add_argument("--trial", default="best", help="best (default), pareto (writes a directory), or a trial number")
    p.add_argument("-o", "--output", help="arch.json (with --trial pareto: a directory, written DIR/ with a trailing slash)")
    p.add_argument("--out-dir", help="with --trial pareto: the directory for trial-N.json files (instead of -o DIR/)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.add_argument("--storage", help=STORAGE_HELP)
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("dashboard", help="serve the sweep in optuna-dashboard with NAS notes")
    p.add_argument("run_dir", help=RUN_DIR_HELP)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=8080, help="TCP port (default 8080)")
    p.add_argument("--storage", help=STORAGE_HELP)
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("report", help="write a self-contained HTML report of a sweep")
    p.add_argument("run_dir", help=RUN_DIR_HELP)
    p.add_argument("-o", "--output", help="report.html (default RUN_DIR/report.html, refreshed each time)")
    p.add_argument("--force", action="store_true", help="overwrite an existing -o file")
    p.add_argument("--storage", help=STORAGE_HELP)
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("fidelity", help="retrain K finished trials longer: does the proxy rank them like a long schedule?")
    p.add_argument("run_dir", help=RUN_DIR_HELP)
    p.add_argument("--trials", type=_positive_int, default=8, help="trials to retrain, incl. the best and the backbone (default 8)")
    p.add_argument("--epochs", type=_positive_int, help="long-schedule epochs (default 4x the sweep's)")
    p.add_argument("--image-size", type=_positive_int, help="long-schedule image size (default the sweep's)")
    p.add_argument("--data-fraction", type=_finite_float, default=1.0, help="share of the training split used (default 1)")
    p.add_argument("--concurrent", type=_positive_int, help="retrainings at a time (default the sweep's)")
    p.add_argument("--no-ceiling", action="store_true", help="train the long schedule once (no second seed: no noise ceiling)")
    p.add_argument("--storage", help=STORAGE_HELP)
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_fidelity)

    p = sub.add_parser("calibrate", help="proxy settings grid vs the long schedule twice: the cheapest proxy near the seed ceiling")
    p.add_argument("run_dir", help=RUN_DIR_HELP)
    p.add_argument("--trials", type=_positive_int, default=12, help="architectures, incl. the backbone (default 12)")
    p.add_argument("--epochs", type=_number_list(int), default=[1, 2], help="proxy epochs to try (default 1,2)")
    p.add_argument("--image-sizes", type=_number_list(int), default=[16, 32], help="proxy image sizes to try (default 16,32)")
    p.add_argument("--data-fractions", type=_number_list(float), default=[0.25, 1.0], help="training-data fractions (default 0.25,1)")
    p.add_argument("--long-epochs", type=_positive_int, help="long-schedule epochs (default 8x the largest proxy epochs)")
    p.add_argument("--long-image-size", type=_positive_int, help="long-schedule image size (default the largest proxy size)")
    p.add_argument("--long-data-fraction", type=_finite_float, default=1.0, help="long-schedule data fraction (default 1)")
    p.add_argument("--target", type=_finite_float, default=0.8, help="fraction of the seed ceiling to reach (default 0.8)")
    p.add_argument("--concurrent", type=_positive_int, help="trainings at a time (default the sweep's)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("train", help="final training with progressive learning (Algorithm 1)")
    p.add_argument("spec", help="registry name, spec JSON or an exported arch.json")
    p.add_argument("--data", required=True, help="required: digits (built in) or a path: IDX dir, CIFAR dir, image folder, .npz")
    p.add_argument("--epochs", type=_positive_int, help=f"training epochs (default {PROG.epochs})")
    p.add_argument("--stages", type=_integer, help=f"number of progressive stages M (default {PROG.stages}, also with --member; "
                   "never more than --epochs)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--fixed", action="store_true", help="train every epoch at the end values (baseline)")
    p.add_argument("--member", help="take the start/end values of family member s, m or l (default: small-image defaults below)")
    for name in ("min-image-size", "max-image-size", "eval-image-size", "min-randaugment", "max-randaugment", "min-mixup",
                 "max-mixup", "min-dropout", "max-dropout"):
        field = name.replace("-", "_")
        default = getattr(PROG, field)
        shown = "the last stage's size" if default is None else f"{default:g}"
        p.add_argument(f"--{name}", type=_integer if name.endswith("size") else _finite_float,
                       help=f"{TRAIN_HELP[name.split('-', 1)[1]]}, {name.split('-')[0]} (default {shown}; --member sets its own)")
    p.add_argument("--batch-size", type=_positive_int, help=f"batch size (default {PROG.batch_size})")
    p.add_argument("--lr", type=_finite_float, help=f"peak learning rate (default {PROG.lr:g})")
    p.add_argument("--ema", type=_finite_float, help="EMA decay of the weights (e.g. 0.999); off by default")
    p.add_argument("--seed", type=_integer, help=f"seed (default {PROG.seed})")
    p.add_argument("--threads", type=_positive_int, help="torch threads (default: torch's choice)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    p.add_argument("--out", help="output directory (default runs/train-SPECNAME); an existing checkpoint there is resumed, "
                   "and a larger --epochs extends a finished run")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_train)

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
    global _STDOUT
    _STDOUT = sys.stdout
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


if __name__ == "__main__":
    raise SystemExit(main())
