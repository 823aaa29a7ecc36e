"""The device lock on its production path: real trainer and timer processes, their traced device work."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import stat
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nas.lock import TRACE_ENV, DeviceLock, cuda_device_key, device_id, lock_dir, open_lock_file

ROOT = Path(__file__).resolve().parents[1]
VALIDATION_UNITS = 30  # lock_roles.py: 899 validation images in batches of 32, and the read of the sums


def run_pair(tmp_path: Path, switch: str, timings: int = 4) -> tuple[list[dict], list[dict], int, int]:
    """A trainer (``train_proxy``, validating every epoch) and a timer (``measure_step_time``) in two processes.

    Returns (trace records, timer measurements, trainer pid, timer pid); the trainer is stopped once the timer is done.
    """
    trace = tmp_path / f"trace-{switch}.jsonl"
    env = {**os.environ, TRACE_ENV: str(trace), "EPOCHS": "200", "TIMINGS": str(timings), "PYTHONPATH": str(ROOT)}
    script, locks = str(ROOT / "tests" / "lock_roles.py"), str(tmp_path / "locks")
    trainer = subprocess.Popen([sys.executable, script, "trainer", locks, switch], cwd=ROOT, env=env)
    try:
        timer = subprocess.run([sys.executable, script, "timer", locks, switch], cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=600)
        assert timer.returncode == 0, timer.stderr
        assert trainer.poll() is None, "the trainer ended before the timer: nothing was measured beside it"
    finally:
        trainer.send_signal(signal.SIGKILL)  # a killed holder leaves no stale lock (the kernel drops its flock)
        trainer.wait(timeout=60)
    records = [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
    timer_pids = {r["pid"] for r in records if r["kind"] == "timed"}
    assert len(timer_pids) == 1
    return records, [json.loads(line) for line in timer.stdout.splitlines()], trainer.pid, timer_pids.pop()


def overlaps(records: list[dict], trainer_pid: int) -> list[tuple[dict, dict]]:
    """(timed window, trainer unit) pairs whose wall-clock intervals intersect."""
    timed = [r for r in records if r["kind"] == "timed"]
    work = [r for r in records if r["pid"] == trainer_pid]
    return [(t, w) for t in timed for w in work if w["start"] < t["end"] and t["start"] < w["end"]]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict[str, tuple[list[dict], list[dict], int, int]]:
    """One trainer/timer run with the lock and one without (the same code, ``enabled=False``)."""
    return {switch: run_pair(tmp_path_factory.mktemp(f"lock-{switch}"), switch) for switch in ("on", "off")}


@pytest.mark.parametrize("switch", ["on", "off"])
def test_no_trainer_work_inside_a_timed_window(pairs, switch):
    """Lock on: no unit of the trainer's device work (batch + step, statistics, validation batch) overlaps a timed
    window. Lock off: overlaps are seen, so the test can catch the fault."""
    records, measured, trainer_pid, _ = pairs[switch]
    assert len(measured) == 4
    kinds = {r["kind"] for r in records if r["pid"] == trainer_pid}
    assert {"train", "eval"} <= kinds
    timed = [r for r in records if r["kind"] == "timed"]
    mine = [r for r in records if r["pid"] == trainer_pid]
    first, last = min(r["start"] for r in mine), max(r["end"] for r in mine)
    assert all(first < t["start"] and t["end"] < last for t in timed)  # every window was measured beside a live trainer
    found = overlaps(records, trainer_pid)
    if switch == "on":
        assert found == []
    else:
        assert found, "without the lock the trainer should have run inside a timed window"


def test_a_timer_behind_validation_gets_the_device_within_one_unit(pairs):
    """The timer starts waiting while the trainer validates; it waits about one batch, not the rest of validation."""
    records, measured, trainer_pid, _ = pairs["on"]
    units = {kind: [r["end"] - r["start"] for r in records if r["pid"] == trainer_pid and r["kind"] == kind]
             for kind in ("train", "eval")}
    validation = sum(units["eval"][:VALIDATION_UNITS])
    unit = max(statistics.quantiles(units["train"], n=10)[-1], statistics.quantiles(units["eval"], n=10)[-1])
    waits = [m["waited"] for m in measured]
    print(f"timer waits {[round(w, 4) for w in waits]} s; trainer unit p90 {unit:.4f} s, validation pass {validation:.4f} s")
    assert max(waits) <= 2 * unit + 0.05, (waits, unit)
    assert max(waits) < validation  # a hold kept through validation would make the first wait most of a pass


def test_trainers_do_not_take_each_other_for_a_timer(tmp_path):
    """A trainer acquiring or probing (shared on the intent file) is not a waiting timer; a timer is."""
    lock = DeviceLock("test-device", tmp_path)
    with lock.trainer("cpu") as hold:
        with hold.work():
            pass
        other = open_lock_file(lock.intent)
        fcntl.flock(other, fcntl.LOCK_SH)  # what another trainer holds while it passes the intent file
        assert hold.timer_waiting() is False
        os.close(other)
        release = threading.Event()

        def timer():
            with lock.exclusive():  # waits for the device behind the trainer's share
                release.wait(30)

        thread = threading.Thread(target=timer, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not hold.timer_waiting():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        hold.pause()
        release.set()
        thread.join(timeout=30)


def test_trainer_drains_and_yields_to_a_waiting_timer(tmp_path):
    lock = DeviceLock("test-device", tmp_path)
    events: list[str] = []
    timer_done = threading.Event()

    def timer():
        with lock.exclusive():
            events.append("timer")
        timer_done.set()

    with lock.trainer("cpu", drain=lambda: events.append("drain")) as hold:
        with hold.work():
            events.append("step")
        thread = threading.Thread(target=timer)
        thread.start()
        time.sleep(0.5)  # the timer now holds the intent file and waits: the trainer still holds its share
        assert "timer" not in events
        for _ in range(3):
            with hold.work():
                events.append("step")
        thread.join(timeout=30)
    assert timer_done.is_set()
    # the second unit's end saw the waiting timer: drain, release; the next unit waited for the timer
    assert events[:4] == ["step", "step", "drain", "timer"] and events[4:] == ["step", "step", "drain"]


def test_pause_lets_a_timer_in_while_the_trainer_waits_elsewhere(tmp_path):
    """What train_proxy does before a pruning decision: the device is free while the trainer waits on the driver."""
    lock = DeviceLock("test-device", tmp_path)
    with lock.trainer("cpu") as hold:
        with hold.work():
            pass
        hold.pause()
        begin = time.monotonic()
        with lock.exclusive() as waited:
            assert waited < 5 and time.monotonic() - begin < 5


def test_lock_files_shared_by_users_per_device_uuid(tmp_path, monkeypatch):
    monkeypatch.delenv("NAS_LOCK_DIR", raising=False)
    default = lock_dir()
    assert default == Path("/tmp/nas-locks") and stat.S_IMODE(default.stat().st_mode) == 0o1777  # like /tmp: every user
    a, b = cuda_device_key("GPU-aaaa", 0, "NVIDIA H100"), cuda_device_key("GPU-bbbb", 0, "NVIDIA H100")
    assert a != b and DeviceLock(a).data != DeviceLock(b).data  # 8 identical GPUs: 8 locks
    assert DeviceLock(a).data == DeviceLock(cuda_device_key("GPU-aaaa", 3, "NVIDIA H100")).data  # same GPU, renumbered
    assert DeviceLock.for_device("cpu").key == device_id("cpu") == f"{socket.gethostname()}-cpu"
    monkeypatch.setenv("NAS_LOCK_DIR", str(tmp_path / "team"))
    lock = DeviceLock(a)
    with lock.trainer("cpu") as hold, hold.work():
        pass
    assert stat.S_IMODE(lock.data.stat().st_mode) == 0o666  # another user's trials can open and take it


def test_lock_dir_and_files_that_could_be_swapped_are_refused(tmp_path, monkeypatch):
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    monkeypatch.setenv("NAS_LOCK_DIR", str(link))
    with pytest.raises(PermissionError, match="not a directory"):
        lock_dir()
    (tmp_path / "target").write_text("")
    (tmp_path / "x.lock").symlink_to(tmp_path / "target")
    with pytest.raises(OSError):
        open_lock_file(tmp_path / "x.lock")  # never through a symlink
    if os.getuid() == 0:
        other = tmp_path / "other"
        other.mkdir(mode=0o777)
        os.chmod(other, 0o777)
        os.chown(other, 12345, 12345)
        monkeypatch.setenv("NAS_LOCK_DIR", str(other))
        with pytest.raises(PermissionError, match="not sticky"):
            lock_dir()
