"""Progressive learning vs fixed-size training on CIFAR-10 at equal epochs and at equal training time (issue 18).

For each budget E and seed: fixed-size training for E epochs; progressive training for E epochs
(equal epochs); progressive training for the most epochs whose predicted training time fits in
the fixed run's (equal time; the prediction uses the per-epoch CPU seconds at each image size
measured in the same seed's two runs). Training time is process CPU time with 1 torch thread:
the machine's 2 cores are shared with other jobs, so wall time measures the neighbours as much as
the training. Wall time is printed too. Writes bench/progressive_accuracy_vs_time.png.

    python bench/bench_progressive.py --data ../shared/data/cifar10/cifar-10-batches-py --budgets 10 20 40 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nas.data import Dataset, load_dataset  # noqa: E402
from nas.progressive import train_progressive  # noqa: E402
from nas.schedule import ProgressiveConfig, schedule  # noqa: E402
from nas.spec import NetworkSpec  # noqa: E402

# all Fused-MBConv: on CPU, depthwise-conv backward at 1-2 px costs the same at any input size
# (bench/RESULTS.md), which would hide what image size does to training time
SPEC = NetworkSpec.from_block_strings(
    "fused-small", 24, ["r1_k3_s1_e1_i24_o24_c1", "r2_k3_s2_e4_i24_o48_c1", "r2_k3_s2_e4_i48_o64_c1", "r3_k3_s2_e4_i64_o128_c1"],
    head_channels=512)
PLOT = Path(__file__).resolve().parent / "progressive_accuracy_vs_time.png"


def subset(full: Dataset, train: int, test: int) -> Dataset:
    """The first ``train`` training and ``test`` test images of ``full``."""
    return Dataset(full.name, full.train_images[:train], full.train_labels[:train], full.test_images[:test],
                   full.test_labels[:test], full.num_classes, full.class_names)


def _train(args: argparse.Namespace, data: Dataset, epochs: int, seed: int, progressive: bool, kind: str) -> dict[str, Any]:
    config = ProgressiveConfig(epochs=epochs, seed=seed, progressive=progressive, threads=1, **args.overrides)
    with tempfile.TemporaryDirectory() as out:
        s = train_progressive(SPEC, data, config, out_dir=out, device="cpu", log=lambda m: None)
    sizes: dict[int, list[float]] = {}
    for h in s["history"]:
        sizes.setdefault(h["image_size"], []).append(h["cpu_seconds"])
    row = {"kind": kind, "epochs": epochs, "seed": seed, "test_accuracy": s["test_accuracy"], "cpu_seconds": s["train_cpu_seconds"],
           "wall_seconds": s["train_seconds"], "sizes": [st.image_size for st in schedule(config)],
           "epoch_cpu_by_size": {size: statistics.fmean(v) for size, v in sizes.items()}}
    print(f"{kind:>22} E={epochs:>3} seed {seed}: test accuracy {row['test_accuracy']:.4f}, "
          f"CPU {row['cpu_seconds']:.1f} s, wall {row['wall_seconds']:.1f} s", flush=True)
    return row


def predicted_cpu(config: ProgressiveConfig, cost: dict[int, float]) -> float:
    """Training CPU seconds of ``config`` from per-epoch costs at each size (interpolated by pixel count)."""
    known = sorted(cost)

    def at(size: int) -> float:
        if size in cost:
            return cost[size]
        low = max([k for k in known if k < size], default=known[0])
        high = min([k for k in known if k > size], default=known[-1])
        if low == high:
            return cost[low] * size**2 / low**2
        return cost[low] + (cost[high] - cost[low]) * (size**2 - low**2) / (high**2 - low**2)

    return sum((s.last_epoch - s.first_epoch + 1) * at(s.image_size) for s in schedule(config))


def equal_time_epochs(args: argparse.Namespace, budget_cpu: float, cost: dict[int, float], seed: int) -> int:
    """The most progressive epochs whose predicted CPU time is within ``budget_cpu``."""
    epochs = 1
    while predicted_cpu(ProgressiveConfig(epochs=epochs + 1, seed=seed, **args.overrides), cost) <= budget_cpu:
        epochs += 1
    return epochs


def _job(job: tuple[argparse.Namespace, int, int]) -> list[dict[str, Any]]:
    args, budget, seed = job
    torch.set_num_threads(1)
    data = subset(load_dataset(args.data), args.train_subset, args.test_subset)
    fixed = _train(args, data, budget, seed, False, "fixed")
    same_epochs = _train(args, data, budget, seed, True, "progressive equal-epochs")
    cost = {**{int(k): v for k, v in same_epochs["epoch_cpu_by_size"].items()},
            **{int(k): v for k, v in fixed["epoch_cpu_by_size"].items()}}
    epochs = equal_time_epochs(args, fixed["cpu_seconds"], cost, seed)
    same_time = _train(args, data, epochs, seed, True, "progressive equal-time")
    same_time["budget"] = same_epochs["budget"] = fixed["budget"] = budget
    return [fixed, same_epochs, same_time]


def summarize(rows: list[dict[str, Any]], budgets: list[int]) -> list[dict[str, Any]]:
    out = []
    for budget in budgets:
        entry: dict[str, Any] = {"budget": budget}
        for kind in ("fixed", "progressive equal-epochs", "progressive equal-time"):
            mine = [r for r in rows if r["budget"] == budget and r["kind"] == kind]
            entry[kind] = {key: statistics.fmean(r[key] for r in mine) for key in ("test_accuracy", "cpu_seconds", "wall_seconds", "epochs")}
            entry[kind]["test_accuracy_stdev"] = statistics.stdev(r["test_accuracy"] for r in mine) if len(mine) > 1 else 0.0
        fixed = entry["fixed"]
        for kind, short in (("progressive equal-epochs", "equal_epochs"), ("progressive equal-time", "equal_time")):
            entry[f"{short}_accuracy_difference_points"] = 100 * (entry[kind]["test_accuracy"] - fixed["test_accuracy"])
            entry[f"{short}_cpu_ratio"] = entry[kind]["cpu_seconds"] / fixed["cpu_seconds"]
            entry[f"{short}_wall_ratio"] = entry[kind]["wall_seconds"] / fixed["wall_seconds"]
        out.append(entry)
    return out


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    styles = {"fixed": ("C0", "o"), "progressive equal-epochs": ("C1", "s"), "progressive equal-time": ("C3", "^")}
    for axis, key, label in ((axes[0], "cpu_seconds", "training CPU time, s (1 thread)"), (axes[1], "wall_seconds", "training wall time, s")):
        for kind, (color, marker) in styles.items():
            mine = [r for r in rows if r["kind"] == kind]
            axis.scatter([r[key] for r in mine], [r["test_accuracy"] for r in mine], color=color, marker=marker, alpha=0.35, s=18)
            budgets = sorted({r["budget"] for r in mine})
            means = [(statistics.fmean(r[key] for r in mine if r["budget"] == b),
                      statistics.fmean(r["test_accuracy"] for r in mine if r["budget"] == b)) for b in budgets]
            axis.plot(*zip(*means), color=color, marker=marker, label=kind)
        axis.set_xlabel(label)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(loc="lower right", fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


LINE = re.compile(r"^\s*(?P<kind>fixed|progressive equal-epochs|progressive equal-time) E=\s*(?P<epochs>\d+) seed (?P<seed>\d+): "
                  r"test accuracy (?P<acc>[\d.]+), CPU (?P<cpu>[\d.]+) s, wall (?P<wall>[\d.]+) s$")


def rows_from_logs(paths: list[str]) -> list[dict[str, Any]]:
    """Per-run rows parsed back from the lines printed by earlier runs (for runs split across invocations).

    An equal-time run belongs to the budget of the last fixed run of its seed in the same log.
    """
    rows, last_budget = [], {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            m = LINE.match(line)
            if not m:
                continue
            kind, epochs, seed = m["kind"], int(m["epochs"]), int(m["seed"])
            if kind == "fixed":
                last_budget[(path, seed)] = epochs
            budget = last_budget[(path, seed)] if kind == "progressive equal-time" else epochs
            rows.append({"kind": kind, "epochs": epochs, "seed": seed, "budget": budget, "test_accuracy": float(m["acc"]),
                         "cpu_seconds": float(m["cpu"]), "wall_seconds": float(m["wall"])})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="../shared/data/cifar10/cifar-10-batches-py")
    parser.add_argument("--train-subset", type=int, default=2000)
    parser.add_argument("--test-subset", type=int, default=1000)
    parser.add_argument("--budgets", type=int, nargs="+", default=[10, 20, 40])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes, 1 torch thread each")
    parser.add_argument("--plot", default=str(PLOT))
    parser.add_argument("--from-logs", nargs="+", help="no training: summary and plot from the printed lines of earlier runs")
    args = parser.parse_args()
    args.overrides = {}  # the defaults of ProgressiveConfig are what is benchmarked
    if args.from_logs:
        rows = rows_from_logs(args.from_logs)
        args.budgets = sorted({r["budget"] for r in rows})
    else:
        jobs = [(args, budget, seed) for budget in sorted(args.budgets, reverse=True) for seed in range(args.seeds)]
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            rows = [row for result in pool.imap_unordered(_job, jobs) for row in result]
    rows.sort(key=lambda r: (r["budget"], r["seed"], r["kind"]))
    summary = summarize(rows, sorted(args.budgets))
    config = ProgressiveConfig()
    title = (f"CIFAR-10 {args.train_subset}/{args.test_subset}, {SPEC.name}, {config.min_image_size}->{config.max_image_size} px, "
             f"{config.stages} stages, budgets {sorted(args.budgets)} epochs, {args.seeds} seeds, {os.cpu_count()}-core CPU, {args.jobs} jobs of 1 thread")
    plot(rows, Path(args.plot), title)
    print(json.dumps({
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__, "threads": 1, "jobs": args.jobs, "spec": SPEC.key(),
        "data": f"cifar10 {args.train_subset}/{args.test_subset}", "config": {k: v for k, v in vars(config).items()},
        "seeds": args.seeds, "equal_time_uses": "process CPU seconds", "plot": args.plot, "summary": summary, "runs": rows,
    }, indent=1, default=str))


if __name__ == "__main__":
    main()
