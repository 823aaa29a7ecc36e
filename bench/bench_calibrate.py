"""Proxy calibration benchmark (issue 24): which proxy setting ranks architectures like a long schedule, at what cost?

1. a real sweep on a Fashion-MNIST (or ``--data cifar10``) subset (``--train`` images per class, sweep ``--seed``, default 0)
   with the backbone yardstick:
   ``--trials`` trials plus the backbone, proxy ``--epochs`` at ``--size`` px (the architectures to rank);
2. ``nas calibrate`` on ``--k`` of them (the backbone and a spread): the long schedule (``--long-epochs`` at
   ``--long-size`` px, full training split) twice with two seeds (the noise ceiling), and the grid
   ``--grid-epochs`` x ``--grid-sizes`` x ``--grid-fractions``; cost (CPU seconds per architecture) against
   Kendall tau as a fraction of the ceiling per grid point and proxy score, the plot and the recommended setting.

    nice -n 10 python bench/bench_calibrate.py > bench/logs/calibrate.log 2>&1   # about 1-2 h on a 2-core CPU shared with other jobs
    python bench/bench_calibrate.py --train 80 --val 150 --work /tmp/cal-val --out bench/calibration-val150
    python bench/bench_calibrate.py --data cifar10 --train 80 --val 150 --grid-sizes 16,32 --long-size 32 \
        --work /tmp/cal-cifar --out bench/calibration-cifar10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import optuna  # noqa: E402
from bench_search import FASHION, nas, subset  # noqa: E402

SOURCES = {"fashion": (FASHION, "Fashion-MNIST", "grey 28x28"), "cifar10": (str(Path(FASHION).parent / "cifar10" / "cifar-10-batches-py"), "CIFAR-10", "RGB 32x32")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=100, help="training images per class (default 100; 20%% of them validate "
                                                             "unless --val is given)")
    parser.add_argument("--val", type=int, default=None, help="validation images per class, besides --train: a validation set "
                                                            "large enough that the seed ceiling is not evaluation noise")
    parser.add_argument("--data", choices=sorted(SOURCES), default="fashion", help="the data set the subset comes from")
    parser.add_argument("--trials", type=int, default=12, help="sweep trials (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="the sweep's seed: another seed, other architectures (default 0)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--k", type=int, default=12, help="architectures calibrated, incl. the backbone (default 12)")
    parser.add_argument("--grid-epochs", default="1,2")
    parser.add_argument("--grid-sizes", default="16,28")
    parser.add_argument("--grid-fractions", default="0.25,1")
    parser.add_argument("--long-epochs", type=int, default=8)
    parser.add_argument("--long-size", type=int, default=28)
    parser.add_argument("--target", type=float, default=0.8)
    parser.add_argument("--out", default=str(ROOT / "bench" / "calibration"), help="where the table, plot and snippet are copied")
    parser.add_argument("--work", default="/tmp/nas-bench-calibrate", help="the sweep's runs dir, kept: a rerun resumes what is stored")
    args = parser.parse_args()
    import torch

    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs (shared with other jobs), torch {torch.__version__}, "
          f"optuna {optuna.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    print(f"settings: {vars(args)}", flush=True)
    tmp = Path(args.work)  # kept (not a temporary directory): the sweep and the calibration resume from the study
    tmp.mkdir(parents=True, exist_ok=True)
    source, title, pixels = SOURCES[args.data]
    data = Path(tmp) / f"{args.data}-subset.npz"
    per_class = args.train + (args.val or 0)
    if not data.exists():
        subset(data, per_class, 50, source)
    fraction = args.val / per_class if args.val else 0.2  # the held-out share of the training split, as the sweep stores it
    config = Path(tmp) / "sweep.json"
    config.write_text(json.dumps({"train": {"validation_fraction": fraction}}))
    print(f"data: {title} subset, {per_class * 10} images, {fraction:.0%} of them validation "
          f"({round(per_class * 10 * fraction)} images), {pixels}", flush=True)
    sweep = nas("search", "--config", str(config), "--name", "bench", "--runs-dir", tmp, "--data", str(data), "--trials", str(args.trials),
                "--concurrent", "2", "--sampler", "random", "--seed", str(args.seed), "--epochs", str(args.epochs),
                "--image-size", str(args.size), "--timing-image-size", "32", "--timing-batch-size", "16", "--timing-steps", "3",
                "--quiet")
    print(f"sweep: {sweep['complete']} complete + backbone, {sweep['failed']} failed, {sweep['bench_wall_seconds']:.0f} s", flush=True)
    run_dir = Path(tmp) / "bench"
    result = nas("calibrate", str(run_dir), "--trials", str(args.k), "--epochs", args.grid_epochs, "--image-sizes", args.grid_sizes,
                 "--data-fractions", args.grid_fractions, "--long-epochs", str(args.long_epochs), "--long-image-size",
                 str(args.long_size), "--target", str(args.target), "--concurrent", "2")
    from runners.analysis.calibrate import summary_text

    print(f"calibrate: {result['bench_wall_seconds']:.0f} s", flush=True)
    print(summary_text(result), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("calibration.json", "calibration.png", "calibration.yaml"):
        if (run_dir / name).exists():
            shutil.copy(run_dir / name, out / name)
    print(f"copied calibration.json/png/yaml to {out}", flush=True)


if __name__ == "__main__":
    main()
