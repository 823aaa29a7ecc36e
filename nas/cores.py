"""Host-wide core slots: trainers of every sweep on a host share its cores instead of oversubscribing them.

Each Ray instance (one per driver that starts its own, ``nas fidelity``, a teammate's sweep) believes it
owns every core of the host, so two sweeps on one 2-core host ran two 2-thread trainings at once, each
5.4x slower than alone (``bench/bench_share.py``). A
CPU trainer therefore takes one slot per thread it will use from a pool of ``host_cores()`` slots (one
``flock``-ed file each in :func:`nas.lock.lock_dir`, shared by every user like the device locks) and
holds them for its whole run; a trainer that finds too few free waits for them (bounded by ``timeout``).
A killed trainer leaves no slot taken: the kernel drops an ``flock`` with its last descriptor.

``NAS_HOST_CORES`` overrides the pool size (e.g. the cores a team leaves to trials on a shared host).

    >>> import tempfile
    >>> with hold_cores(1, directory=tempfile.mkdtemp(), pool=2) as waited:
    ...     waited  # the slot was free: no wait
    0.0
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from nas.lock import lock_dir, open_lock_file

CORES_ENV = "NAS_HOST_CORES"
POLL_SECONDS = 0.5
_thread_cap: int | None = None  # while a trainer holds core slots (thread_cap): the most torch threads it may run


def host_cores() -> int:
    """The slots in the pool: ``$NAS_HOST_CORES``, else the cores this process may run on."""
    given = os.environ.get(CORES_ENV)
    if given:
        return max(1, int(given))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _take(fds: list[int], want: int) -> list[int]:
    """Non-blocking: the descriptors of ``want`` slots now locked by us, or none (all let go) if fewer are free."""
    taken = []
    for fd in random.sample(fds, len(fds)):  # random order: waiters do not all race for slot 0
        if len(taken) == want:
            break
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            taken.append(fd)
        except BlockingIOError:
            continue
    if len(taken) < want:
        for fd in taken:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return []
    return taken


@contextlib.contextmanager
def hold_cores(threads: int, *, directory: str | os.PathLike[str] | None = None, pool: int | None = None,
               timeout: float | None = None, on_wait: Callable[[int], None] | None = None,
               enabled: bool = True) -> Iterator[float]:
    """Hold ``threads`` of the host's core slots for a block; yields the seconds waited for them.

    ``threads`` above the pool asks for the whole pool. ``on_wait(pool)`` is called once if the
    slots are not free at once; slots free at once yield exactly 0.0 (no wait to tell of).
    Raises ``TimeoutError`` after ``timeout`` seconds of waiting.
    ``enabled=False`` takes nothing (only to measure what the slots prevent).
    """
    pool = pool or host_cores()
    want = max(1, min(int(threads), pool))
    if not enabled or threads <= 0:
        yield 0.0
        return
    root = Path(directory) if directory else lock_dir()
    root.mkdir(parents=True, exist_ok=True)
    fds = [open_lock_file(root / f"core-slot-{index}") for index in range(pool)]
    begin = time.monotonic()
    try:
        taken = _take(fds, want)
        waited = not taken
        if waited and on_wait is not None:
            on_wait(pool)
        while not taken:
            if timeout is not None and time.monotonic() - begin > timeout:
                raise TimeoutError(f"{want} of this host's {pool} core slots not free after {timeout:g} s")
            time.sleep(POLL_SECONDS * (0.5 + random.random()))
            taken = _take(fds, want)
        yield time.monotonic() - begin if waited else 0.0
    finally:
        for fd in fds:
            os.close(fd)  # closing drops the lock


def use_threads(threads: int) -> None:
    """Set torch's intra-op threads to ``threads``, but never above the cap of an enclosing :func:`thread_cap`.

    Every trainer sets its threads through this, so a training started inside a held slot block cannot
    undo the cap (it did: 2 threads on the 1 slot held, spinning at each other's barriers, >18x slower).
    """
    import torch  # here: the slot pool itself needs no torch

    torch.set_num_threads(max(1, min(threads, _thread_cap) if _thread_cap else threads))


@contextlib.contextmanager
def thread_cap(threads: int) -> Iterator[None]:
    """At most ``threads`` torch threads inside the block (see :func:`use_threads`); the caller's threads restored after.

    >>> import torch
    >>> with thread_cap(1):
    ...     use_threads(4)
    ...     torch.get_num_threads()
    1
    """
    global _thread_cap
    import torch

    before, outer = torch.get_num_threads(), _thread_cap
    _thread_cap = max(1, min(threads, outer or threads))
    torch.set_num_threads(min(before, _thread_cap))
    try:
        yield
    finally:
        _thread_cap = outer
        torch.set_num_threads(before)
