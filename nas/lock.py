"""The per-device readers/writer lock that keeps a neighbour's training out of a step-time measurement.

Trainers hold it shared; timing holds it exclusive (FINDINGS: 3.5x inflation on 2 cores without it).
One lock per physical device (a CUDA GPU's UUID; the whole host for the CPU), per user: the files
live in ``$NAS_LOCK_DIR`` or ``<tmp>/nas-locks-<uid>/`` (mode 0700).

On CUDA a step returns once its kernels are queued, so a trainer's hold must outlast its kernels:
:meth:`DeviceLock.trainer` keeps the shared hold across steps and, when a timer waits, drains the
stream (``torch.cuda.synchronize``) before letting go. No host sync happens while no timer waits.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch


def lock_dir() -> Path:
    """``$NAS_LOCK_DIR``, else ``<tmp>/nas-locks-<uid>``; created 0700 and refused if another user owns it."""
    root = Path(os.environ.get("NAS_LOCK_DIR") or Path(tempfile.gettempdir()) / f"nas-locks-{os.getuid()}")
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if root.stat().st_uid != os.getuid():  # another user's directory: its files could block or spoof ours
        raise PermissionError(f"lock directory {root} belongs to another user; set NAS_LOCK_DIR to a directory of yours")
    return root


def lock_path(name: str) -> Path:
    """A lock file in :func:`lock_dir` with ``name`` made filename-safe."""
    return lock_dir() / re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def device_id(device: torch.device | str) -> str:
    """The physical device: ``cuda-<UUID>`` (index and name where the UUID is not exposed), or ``<host>-cpu``.

        >>> device_id("cpu") == f"{socket.gethostname()}-cpu"
        True
    """
    device = torch.device(device)
    if device.type != "cuda":
        return f"{socket.gethostname()}-{device.type}"  # all CPU trials on a host share the cores
    index = device.index if device.index is not None else torch.cuda.current_device()
    properties = torch.cuda.get_device_properties(index)
    return cuda_device_key(str(getattr(properties, "uuid", "") or ""), index, properties.name)


def cuda_device_key(uuid: str, index: int, name: str) -> str:
    """``cuda-<UUID>``: one per physical GPU, whatever index CUDA_VISIBLE_DEVICES gives it in this process.

        >>> cuda_device_key("6f1d-a", 0, "H100") != cuda_device_key("6f1d-b", 0, "H100")
        True
    """
    # index+name is only a fallback: CUDA_VISIBLE_DEVICES renumbers devices per process
    return f"cuda-{uuid}" if uuid else f"{socket.gethostname()}-cuda{index}-{name}"


@contextlib.contextmanager
def file_lock(path: Path, mode: int = fcntl.LOCK_EX):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, mode)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _cuda_drain(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


class DeviceLock:
    """A writer-preferring readers/writer lock per physical device, shared by processes on one host.

    Trainers hold it *shared* (:meth:`trainer`, or :meth:`shared` around one step); timing holds it
    *exclusive*. A turnstile file makes a waiting timer block new readers, so a steady stream of
    training steps cannot starve it. ``key`` names the device (:func:`device_id`).

        >>> lock = DeviceLock("cpu")
        >>> with lock.trainer("cpu") as guard, guard():
        ...     pass
    """

    def __init__(self, key: str, directory: str | os.PathLike[str] | None = None) -> None:
        root = Path(directory) if directory else lock_dir()
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
        self.key = key
        self.turnstile = root / f"{safe}.turnstile"
        self.data = root / f"{safe}.lock"

    @classmethod
    def for_device(cls, device: torch.device | str, directory: str | os.PathLike[str] | None = None) -> DeviceLock:
        """The lock of ``device``'s physical device (GPU UUID; the host for the CPU)."""
        return cls(device_id(device), directory)

    @contextlib.contextmanager
    def shared(self, drain: Callable[[], None] | None = None):
        """Shared for one block; ``drain`` (e.g. a CUDA synchronize) runs before release."""
        with file_lock(self.turnstile):  # pass through the turnstile (blocked while a timer waits)
            pass
        with file_lock(self.data, fcntl.LOCK_SH):
            try:
                yield
            finally:
                if drain is not None:
                    drain()

    @contextlib.contextmanager
    def exclusive(self):
        with file_lock(self.turnstile), file_lock(self.data, fcntl.LOCK_EX):
            yield

    @contextlib.contextmanager
    def trainer(self, device: torch.device | str,
                drain: Callable[[], None] | None = None) -> Iterator[Callable[[], contextlib.AbstractContextManager]]:
        """A shared hold for a whole training run; yields the per-step guard (``with guard(): step(...)``).

        The hold is kept from step to step (no syscall beyond a non-blocking probe, no sync) and is
        given up only when a timer waits at the turnstile: then the device is drained first, so the
        timer's exclusive hold excludes this trainer's queued kernels too. ``drain`` defaults to
        ``torch.cuda.synchronize(device)`` on CUDA and nothing on the CPU.
        """
        hold = _SharedHold(self, drain or _cuda_drain(torch.device(device)))
        try:
            yield hold.step
        finally:
            hold.release()


class _SharedHold:
    """State of :meth:`DeviceLock.trainer`: the open files and whether the shared lock is held."""

    def __init__(self, lock: DeviceLock, drain: Callable[[], None]) -> None:
        self.lock, self.drain = lock, drain
        lock.data.parent.mkdir(parents=True, exist_ok=True)
        self.turnstile = open(lock.turnstile, "a")  # kept open for the hold's life
        self.data = open(lock.data, "a")
        self.held = False

    def acquire(self) -> None:
        fcntl.flock(self.turnstile, fcntl.LOCK_EX)  # blocked while a timer waits or measures
        fcntl.flock(self.turnstile, fcntl.LOCK_UN)
        fcntl.flock(self.data, fcntl.LOCK_SH)
        self.held = True

    def timer_waiting(self) -> bool:
        try:
            fcntl.flock(self.turnstile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True  # a timer (or a trainer passing through) holds the turnstile
        fcntl.flock(self.turnstile, fcntl.LOCK_UN)
        return False

    def yield_if_waited(self) -> None:
        if self.held and self.timer_waiting():
            self.drain()  # our queued kernels finish before the timer may start
            fcntl.flock(self.data, fcntl.LOCK_UN)
            self.held = False

    @contextlib.contextmanager
    def step(self):
        if not self.held:
            self.acquire()
        try:
            yield
        finally:
            self.yield_if_waited()

    def release(self) -> None:
        try:
            if self.held:
                self.drain()
                fcntl.flock(self.data, fcntl.LOCK_UN)
                self.held = False
        finally:
            self.turnstile.close()
            self.data.close()
