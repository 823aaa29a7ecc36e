"""Host-wide core slots (nas/cores.py): real processes, and two real sweeps on one host sharing its cores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nas.cores import hold_cores
from nas.lock import TRACE_ENV
from nas.record import record_of
from runners.study import open_run
from tests.conftest import ROOT

HOLDER = """
import json, sys, time
from nas.cores import hold_cores
directory, pool, enabled, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "on", float(sys.argv[4])
with hold_cores(1, directory=directory, pool=pool, enabled=enabled, timeout=120):
    start = time.time()
    print("held", flush=True)
    time.sleep(seconds)
    print(json.dumps([start, time.time()]), flush=True)
"""


def holders(tmp_path: Path, count: int, pool: int, enabled: bool, seconds: float = 1.5) -> list[list[float]]:
    """``count`` processes each holding one slot of a ``pool``-slot pool for ``seconds``; their (start, end) wall times."""
    procs = [subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "slots"), str(pool), "on" if enabled else "off",
                               str(seconds)], cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
             for _ in range(count)]
    out = [proc.communicate(timeout=120)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    return [json.loads(text.splitlines()[-1]) for text in out]


def most_at_once(intervals: list[list[float]]) -> int:
    """The largest number of intervals that contain a common instant."""
    return max(sum(1 for start, end in intervals if start <= moment < end) for moment, _ in intervals)


def test_trainers_never_hold_more_slots_than_the_pool_and_do_without_it(tmp_path):
    assert most_at_once(holders(tmp_path / "on", 3, pool=2, enabled=True)) == 2
    # the same processes with the slots off: all three at once (what the pool prevents)
    assert most_at_once(holders(tmp_path / "off", 3, pool=2, enabled=False)) == 3


def test_a_killed_holder_frees_its_slot_and_a_waiter_times_out_with_a_bound(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), "1", "on", "600"], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        waits: list[int] = []
        begin = time.monotonic()
        with pytest.raises(TimeoutError, match="1 of this host's 1 core slots not free after 1 s"):
            with hold_cores(1, directory=tmp_path, pool=1, timeout=1, on_wait=waits.append):
                pass
        assert waits == [1] and time.monotonic() - begin < 10
    finally:
        holder.send_signal(signal.SIGKILL)  # the kernel drops its flock: no stale slot
        holder.wait(timeout=60)
    with hold_cores(1, directory=tmp_path, pool=1, timeout=5) as waited:
        assert waited < 5


def read_lines(stream) -> tuple[list[str], threading.Thread]:
    """The lines of ``stream`` as a background thread reads them, and that thread (join it after the process ends)."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(stream), daemon=True)
    reader.start()
    return lines, reader


@pytest.mark.slow
def test_two_sweeps_on_one_host_share_its_cores(tmp_path, tiny_space):
    """Two drivers, each starting its own Ray on this host with every core for itself, on a host of one core slot
    that a third training (this test) holds at first: both complete, their trainings never overlap, and every
    trial that waited for a core said so, a short one included (its line once came after it finished, and was dropped)."""
    trace, locks = tmp_path / "trace.jsonl", tmp_path / "locks"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "NAS_HOST_CORES": "1", TRACE_ENV: str(trace), "NAS_LOCK_DIR": str(locks)}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    procs, errs = [], []
    with hold_cores(1, directory=locks, pool=1):  # both sweeps' first trials must wait, whichever Ray starts first
        for name in ("left", "right"):
            args = ["search", "--name", name, "--runs-dir", tmp_path, "--trials", "2", "--concurrent", "1", "--cpus-per-trial", "1",
                    "--sampler", "random", "--seed", "1" if name == "left" else "2", *tiny_space, "--epochs", "3", "--json"]
            procs.append(subprocess.Popen([sys.executable, "-m", "runners.cli", *map(str, args)], cwd=ROOT, env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE))
            errs.append(read_lines(procs[-1].stderr))
        deadline = time.monotonic() + 300
        while not all(any("waiting for a core" in line for line in lines) for lines, _ in errs):  # said while still waiting
            assert time.monotonic() < deadline and all(proc.poll() is None for proc in procs), [''.join(lines) for lines, _ in errs]
            time.sleep(0.2)
    for proc, (lines, reader) in zip(procs, errs, strict=True):
        assert proc.wait(timeout=900) == 0, "".join(lines)
        reader.join(timeout=60)
        assert json.loads(proc.stdout.read())["complete"] == 2
    work = [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
    assert len({unit["pid"] for unit in work}) >= 2  # both sweeps' workers trained
    clashes = [(a, b) for a in work for b in work if a["pid"] < b["pid"] and a["start"] < b["end"] and b["start"] < a["end"]]
    assert not clashes, f"{len(clashes)} units of device work of two trainings ran at once on a host of one core slot"
    for name, (lines, _) in zip(("left", "right"), errs, strict=True):
        trials = open_run(tmp_path / name).finished()
        waited = {t.number for t in trials if record_of(t).core_wait_seconds}
        assert waited, f"{name}: no trial recorded its wait for the held core"
        told = {int(line.split(":")[0].split()[-1]) for line in lines if "waiting for a core" in line}
        assert told == waited, (name, told, waited, "".join(lines))
        assert {t.number for t in trials if record_of(t).core_wait_seconds == 0.0} == {t.number for t in trials} - waited


def test_a_trainer_never_runs_more_threads_than_the_slots_it_holds(tmp_path, monkeypatch):
    """NAS_HOST_CORES=1 (a core left to other work): a 2-thread trial trains on one thread, and gets its threads back after.

    Through the real trial (evaluate_candidate -> train_proxy, which sets its configured threads): before
    the cap, training set 2 threads again inside the 1 slot held; beside a busy process the two threads spun
    at each other's barriers on one core (>18x slower, bench/bench_share.py --busy 1).
    """
    import torch

    from nas.configs import TimingConfig, TrainConfig
    from nas.evaluate import evaluate_candidate, trainer_cores
    from nas.zoo import get

    monkeypatch.setenv("NAS_LOCK_DIR", str(tmp_path))
    monkeypatch.setenv("NAS_HOST_CORES", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with trainer_cores(torch.device("cpu")):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        seen: list[int] = []
        record = evaluate_candidate(get("efficientnetv2-b0", 10), "digits", TrainConfig(epochs=2, image_size=16, threads=2),
                                    timing_config=TimingConfig(batch_size=4, image_size=16, warmup=1, steps=3),
                                    on_epoch=lambda epoch, metrics: seen.append(torch.get_num_threads()))
        assert record.status == "ok", record.failure_reason
        assert seen == [1, 1], f"threads while training on the 1 slot held: {seen}"
        assert torch.get_num_threads() == 2
        monkeypatch.setenv("NAS_HOST_CORES", "4")
        with trainer_cores(torch.device("cpu")):
            assert torch.get_num_threads() == 2  # slots to spare: the trial's own threads
    finally:
        torch.set_num_threads(before)
