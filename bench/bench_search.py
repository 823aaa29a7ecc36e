"""Search benchmark (issue 17): does the search beat its backbone, does the proxy rank like a longer schedule,
and how do the samplers compare at equal budget?

1. a real sweep on a Fashion-MNIST subset (``--train`` images drawn per class, seed 0) with the backbone
   yardstick: ``--trials`` trials plus the backbone, short proxy (``--epochs`` at ``--size`` px);
2. ``nas fidelity`` on ``--fidelity`` of them (best, backbone, spread over the reward range) with
   ``--long-epochs`` (>= 4x) at ``--long-size`` px: Kendall tau, Spearman, top-k overlap, best vs backbone;
3. samplers (random, tpe, evolution, rl) at equal budget on the analytic objective of
   ``search_spaces.analytic`` (exact params and MACs against a hidden target; optimum 0, regret = -best):
   real training of 4 samplers x seeds x hundreds of trials does not fit on 2 shared cores.

    python bench/bench_search.py            # about 30-40 min on a 2-core CPU shared with other jobs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import numpy as np  # noqa: E402
import optuna  # noqa: E402

from nas.data import load_dataset  # noqa: E402
from search_spaces import SearchSpace, make_sampler  # noqa: E402
from search_spaces.analytic import AnalyticObjective  # noqa: E402

FASHION = "/work/shared/data/fashion-mnist"


def subset(path: Path, per_class: int, test_per_class: int, source: str = FASHION) -> None:
    """A class-balanced random subset of ``source`` (default Fashion-MNIST) as an npz (seed 0)."""
    data = load_dataset(source)
    rng = np.random.default_rng(0)

    def pick(labels, count):
        labels = labels.numpy()
        return np.concatenate([rng.choice(np.flatnonzero(labels == c), count, replace=False) for c in range(data.num_classes)])

    train, test = pick(data.train_labels, per_class), pick(data.test_labels, test_per_class)
    np.savez(path, x_train=data.train_images.numpy()[train], y_train=data.train_labels.numpy()[train],
             x_test=data.test_images.numpy()[test], y_test=data.test_labels.numpy()[test])


def nas(*args: str) -> dict:
    begin = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "runners.cli", *args, "--json"], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"nas {args[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result = json.loads(proc.stdout)
    result["bench_wall_seconds"] = time.monotonic() - begin
    return result


def samplers(budget: int, seeds: int) -> dict:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace.default("efficientnetv2-b0")
    out = {}
    for name in ("random", "tpe", "evolution", "rl"):
        regrets, begin = [], time.monotonic()
        for seed in range(seeds):
            objective = AnalyticObjective.draw(space, seed=1000 + seed)
            study = optuna.create_study(direction="maximize", sampler=make_sampler(name, seed=seed))
            study.optimize(objective, n_trials=budget)
            regrets.append(-study.best_value)
        out[name] = {"regrets": regrets, "mean": statistics.mean(regrets), "median": statistics.median(regrets),
                     "seconds": time.monotonic() - begin}
        print(f"  {name:>9}: regret mean {out[name]['mean']:.4f}, median {out[name]['median']:.4f} "
              f"({', '.join(f'{r:.4f}' for r in regrets)})  {out[name]['seconds']:.0f} s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=200, help="training images per class (default 200)")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--sampler", default="evolution")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--fidelity", type=int, default=8)
    parser.add_argument("--long-epochs", type=int, default=4)
    parser.add_argument("--long-size", type=int, default=24)
    parser.add_argument("--budget", type=int, default=300, help="trials per sampler run on the analytic objective")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--skip-real", action="store_true", help="only the sampler comparison")
    args = parser.parse_args()
    import torch

    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs (shared with other jobs), torch {torch.__version__}, "
          f"optuna {optuna.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    print(f"settings: {vars(args)}", flush=True)
    if not args.skip_real:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "fashion-subset.npz"
            subset(data, args.train, 50)
            print(f"data: Fashion-MNIST subset, {args.train * 10} training images (20% of them validation), grey 28x28", flush=True)
            sweep = nas("search", "--name", "bench", "--runs-dir", tmp, "--data", str(data), "--trials", str(args.trials),
                        "--concurrent", "2", "--sampler", args.sampler, "--seed", "0", "--epochs", str(args.epochs),
                        "--image-size", str(args.size), "--timing-image-size", "32", "--timing-batch-size", "16",
                        "--timing-steps", "3", "--quiet")
            print(f"sweep: {sweep['complete']} complete + backbone, {sweep['failed']} failed, best trial {sweep['best_trial']} "
                  f"reward {sweep['best_reward']:.4f}, {sweep['bench_wall_seconds']:.0f} s", flush=True)
            run_dir = str(Path(tmp) / "bench")
            rescore = nas("rescore", run_dir)
            base = rescore["backbone"]["backbone"]
            print(f"backbone (proxy): reward {base['reward']:.4f}, A {base['accuracy']:.4f}, S {base['normalized_step_time']:.3f}; "
                  f"{rescore['backbone']['beating_reward']} of {rescore['backbone']['trials']} trials have a higher proxy reward; "
                  f"dominating it: {rescore['backbone']['dominating'] or 'none'}", flush=True)
            fidelity = nas("fidelity", run_dir, "--trials", str(args.fidelity), "--epochs", str(args.long_epochs),
                           "--image-size", str(args.long_size))
            print(f"fidelity ({len(fidelity['trials'])} trials, {args.long_epochs} epochs at {args.long_size} px vs "
                  f"{args.epochs} at {args.size} px, {fidelity['bench_wall_seconds']:.0f} s):", flush=True)
            for row in fidelity["trials"]:
                print(f"  trial {row['trial']:>3}{' (backbone)' if row['backbone'] else '           '}  proxy A {row['proxy_accuracy']:.4f} "
                      f"long A {row['accuracy']:.4f}  proxy R {row['proxy_reward']:.4f}  long R {row['reward']:.4f}", flush=True)
            print(f"  accuracy: Kendall tau {fidelity['kendall_tau_accuracy']}, Spearman {fidelity['spearman_accuracy']}", flush=True)
            print(f"  reward:   Kendall tau {fidelity['kendall_tau_reward']}, Spearman {fidelity['spearman_reward']}, "
                  f"top-{fidelity['top_k']} overlap {fidelity['top_k_overlap_reward']}", flush=True)
            print(f"  best proxy trial {fidelity['best_proxy_trial']} beats the backbone on the long schedule: reward "
                  f"{fidelity['best_beats_backbone_long']}, accuracy {fidelity['best_beats_backbone_long_accuracy']}", flush=True)
    print(f"samplers on the analytic objective ({args.budget} trials, {args.seeds} seeds; regret = distance to the optimum 0):",
          flush=True)
    samplers(args.budget, args.seeds)


if __name__ == "__main__":
    main()
