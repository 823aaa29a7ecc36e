"""Executors: where a driver's trials train. Ray workers (every sweep), or an in-process function (benchmarks of the driver).

Both take ``submit(number, spec, train)`` and give back :class:`~nas.record.TrialRecord` results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from nas.configs import TrainConfig
from nas.record import INTERRUPTED, TrialRecord
from nas.spec import NetworkSpec
from runners.config import SweepConfig
from runners.sweep.worker import PruneBoard, evaluate_trial

Evaluate = Callable[[NetworkSpec, TrainConfig], Any]  # -> a TrialRecord (or its attributes as a dict)


class RayExecutor:
    """Trials as Ray tasks; pruning decisions through a ``PruneBoard`` actor."""

    def __init__(self, config: SweepConfig, dataset: Any, backbone: NetworkSpec, *,
                 task: Callable[..., TrialRecord] | None = None) -> None:
        import ray  # heavy: only a sweep that trials on Ray loads it

        self.ray, self.config, self.backbone = ray, config, backbone
        self.dataset_ref = ray.put(dataset)
        self.remote = ray.remote(task or evaluate_trial).options(num_cpus=config.cpus_per_trial, num_gpus=config.gpus_per_trial, max_retries=0)
        self.board = ray.remote(PruneBoard).options(num_cpus=0).remote()  # progress always, pruning with asha
        self.run_dir = str(config.run_dir.resolve())
        share = f"{config.cpus_per_trial:g} CPU" + (f", {config.gpus_per_trial:g} GPU" if config.gpus_per_trial else "")
        self.where = f"on the Ray cluster at {config.address} ({share})" if config.address else f"on this machine ({share})"

    def submit(self, number: int, spec: NetworkSpec, train: TrainConfig) -> Any:
        return self.remote.remote(spec, self.dataset_ref, train, self.config.timing, self.backbone, self.config.gpus_per_trial > 0,
                                  self.run_dir, (self.board, number), self.config.pruner == "asha")

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        ready, _ = self.ray.wait(handles, num_returns=1, timeout=timeout)
        return ready

    def result(self, handle: Any) -> TrialRecord:
        try:
            return self.ray.get(handle)
        except Exception as error:  # a worker that died (OOM-killed, its machine lost): interrupted, queued again
            return TrialRecord(failure_reason=INTERRUPTED, worker_lost=f"{type(error).__name__}: {str(error)[:300]}")

    def cancel(self, handle: Any) -> None:
        self.ray.cancel(handle, force=True)

    def reports(self) -> list[tuple[int, int, float]]:
        return self.ray.get(self.board.take_reports.remote()) if self.config.pruner == "asha" else []

    def progress_reports(self) -> list[tuple[int, dict[str, Any]]]:
        try:
            return self.ray.get(self.board.take_progress.remote(), timeout=10)
        except Exception:  # the board lost (e.g. OOM-killed): progress lines stop, the sweep goes on
            return []

    def decide(self, number: int, epoch: int, prune: bool) -> None:
        self.board.decide.remote(number, epoch, prune)


class LocalExecutor:
    """Runs ``evaluate(spec, train_config) -> record`` in the driver's process when a trial is submitted."""

    where = "in the driver's process"

    def __init__(self, evaluate: Evaluate) -> None:
        self.evaluate, self.done = evaluate, {}

    def submit(self, number: int, spec: NetworkSpec, train: TrainConfig) -> int:
        self.done[number] = self.evaluate(spec, train)
        return number

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        return list(handles)

    def result(self, handle: int) -> TrialRecord:
        record = self.done.pop(handle)
        return record if isinstance(record, TrialRecord) else TrialRecord.from_attrs(record)

    def cancel(self, handle: int) -> None:
        self.done.pop(handle, None)

    def reports(self) -> list[tuple[int, int, float]]:
        return []

    def progress_reports(self) -> list[tuple[int, dict[str, Any]]]:
        return []

    def decide(self, number: int, epoch: int, prune: bool) -> None:
        pass


def as_task(evaluate: Evaluate) -> Callable[..., TrialRecord]:
    """``evaluate(spec, train_config)`` with the Ray task's signature (``evaluate_trial``'s): the driver measured through Ray."""

    def task(spec: NetworkSpec, dataset: Any, train: TrainConfig, *_: Any) -> TrialRecord:
        record = evaluate(spec, train)
        return record if isinstance(record, TrialRecord) else TrialRecord.from_attrs(record)

    return task


@dataclass
class InFlight:
    """A trial this driver holds: training (``handle``) or waiting for ``winner``'s record."""

    trial: optuna.Trial
    trial_id: int
    spec: NetworkSpec
    started: float
    attempt: int = 0
    role: str | None = None  # the backbone's, read once from the trial's record at ask
    handle: Any = None
    winner: int | None = None
