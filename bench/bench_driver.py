"""The sweep driver's own cost per trial, at the start and at the end of a long sweep.

The real driver (``runners.sweep.run.run_sweep``) runs with an instant synthetic evaluation injected
through its ``evaluate`` parameter (no training, no Ray), random sampler, SQLite storage. Beside
it, the floor: a bare Optuna ask/tell loop on the same kind of storage that suggests the same
space and writes the same attributes. Prints seconds per trial over the first and last WINDOW
trials of each, their ratio, and the driver/floor ratio at the end.

``--ray``: the evaluation runs as the Ray task in place of training (a local Ray instance, 1 CPU per
trial), so the driver pays Ray's submit/wait/get and progress-board round trips; per-trial times are
then read from the trials' completion times. ``--no-wal``: the embedded SQLite study without its WAL
journal (the default before issue 22: rollback journal, a disk sync per commit), for before/after.

    python bench/bench_driver.py --trials 10000 --window 100
    python bench/bench_driver.py --trials 300 --window 50 --dir /var/tmp --ray [--no-wal]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nas.configs import TrainConfig  # noqa: E402
from nas.record import INTERRUPTED  # noqa: E402
from nas.spec import NetworkSpec  # noqa: E402
from runners.config import resolve_config  # noqa: E402
from runners.study import quiet_optuna, rdb_storage  # noqa: E402
from runners.sweep.run import run_sweep  # noqa: E402
from search_spaces import SearchSpace, make_sampler  # noqa: E402


def synthetic_record(spec: NetworkSpec, train: TrainConfig) -> dict:
    """What an evaluation returns, with made-up numbers: instant."""
    rng = random.Random(spec.key())
    return {"status": "ok", "failure_reason": None, "accuracy": rng.uniform(0.5, 1.0), "normalized_step_time": rng.uniform(0.5, 2.0),
            "normalized_params": rng.uniform(0.5, 2.0), "step_time_ms": 10.0, "params": 1000, "spec": spec.to_dict(),
            "spec_key": spec.key(), "seed": train.seed, "epochs_run": 1}


class Timed:
    """Wraps the evaluation to timestamp every trial the driver finishes."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, spec: NetworkSpec, train: TrainConfig) -> dict:
        self.stamps.append(time.perf_counter())
        return synthetic_record(spec, train)


def per_trial(stamps: list[float], window: int) -> tuple[float, float]:
    first = (stamps[window] - stamps[0]) / window
    last = (stamps[-1] - stamps[-window - 1]) / window
    return first, last


def run_driver(root: Path, trials: int, *, on_ray: bool = False) -> list[float]:
    config = resolve_config(None, {"name": "driver", "runs_dir": str(root), "n_trials": trials, "max_concurrent": 1,
                                   "cpus_per_trial": 1, "sampler": "random", "quiet": True})
    if not on_ray:
        timed = Timed()
        summary = run_sweep(config, evaluate=timed)
        assert summary["complete"] == trials, summary
        return timed.stamps
    summary = run_sweep(config, evaluate=synthetic_record, evaluate_on_ray=True)
    assert summary["complete"] == trials, summary
    study = optuna.load_study(study_name="driver", storage=rdb_storage(config.storage_url))
    done = sorted(t.datetime_complete.timestamp() for t in study.get_trials(deepcopy=False) if t.datetime_complete)
    return done[-trials:]  # the backbone's trial comes first


def run_floor(root: Path, trials: int) -> list[float]:
    """Bare ask/suggest/set attributes/tell on a fresh SQLite study."""
    quiet_optuna()
    storage = rdb_storage(f"sqlite:///{root / 'floor.db'}")
    study = optuna.create_study(study_name="floor", storage=storage, sampler=make_sampler("random", seed=0), direction="maximize")
    space = SearchSpace.from_config({})
    stamps = []
    for _ in range(trials):
        trial = study.ask()
        spec = space.suggest(trial).with_classes(10)
        train = TrainConfig(seed=trial.number)
        for name, value in {"spec_key": spec.key(), "seed": trial.number, "driver": "floor", "failure_reason": INTERRUPTED}.items():
            trial.set_user_attr(name, value)
        stamps.append(time.perf_counter())
        record = synthetic_record(spec, train)
        record["reward"] = record["accuracy"] * record["normalized_step_time"] ** -0.07 * record["normalized_params"] ** -0.05
        for name, value in record.items():
            trial.set_user_attr(name, value)
        study.tell(trial, record["reward"])
    return stamps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10000)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--dir", help="where the SQLite files go (default: the system temp directory)")
    parser.add_argument("--ray", action="store_true", help="the evaluation as a Ray task (the real submit/wait/get path)")
    parser.add_argument("--no-wal", action="store_true", help="the embedded study without WAL (before issue 22)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.no_wal:
        import runners.study

        runners.study.write_ahead_log = lambda storage: None  # the rollback journal: synchronous=FULL, a sync per commit
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        begin = time.perf_counter()
        driver = run_driver(root, args.trials, on_ray=args.ray)
        driver_seconds = time.perf_counter() - begin
        begin = time.perf_counter()
        floor = run_floor(root, args.trials)
        floor_seconds = time.perf_counter() - begin
    d_first, d_last = per_trial(driver, args.window)
    f_first, f_last = per_trial(floor, args.window)
    result = {
        "trials": args.trials, "window": args.window, "ray": args.ray, "wal": not args.no_wal, "optuna": optuna.__version__, "dir": args.dir or tempfile.gettempdir(),
        "driver_first_s_per_trial": round(d_first, 5), "driver_last_s_per_trial": round(d_last, 5),
        "driver_growth_ratio": round(d_last / d_first, 3), "driver_total_s": round(driver_seconds, 1),
        "floor_first_s_per_trial": round(f_first, 5), "floor_last_s_per_trial": round(f_last, 5),
        "floor_growth_ratio": round(f_last / f_first, 3), "floor_total_s": round(floor_seconds, 1),
        "driver_over_floor_at_end": round(d_last / f_last, 3),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:28} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
