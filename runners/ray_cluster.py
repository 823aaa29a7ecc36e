"""Starting or joining Ray, one way for every command that trains on it (``nas search``, ``fidelity``, ``calibrate``).

A local instance is private to this process (127.0.0.1, no token leaks into the environment of
other processes: :func:`runners.credentials.local_ray_environment`); ``address`` joins a cluster.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from runners.config import SweepConfig
from runners.credentials import local_ray_environment
from runners.preflight import check_address


def init_ray(config: SweepConfig) -> bool:
    """Start Ray in-process (or join ``config.address``); returns True when we started it (the caller shuts it down)."""
    if not config.address:
        local_ray_environment(os.environ)  # before `import ray`: Ray reads these at import
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if config.ray_tmpdir:
        os.environ["RAY_TMPDIR"] = str(config.ray_tmpdir)
    import ray  # heavy: loaded only by commands that train

    if ray.is_initialized():
        return False
    if config.address and config.address != "auto":
        check_address(config.address)
    kwargs: dict[str, Any] = dict(include_dashboard=config.ray_dashboard, log_to_driver=False, logging_level="WARNING")
    main = threading.current_thread() is threading.main_thread()
    ours = signal.getsignal(signal.SIGTERM) if main else None
    try:
        if config.address:
            ray.init(address=config.address, **kwargs)
        else:
            ray.init(num_cpus=os.cpu_count(), **kwargs)
    except SystemExit as exit_:  # SIGTERM while Ray starts: its handlers then exit (15, or 1 after stopping its node)
        ray.shutdown()  # whatever of Ray had started
        if main and callable(ours):
            signal.signal(signal.SIGTERM, ours)
            ours(signal.SIGTERM, None)  # ours: one line, exit 143
        raise exit_
    if main and callable(ours):
        # ray.init replaces the SIGTERM handler (its local node kills itself and exits 1; its core worker adds a crash
        # dump that aborts): ours again, so SIGTERM stops the driver like Ctrl-C (the cleanup runs, exit 143)
        signal.signal(signal.SIGTERM, ours)
    return True


class Mailbox:
    """In-training progress from Ray workers to their driver (run as a Ray actor): the latest progress of each
    key, and every core wait (a driver's timeout depends on them), taken by the driver when it prints.

    >>> box = Mailbox()
    >>> box.post(3, {"epoch": 1}); box.post(3, {"epoch": 2}); box.post(4, {"cores": "waiting", "pool": 2})
    >>> box.take_progress()
    [(4, {'cores': 'waiting', 'pool': 2}), (3, {'epoch': 2})]
    """

    def __init__(self) -> None:
        self.progress: dict[Any, dict[str, Any]] = {}
        self.events: list[tuple[Any, dict[str, Any]]] = []

    def post(self, key: Any, info: dict[str, Any]) -> None:
        if "cores" in info:
            self.events.append((key, info))
        else:
            self.progress[key] = info

    def take_progress(self) -> list[tuple[Any, dict[str, Any]]]:
        events, progress, self.events, self.progress = self.events, self.progress, [], {}
        return events + sorted(progress.items())


def poster(box: Any, key: Any) -> Any:
    """A progress callback (``train_proxy``'s ``on_progress``) that posts to a :class:`Mailbox` actor without waiting."""

    def on_progress(info: dict[str, Any]) -> None:
        box.post.remote(key, dict(info))

    return on_progress
