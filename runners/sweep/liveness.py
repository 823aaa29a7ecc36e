"""Liveness: every driver beats for the trials it has in flight, and whoever sees a dead driver's trial queues it again.

A RUNNING trial whose beat (Optuna's RDB heartbeat) is older than ``grace_period`` belongs to a dead
driver: it is failed ``interrupted`` and queued again, at most ``max_retries`` times.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import optuna

from nas.record import attrs, record_of


class Heartbeat:
    """A background thread recording Optuna's heartbeat for every trial this driver has in flight."""

    def __init__(self, storage: optuna.storages.RDBStorage, interval: float, log: Callable[[str], None]) -> None:
        self.storage, self.interval, self.log = storage, interval, log
        self.trial_ids: set[int] = set()
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.thread = threading.Thread(target=self._run, name="nas-heartbeat", daemon=True)
        self.thread.start()

    def add(self, trial_id: int) -> None:
        self.storage.record_heartbeat(trial_id)  # at once: from now on a dead driver's trial goes stale
        with self.lock:
            self.trial_ids.add(trial_id)

    def remove(self, trial_id: int) -> None:
        with self.lock:
            self.trial_ids.discard(trial_id)

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            with self.lock:
                ids = sorted(self.trial_ids)
            for trial_id in ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as error:  # a storage hiccup: the next beat may succeed within the grace period
                    self.log(f"warning: heartbeat for trial id {trial_id} not recorded: {type(error).__name__}")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def requeue_stale(max_retries: int, counter: list[int]) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """Optuna's stale-trial callback: queue an interrupted trial's parameters again, up to ``max_retries`` times."""

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        record = record_of(trial)
        attempt = record.attempt or 0
        counter[0] += 1
        if attempt < max_retries:
            role = attrs(role=record.role) if record.role is not None else {}
            study.enqueue_trial(trial.params, user_attrs={**attrs(retry_of=trial.number, attempt=attempt + 1), **role})

    return callback

