"""Start-up of the ``nas`` commands that do not train: what a user waits for before the first line.

Each command runs as the user runs it (``python -m runners.cli ARGS``) and, as the baseline in the same run, the
same command in a process that imports torch first (what every command paid before ``nas.configs`` kept torch out
of the parser and the reading commands). Prints the median wall seconds of ``--runs`` runs of each and their ratio.

    python bench/bench_startup.py --runs 5 > bench/logs/startup.log 2>&1   # about 2 min on a 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WITH_TORCH = "import sys, torch, runners.cli; sys.argv[0] = 'nas'; raise SystemExit(runners.cli.main(sys.argv[1:]))"


def seconds(prefix: list[str], args: list[str]) -> float:
    begin = time.perf_counter()
    subprocess.run([sys.executable, *prefix, *args], cwd=ROOT, capture_output=True, timeout=300)
    return time.perf_counter() - begin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    import torch

    print(f"machine: {platform.node()}, torch {torch.__version__}, python {platform.python_version()}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {args.runs} runs each, medians", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        made = subprocess.run([sys.executable, "-m", "runners.cli", "search", "--name", "s", "--runs-dir", tmp, "--trials", "2",
                               "--sampler", "random", "--epochs", "1", "--image-size", "16", "--timing-image-size", "16",
                               "--timing-batch-size", "8", "--timing-steps", "3", "--quiet", "--json"],
                              cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert made.returncode == 0, made.stderr
        run = str(Path(tmp) / "s")
        commands = {"--help": ["--help"], "bad flag": ["search", "--trials", "0"], "rescore": ["rescore", run, "--json"],
                    "export": ["export", run, "-o", str(Path(tmp) / "arch.json"), "--force"],
                    "report": ["report", run, "-o", str(Path(tmp) / "r.html"), "--force"]}
        rows = {}
        for name, argv in commands.items():
            now = [seconds(["-m", "runners.cli"], argv) for _ in range(args.runs)]
            before = [seconds(["-c", WITH_TORCH], argv) for _ in range(args.runs)]
            rows[name] = (statistics.median(now), statistics.median(before))
            print(f"{name:<10} {rows[name][0]:6.2f} s   with torch imported first {rows[name][1]:6.2f} s   "
                  f"ratio {rows[name][0] / rows[name][1]:.2f}", flush=True)
    print(json.dumps({name: {"seconds": a, "with_torch_seconds": b, "ratio": a / b} for name, (a, b) in rows.items()}))


if __name__ == "__main__":
    main()
