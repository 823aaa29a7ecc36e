"""Progressive learning vs fixed-size training, same spec, data, epochs and seeds (issue 9).

Prints per-run test accuracy and training time, then the wall-time ratio (progressive / fixed,
target <= 0.7) and the test-accuracy difference (target: within 0.5 points or better).

    python bench/bench_progressive.py --data ../shared/data/cifar10/cifar-10-batches-py
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nas.data import Dataset, load_dataset  # noqa: E402
from nas.io import load_spec  # noqa: E402
from nas.progressive import train_progressive  # noqa: E402
from nas.schedule import ProgressiveConfig  # noqa: E402
from nas.spec import NetworkSpec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="../shared/data/cifar10/cifar-10-batches-py")
    parser.add_argument("--train-subset", type=int, default=10000)
    parser.add_argument("--test-subset", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--spec", default=None, help="registry name or spec JSON (default: a small all-Fused-MBConv net)")
    parser.add_argument("--stages", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--min-size", type=int, default=16)
    parser.add_argument("--max-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    full = load_dataset(args.data)
    data = Dataset(full.name, full.train_images[: args.train_subset], full.train_labels[: args.train_subset],
                   full.test_images[: args.test_subset], full.test_labels[: args.test_subset], full.num_classes, full.class_names)
    # the default is all Fused-MBConv: on CPU, depthwise-conv backward at 1-2 px costs the same at any
    # input size (bench/RESULTS.md), which would hide what image size does to training time
    spec = load_spec(args.spec) if args.spec else NetworkSpec.from_block_strings(
        "fused-small", 24, ["r1_k3_s1_e1_i24_o24_c1", "r2_k3_s2_e4_i24_o48_c1", "r2_k3_s2_e4_i48_o64_c1", "r3_k3_s2_e4_i64_o128_c1"],
        head_channels=512)
    common = dict(epochs=args.epochs, stages=args.stages, min_image_size=args.min_size, max_image_size=args.max_size,
                  eval_image_size=args.max_size, min_randaugment=2, max_randaugment=6, min_mixup=0.0, max_mixup=0.1,
                  min_dropout=0.1, max_dropout=0.2, batch_size=args.batch_size, threads=args.threads)
    results: dict[str, list[dict]] = {"progressive": [], "fixed": []}
    for seed in range(args.seeds):
        for mode in ("fixed", "progressive"):
            config = ProgressiveConfig(progressive=mode == "progressive", seed=seed, **common)
            with tempfile.TemporaryDirectory() as out:
                s = train_progressive(spec, data, config, out, device=args.device, log=lambda m: None)
            results[mode].append({"seed": seed, "test_accuracy": s["test_accuracy"], "train_seconds": s["train_seconds"]})
            print(f"{mode:>11} seed {seed}: test accuracy {s['test_accuracy']:.4f}, training {s['train_seconds']:.1f} s", flush=True)
    p_time = statistics.fmean(r["train_seconds"] for r in results["progressive"])
    f_time = statistics.fmean(r["train_seconds"] for r in results["fixed"])
    p_acc = statistics.fmean(r["test_accuracy"] for r in results["progressive"])
    f_acc = statistics.fmean(r["test_accuracy"] for r in results["fixed"])
    print(json.dumps({
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}", "device": args.device or "auto",
        "torch": torch.__version__, "threads": args.threads, "spec": spec.key(), "data": f"{data.name} {args.train_subset}/{args.test_subset}",
        "epochs": args.epochs, "stages": args.stages, "sizes": [args.min_size, args.max_size], "seeds": args.seeds,
        "wall_time_ratio": p_time / f_time, "progressive_seconds": p_time, "fixed_seconds": f_time,
        "progressive_accuracy": p_acc, "fixed_accuracy": f_acc, "accuracy_difference_points": 100 * (p_acc - f_acc),
        "runs": results,
    }, indent=1))


if __name__ == "__main__":
    main()
