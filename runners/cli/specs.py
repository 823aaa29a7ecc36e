"""``nas inspect``, ``scale``, ``space`` and ``evaluate``: one spec at a time, no study."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from nas.errors import InputError
from nas.record import TrialRecord
from runners.cli.common import (
    JSON_HELP,
    emit,
    finite_float,
    fixed_width,
    integer,
    positive_int,
)


def add_parsers(sub: Any) -> None:
    """inspect, scale, space, evaluate"""
    from nas.configs import TimingConfig, TrainConfig

    TRAIN, TIMING = TrainConfig(), TimingConfig()  # the help texts show the dataclasses' defaults
    p = sub.add_parser("inspect", help="print a spec's stage table, params and MACs")
    p.add_argument("spec", help="registry name or path to a spec JSON")
    p.add_argument("--image-size", type=positive_int, help="image size for MACs (default: the spec's eval size)")
    p.add_argument("--num-classes", type=positive_int, help="override the classifier size")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("scale", help="compound-scale a spec, or write an S/M/L family")
    p.add_argument("spec", help="registry name or path to a spec JSON")
    p.add_argument("--width", type=finite_float, help="width (channel) multiplier, e.g. 1.1 (no default; needed without --family)")
    p.add_argument("--depth", type=finite_float, help="depth (layer) multiplier, e.g. 1.2 (no default; needed without --family)")
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
    p.add_argument("--epochs", type=positive_int, help=f"proxy training epochs (default {TRAIN.epochs})")
    p.add_argument("--image-size", type=positive_int, help=f"proxy training image size in px (default {TRAIN.image_size})")
    p.add_argument("--batch-size", type=positive_int, help=f"proxy training batch size (default {TRAIN.batch_size})")
    p.add_argument("--seed", type=integer, help=f"training seed (default {TRAIN.seed})")
    p.add_argument("--threads", type=positive_int, help="torch threads (default: torch's choice)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    p.add_argument("--backbone", help="reference spec for S and P (default: the spec itself)")
    p.add_argument("--timing-batch-size", type=positive_int, help=f"batch size of the timed step (default {TIMING.batch_size})")
    p.add_argument("--timing-image-size", type=positive_int, help="image size of the timed step (default: the reference's training image size)")
    p.add_argument("--timing-steps", type=positive_int, help=f"timed steps, median taken (default {TIMING.steps})")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_evaluate)


def stage_table(spec: Any) -> str:
    """A fixed-width table of the stages of ``spec``."""
    rows = [("stage", "operator", "layers", "kernel", "stride", "exp", "in", "out", "se")]
    for index, s in enumerate(spec.stages, 1):
        rows.append((str(index), s.operator, str(s.layers), str(s.kernel), str(s.stride), str(s.expansion),
                     str(s.input_channels), str(s.output_channels), f"{s.se_ratio:g}"))
    return fixed_width(rows)


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
    emit(args, data, text)
    return 0


def _searched_sizes(path: str) -> dict[str, Any] | None:
    """For an ``nas export`` file: the image sizes its trial was trained and timed at in the sweep; None for other specs."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
        provenance = document["provenance"]
        record = TrialRecord.from_attrs(provenance)  # an export's provenance copies its trial's record fields
        train, timing = record.train_config or {}, record.timing_config or {}
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
    emit(args, data, f"wrote {args.output}: {scaled.name}, params {params:,}\n{stage_table(scaled)}")
    return 0


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
    emit(args, {"base": spec.name, "members": data}, "\n".join([f"family of {spec.name}", header, *rows]))
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
    table = fixed_width(rows)
    text = (f"search space over {info['backbone']}\n{table}\n"
            f"distinct architectures: {info['size']:,}\n"
            f"params (at {info['num_classes']} classes): smallest {info['min_params']:,}, largest {info['max_params']:,}")
    emit(args, info, text)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from nas.configs import TimingConfig, TrainConfig
    from nas.evaluate import evaluate_candidate
    from nas.io import load_spec
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

    record = evaluate_candidate(spec, args.data, train, timing_config=timing, backbone=backbone, device=args.device, on_epoch=progress)
    nan = float("nan")
    step_ms = record.step_time_ms if record.step_time_ms is not None else nan
    s = record.normalized_step_time if record.normalized_step_time is not None else nan
    text = (f"{spec.name} on {record.data}: accuracy {record.accuracy:.4f}, step {step_ms:.1f} ms (S = {s:.3f} "
            f"vs {backbone.name}), params {record.params:,}, {record.wall_seconds:.0f} s on {record.device}")
    if not record.ok:
        text += f"\nFAILED: {record.failure_reason}"
    emit(args, record.to_attrs(), text)
    return 0 if record.ok else 1
