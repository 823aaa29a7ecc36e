"""Sweep benchmark (issue 13): does concurrency pay? The same candidates three ways, in one run.

1. ``nas search`` with its default layout (``max_concurrent`` x ``cpus_per_trial`` as the config derives
   them for this machine), random sampler: this picks the candidates;
2. the same candidates one after another in one process using all cores (no Ray);
3. Ray Tune (``ray.tune.Tuner``, the sweep's layout, Tune's defaults otherwise) running the same candidates.

Each way runs in a fresh Python process and its wall time is measured from outside (imports, Ray
start, data, training, timing: everything a user waits for). Targets: sweep <= 0.95x sequential and
<= 0.8x Ray Tune.

    python bench/bench_sweep.py [--trials 8] [--epochs 2] [--layouts 1x2]   # extra sweep layouts: trials x threads
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def sweep_args(runs: str, name: str, trials: int, epochs: int, layout: str | None) -> list[str]:
    args = ["search", "--name", name, "--runs-dir", runs, "--trials", str(trials), "--sampler", "random", "--seed", "0",
            "--epochs", str(epochs), "--timing-steps", "5", "--quiet", "--json"]
    if layout:  # "TxC": T concurrent trials of C threads each; None: the default layout
        concurrent, cpus = layout.split("x")
        args += ["--concurrent", concurrent, "--cpus-per-trial", cpus]
    return args


def timed(command: list[str], locks: Path) -> tuple[float, str]:
    begin = time.perf_counter()
    # this run's own device locks: another user's or agent's trainers never hold them
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NAS_LOCK_DIR": str(locks)})
    wall = time.perf_counter() - begin
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])}... failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def candidates(run_dir: Path) -> list[dict]:
    """What the sweep trained: spec and seed of each finished trial, the backbone yardstick included, in trial order.

    The other two ways train the same list, so all three do the same work.
    """
    import optuna

    from runners.study import open_run

    trials = sorted(open_run(run_dir).study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: t.number)
    return [{"spec": t.user_attrs["spec"], "seed": t.user_attrs["seed"], "wall_seconds": t.user_attrs.get("wall_seconds")}
            for t in trials]


# ---- the two other ways, each run as `python bench/bench_sweep.py --way W --job FILE` -----------------------
def _evaluate(item: dict, job: dict, threads: int, reference: str):
    from dataclasses import replace

    from nas.evaluate import evaluate_candidate
    from nas.spec import NetworkSpec
    from nas.timing import ReferenceCache
    from runners.config import config_from_dict

    config = config_from_dict(job["config"])
    train = replace(config.train, seed=item["seed"], threads=threads)
    return evaluate_candidate(NetworkSpec.from_dict(item["spec"]), job["data"], train, timing_config=config.timing,
                              backbone=NetworkSpec.from_dict(job["backbone"]), device="cpu",
                              reference_cache=ReferenceCache(reference))


def run_sequential(job: dict) -> list[float]:
    import torch

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    reference = str(Path(job["scratch"]) / "sequential_reference.json")
    return [_evaluate(item, job, threads, reference).accuracy for item in job["candidates"]]


def run_tune(job: dict) -> list[float]:
    import ray
    from ray import tune

    concurrent, cpus = job["layout"]
    reference = str(Path(job["scratch"]) / "tune_reference.json")

    def trainable(params: dict) -> None:
        import torch

        torch.set_num_threads(cpus)  # Ray sets OMP_NUM_THREADS=1 in workers
        tune.report({"accuracy": _evaluate(job["candidates"][params["index"]], job, cpus, reference).accuracy})

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        tuner = tune.Tuner(tune.with_resources(trainable, {"cpu": cpus}),
                           param_space={"index": tune.grid_search(list(range(len(job["candidates"]))))},
                           tune_config=tune.TuneConfig(max_concurrent_trials=concurrent),
                           run_config=tune.RunConfig(storage_path=str(Path(job["scratch"]) / "tune"), verbose=0))
        results = tuner.fit()
        return [r.metrics["accuracy"] for r in results]
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--layouts", default="", help="extra sweep layouts to compare, e.g. 1x2,2x1")
    parser.add_argument("--way", choices=("sequential", "tune"), help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.way:
        job = json.loads(Path(args.job).read_text())
        out = run_sequential(job) if args.way == "sequential" else run_tune(job)
        print(json.dumps(out))
        return

    import optuna
    import ray
    import torch

    with tempfile.TemporaryDirectory() as runs:
        locks = Path(runs) / "locks"
        wall_sweep, out = timed([sys.executable, "-m", "runners.cli", *sweep_args(runs, "default", args.trials, args.epochs, None)], locks)
        summary = json.loads(out)
        stored = json.loads((Path(runs) / "default" / "config.json").read_text())
        layout = (stored["max_concurrent"], max(1, int(stored["cpus_per_trial"])))
        items = candidates(Path(runs) / "default")
        job = {"config": stored, "data": stored["data"], "candidates": items, "scratch": runs, "layout": layout,
               "backbone": optuna.load_study(study_name="default", storage=summary["storage"]).user_attrs["backbone"]}
        job_file = Path(runs) / "job.json"
        job_file.write_text(json.dumps(job))
        print(f"sweep, default layout {layout[0]} trials x {layout[1]} threads: {len(items)} candidates (the backbone yardstick and "
              f"{args.trials} search trials) in {wall_sweep:.1f} s", flush=True)
        wall_seq, _ = timed([sys.executable, __file__, "--way", "sequential", "--job", str(job_file)], locks)
        print(f"sequential, one process, {os.cpu_count()} threads: {wall_seq:.1f} s", flush=True)
        wall_tune, _ = timed([sys.executable, __file__, "--way", "tune", "--job", str(job_file)], locks)
        print(f"Ray Tune Tuner, {layout[0]} trials x {layout[1]} threads: {wall_tune:.1f} s", flush=True)
        extra = {}
        for other in filter(None, args.layouts.split(",")):
            wall, _ = timed([sys.executable, "-m", "runners.cli", *sweep_args(runs, f"layout-{other}", args.trials, args.epochs, other)], locks)
            extra[other] = wall
            print(f"sweep, layout {other} (trials x threads; its own random candidates, same seed): {wall:.1f} s", flush=True)
    result = {"machine": platform.node(), "cpus": os.cpu_count(), "torch": torch.__version__, "ray": ray.__version__,
              "optuna": optuna.__version__, "trials": len(items), "epochs": args.epochs, "default_layout": layout,
              "sweep_s": wall_sweep, "sequential_s": wall_seq, "tune_s": wall_tune, "sweep_over_sequential": wall_sweep / wall_seq,
              "sweep_over_tune": wall_sweep / wall_tune, "other_layouts_s": extra,
              "candidates_own_s": [item["wall_seconds"] for item in items]}
    print(f"sweep / sequential = {wall_sweep / wall_seq:.3f} (target <= 0.95); sweep / Tune = {wall_sweep / wall_tune:.3f} (target <= 0.8)")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
