"""The per-device readers/writer lock that keeps a neighbour's work out of a step-time measurement.

Trainers hold a device *shared* for all their device work (building and augmenting batches, the
step, reading statistics, validation); a timer holds it *exclusive* for its timed steps only. On 2
CPU cores a neighbour's training inflated a measured step 3.5x without it.

Protocol (``flock`` on two files per physical device):

- ``<key>.timer``: a timer holds it exclusive from the moment it wants the device until it is done.
  Trainers probe it with a non-blocking *shared* lock after every unit of work (one batch, one
  validation batch): the probe fails only while a timer holds it, so trainers never mistake each
  other for a timer, and several trainers can probe at once.
- ``<key>.lock``: trainers hold it shared, a timer exclusive. A trainer that sees a waiting timer
  drains its queued CUDA kernels (``torch.cuda.synchronize``) and lets go, so the timer gets the
  device within one unit of work; it takes the lock again (after the timer) at its next unit.

Trust model: locks are per host and shared by every user on it (a team shares GPUs), in
``$NAS_LOCK_DIR`` or ``/tmp/nas-locks`` (sticky, world-writable like ``/tmp``); lock files are
world-readable (0666) and opened without following symlinks. Any local user can take a lock, so a
user can delay others' timing (never falsify it); nobody can hold one after their process dies:
the kernel drops an ``flock`` when its last descriptor closes, so a SIGKILLed trial leaves no stale lock.
Set ``NAS_LOCK_DIR`` to one directory for a group that does not trust the other users of a host.

    >>> import tempfile
    >>> lock = DeviceLock("cpu-doctest", directory=tempfile.mkdtemp())
    >>> with lock.trainer("cpu") as hold, hold.work():
    ...     pass
    >>> with lock.exclusive():
    ...     pass
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

DEFAULT_DIR = "/tmp/nas-locks"  # one place per host for every user (not $TMPDIR, which differs per user)
TRACE_ENV = "NAS_TRACE_DEVICE_WORK"  # a file: every traced unit of device work is appended as a JSON line


def lock_dir() -> Path:
    """``$NAS_LOCK_DIR``, else ``/tmp/nas-locks``; created sticky and world-writable (mode 1777) like ``/tmp``.

    A directory that is a symlink, or that other users may write but is not sticky, is refused: files
    in it could be swapped under us.
    """
    root = Path(os.environ.get("NAS_LOCK_DIR") or DEFAULT_DIR)
    if not root.exists():
        root.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(PermissionError):
            os.chmod(root, 0o1777)  # umask-proof; a racing creator may own it: the check below decides
    info = os.lstat(root)
    if not stat.S_ISDIR(info.st_mode):
        raise PermissionError(f"lock directory {root} is not a directory (a symlink?); set NAS_LOCK_DIR to a directory")
    others_write = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if others_write and not info.st_mode & stat.S_ISVTX and info.st_uid != os.getuid():
        raise PermissionError(f"lock directory {root} is writable by others but not sticky; chmod +t it or set NAS_LOCK_DIR")
    return root


def open_lock_file(path: Path) -> int:
    """A descriptor for ``flock`` on ``path`` (created 0666 so other users' trials can take it too; never via a symlink)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except PermissionError as error:
        raise PermissionError(f"lock file {path} cannot be opened ({error.strerror}): its owner must make it "
                              f"readable (chmod 666), or set NAS_LOCK_DIR") from None
    with contextlib.suppress(PermissionError):
        if os.fstat(fd).st_uid == os.getuid():
            os.fchmod(fd, 0o666)  # the umask narrowed it at creation
    return fd


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
    """``flock`` on ``path`` for a block (exclusive by default)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = open_lock_file(path)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # closing drops the lock


@contextlib.contextmanager
def trace_device_work(kind: str) -> Iterator[None]:
    """Append ``{"kind", "pid", "start", "end"}`` (wall clock) for this block to ``$NAS_TRACE_DEVICE_WORK``, if set.

    Placed around device work in the training and timing code, independent of the lock, so a test can
    check that no trainer's work overlaps a timed window (and see overlaps when the lock is off).
    """
    path = os.environ.get(TRACE_ENV)
    if not path:
        yield
        return
    start = time.time()
    try:
        yield
    finally:
        with open(path, "a") as handle:
            handle.write(json.dumps({"kind": kind, "pid": os.getpid(), "start": start, "end": time.time()}) + "\n")


def cuda_drain(device: torch.device | str) -> Callable[[], None]:
    """``torch.cuda.synchronize(device)`` on CUDA (queued kernels finish before a hold ends), else nothing."""
    device = torch.device(device)
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


class DeviceLock:
    """A timer-preferring readers/writer lock per physical device, shared by the processes of every user on a host.

    ``key`` names the device (:func:`device_id`); ``enabled=False`` gives the same API without locking
    (for measuring what the lock prevents).
    """

    def __init__(self, key: str, directory: str | os.PathLike[str] | None = None, *, enabled: bool = True) -> None:
        root = Path(directory) if directory else (lock_dir() if enabled else Path(DEFAULT_DIR))
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
        self.key, self.enabled = key, enabled
        self.intent = root / f"{safe}.timer"
        self.data = root / f"{safe}.lock"

    @classmethod
    def for_device(cls, device: torch.device | str, directory: str | os.PathLike[str] | None = None, *,
                   enabled: bool = True) -> DeviceLock:
        """The lock of ``device``'s physical device (GPU UUID; the host for the CPU)."""
        return cls(device_id(device), directory, enabled=enabled)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[float]:
        """The timer's hold; yields the seconds waited for it (drain on CUDA before leaving the block)."""
        begin = time.perf_counter()
        if not self.enabled:
            yield 0.0
            return
        with file_lock(self.intent), file_lock(self.data, fcntl.LOCK_EX):  # intent first: trainers see us wait
            yield time.perf_counter() - begin

    @contextlib.contextmanager
    def trainer(self, device: torch.device | str, drain: Callable[[], None] | None = None) -> Iterator[TrainerHold]:
        """A trainer's shared hold over a whole run; device work goes in ``with hold.work():`` blocks.

        ``drain`` defaults to :func:`cuda_drain` of ``device``.
        """
        hold = TrainerHold(self, drain or cuda_drain(device))
        try:
            yield hold
        finally:
            hold.close()


class TrainerHold:
    """A trainer's side of :class:`DeviceLock`: the shared lock is taken at the first unit of work and kept
    across units (no syscall but a non-blocking probe, no sync) until a timer waits or :meth:`pause` is called."""

    def __init__(self, lock: DeviceLock, drain: Callable[[], None]) -> None:
        self.lock, self.drain, self.held = lock, drain, False
        self.fds: tuple[int, int] | None = None
        if lock.enabled:
            lock.data.parent.mkdir(parents=True, exist_ok=True)
            self.fds = (open_lock_file(lock.intent), open_lock_file(lock.data))

    def timer_waiting(self) -> bool:
        """True while a timer holds the intent file (a shared probe: other trainers never make it fail)."""
        assert self.fds is not None
        try:
            fcntl.flock(self.fds[0], fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(self.fds[0], fcntl.LOCK_UN)
        return False

    @contextlib.contextmanager
    def work(self) -> Iterator[None]:
        """One unit of device work (a batch and its step, a validation batch) under the shared hold."""
        if self.fds is None:
            yield
            return
        if not self.held:
            fcntl.flock(self.fds[0], fcntl.LOCK_SH)  # waits while a timer wants or holds the device
            fcntl.flock(self.fds[0], fcntl.LOCK_UN)
            fcntl.flock(self.fds[1], fcntl.LOCK_SH)
            self.held = True
        try:
            yield
        finally:
            if self.timer_waiting():
                self.pause()

    def pause(self) -> None:
        """Drain and let go now (before waiting on anything else, e.g. a pruning decision); the next unit takes it again."""
        if self.held and self.fds is not None:
            self.drain()  # queued kernels finish before a timer may start
            fcntl.flock(self.fds[1], fcntl.LOCK_UN)
            self.held = False

    def close(self) -> None:
        try:
            self.pause()
        finally:
            if self.fds is not None:
                for fd in self.fds:
                    os.close(fd)
                self.fds = None
