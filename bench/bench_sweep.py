"""Sweep benchmark (issue 6): 8 candidates, 2 concurrent, on this machine.

1. parallel efficiency: (sum of the candidates' own evaluation times / concurrency) / sweep wall time (target >= 0.85),
   and the scheduling overhead per trial in seconds;
2. step time measured while another trial trains on the same cores, with and without the device lock,
   against the isolated measurement.

    python bench/bench_sweep.py
"""

from __future__ import annotations

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

import torch  # noqa: E402

from nas.lock import DeviceLock  # noqa: E402
from nas.timing import TimingConfig, measure_step_time  # noqa: E402
from nas.zoo import get  # noqa: E402
from runners.config import resolve_config  # noqa: E402
from runners.study import open_run  # noqa: E402
from runners.sweep import run_sweep  # noqa: E402

TRAINER = """
import sys, torch
from nas.data import load_dataset
from nas.lock import DeviceLock
from nas.train import TrainConfig, train_proxy
from nas.zoo import get
lock = DeviceLock(sys.argv[1]) if sys.argv[1] != "none" else None
train_proxy(get("efficientnetv2-b0", 10), load_dataset("digits"), TrainConfig(epochs=50, threads=int(sys.argv[2])),
            step_guard=lock.shared if lock else None)
"""


def contention(threads: int = 1) -> dict:
    torch.set_num_threads(threads)
    spec, timing = get("efficientnetv2-b0", 10), TimingConfig(batch_size=16, image_size=64, warmup=3, steps=10)
    isolated = measure_step_time(spec, timing).median_ms
    out = {"isolated_ms": isolated}
    for mode in ("none", "bench-lock"):
        trainer = subprocess.Popen([sys.executable, "-c", TRAINER, mode, str(threads)], cwd=ROOT)
        time.sleep(8)  # let it load and train
        lock = DeviceLock(mode) if mode != "none" else None
        out[f"concurrent_{'with_lock' if lock else 'no_lock'}_ms"] = measure_step_time(spec, timing, lock=lock).median_ms
        trainer.kill()
        trainer.wait()
    out["inflation_no_lock"] = out["concurrent_no_lock_ms"] / isolated
    out["inflation_with_lock"] = out["concurrent_with_lock_ms"] / isolated
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as runs:
        config = resolve_config(None, {"name": "bench", "runs_dir": runs, "n_trials": 8, "max_concurrent": 2, "sampler": "random",
                                       "quiet": True, "train": {"epochs": 2}, "timing": {"steps": 5}})
        begin = time.perf_counter()
        summary = run_sweep(config)
        wall = time.perf_counter() - begin
        trials = open_run(Path(runs) / "bench").finished()
        own = [t.user_attrs["wall_seconds"] for t in trials]
        ideal = sum(own) / config.max_concurrent
        result = {"trials": len(trials), "sweep_wall_s": wall, "sum_candidate_s": sum(own), "ideal_s": ideal,
                  "parallel_efficiency": ideal / wall, "overhead_per_trial_s": (wall - ideal) * config.max_concurrent / len(trials),
                  "startup_s": summary["startup_seconds"],
                  "parallel_efficiency_after_startup": ideal / (wall - summary["startup_seconds"])}
    print(f"sweep: {len(trials)} trials in {wall:.1f} s; candidates' own time {sum(own):.1f} s -> ideal {ideal:.1f} s; "
          f"parallel efficiency {result['parallel_efficiency']:.3f}; overhead {result['overhead_per_trial_s']:.2f} s/trial", flush=True)
    print(f"  after start-up ({result['startup_s']:.1f} s: data, study, Ray): efficiency {result['parallel_efficiency_after_startup']:.3f}")
    contention_results = {}
    for threads in (1, 2):
        c = contention(threads)
        contention_results[f"{threads}_threads"] = c
        print(f"{threads} thread(s) per process: step time isolated {c['isolated_ms']:.1f} ms; next to a training trial: "
              f"no lock {c['concurrent_no_lock_ms']:.1f} ms (x{c['inflation_no_lock']:.2f}), "
              f"with the device lock {c['concurrent_with_lock_ms']:.1f} ms (x{c['inflation_with_lock']:.2f})", flush=True)
    print(json.dumps({"machine": platform.node(), "cpus": os.cpu_count(), "torch": torch.__version__, **result,
                      "contention": contention_results}, indent=1))


if __name__ == "__main__":
    main()
