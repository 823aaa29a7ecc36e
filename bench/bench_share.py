"""Two sweeps on one host (issue 22): per-trial time against one sweep alone, with the host's core slots and without.

Every sweep is a real ``nas search`` (its own Ray instance, which believes it owns every core; the
default layout: on 2 cores, one trial at a time with 2 torch threads) on digits. Runs, in order:

1. one sweep alone (the baseline);
2. two sweeps started at once, sharing the host's core slots (``nas/cores.py``, the default);
3. the same two sweeps with a pool larger than their trainings need (``NAS_HOST_CORES=4 x cores``): no sharing;
4. with ``--busy N``: a sweep of one trial at a time (the backbone, then one trial) alone, then beside an unrelated
   CPU job of N busy processes (which take no slot) with ``NAS_HOST_CORES`` = the cores left to trials.
   (Without that setting, beside a busy process per core, a trial was over 40x slower: not rerun.)
``--no-pairs`` skips phases 2 and 3.

A trial's time is its record's ``wall_seconds`` (training, timing and any wait for a core) and the
same less ``core_wait_seconds`` (its own work). Prints each as the median over trials of its ratio to the same architecture in (1) or the lone sweep
(every sweep has seed 0, so the same architectures).

    python bench/bench_share.py --trials 4 > bench/logs/share.log 2>&1   # about 30 min on a 2-core CPU
    python bench/bench_share.py --no-pairs --busy 1 > bench/logs/share-busy.log 2>&1
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas.record import record_of  # noqa: E402


def start(runs: Path, name: str, trials: int, seed: int, epochs: int, env: dict[str, str], concurrent: int | None) -> subprocess.Popen:
    args = ["search", *(["--concurrent", str(concurrent)] if concurrent else []), "--name", name, "--runs-dir", str(runs), "--trials", str(trials), "--sampler", "random", "--seed", str(seed),
            "--epochs", str(epochs), "--image-size", "32", "--timing-image-size", "32", "--timing-batch-size", "16",
            "--timing-steps", "5", "--quiet", "--json"]
    return subprocess.Popen([sys.executable, "-m", "runners.cli", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def sweeps(runs: Path, names: list[str], trials: int, epochs: int, *, cores: int | None = None,
           concurrent: int | None = None) -> list[tuple[float, float, float, str]]:
    """Run the named sweeps at once; (wall, own, waited seconds, architecture) of every finished trial, backbones included."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "NAS_LOCK_DIR": str(runs / "locks")}
    if cores:
        env["NAS_HOST_CORES"] = str(cores)
    procs = [start(runs, name, trials, 0, epochs, env, concurrent) for name in names]  # one seed: the same architectures in every sweep
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"a sweep failed:\n{err}")
    times = []
    for name in names:
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{runs / name / 'study.db'}")
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            record = record_of(trial)
            wait = record.core_wait_seconds or 0.0
            times.append((record.wall_seconds, record.wall_seconds - wait, wait, record.spec_key))
    return times


def ratio(times: list[tuple], base: list[tuple], index: int) -> float:
    """Median over trials of time / the same architecture's time in ``base`` (architectures match: one seed)."""
    alone = {row[3]: row[index] for row in base}
    return statistics.median(row[index] / alone[row[3]] for row in times if row[3] in alone)


def report(label: str, times: list[tuple], base: list[tuple]) -> None:
    wall, own = statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)
    print(f"{label}: {len(times)} trials, median {wall:.1f} s per trial (x{ratio(times, base, 0):.2f} the same architecture alone), "
          f"its own work {own:.1f} s (x{ratio(times, base, 1):.2f}), waited for cores: median {statistics.median(t[2] for t in times):.1f} s, "
          f"max {max(t[2] for t in times):.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4, help="trials per sweep, besides its backbone (default 4)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--busy", type=int, default=0, help="phase 4: a trial beside N busy processes, NAS_HOST_CORES = cores - N")
    parser.add_argument("--no-pairs", action="store_true", help="skip the two-sweep phases (2 and 3)")
    args = parser.parse_args()
    import ray
    import torch

    cpus = os.cpu_count() or 1
    print(f"machine: {platform.node()}, {cpus} CPUs, torch {torch.__version__}, ray {ray.__version__}, optuna {optuna.__version__}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; settings {vars(args)}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if not args.no_pairs:
            alone = sweeps(root / "alone", ["alone"], args.trials, args.epochs)
            report("one sweep alone", alone, alone)
            report("two sweeps at once, sharing the core slots", sweeps(root / "shared", ["a", "b"], args.trials, args.epochs), alone)
            report("two sweeps at once, no sharing (a slot per training)",
                   sweeps(root / "unshared", ["a", "b"], args.trials, args.epochs, cores=4 * cpus), alone)
        if not args.busy:
            return
        lone = sweeps(root / "lone", ["lone"], 1, args.epochs, concurrent=1)  # the backbone, then one trial
        report("one sweep alone, one trial at a time", lone, lone)
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
        try:
            left = max(1, cpus - args.busy)
            report(f"the same beside {args.busy} busy process(es), NAS_HOST_CORES={left}",
                   sweeps(root / "busy", ["busy"], 1, args.epochs, cores=left, concurrent=1), lone)
        finally:
            for proc in busy:
                proc.kill()


if __name__ == "__main__":
    main()
