"""The Ray worker side of a sweep: evaluate one candidate, never raise (failures become records).

Pruning decisions are the driver's: the worker posts each epoch's A so far (``train.score``) to a
``PruneBoard`` actor and waits for the driver's answer (the driver reports to its own
``optuna.Trial`` and asks the pruner), so no worker opens the study.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import optuna
import torch

from nas.configs import TimingConfig, TrainConfig
from nas.cores import use_threads
from nas.data import Dataset
from nas.evaluate import evaluate_candidate
from nas.record import TrialRecord
from nas.scores import score_so_far
from nas.spec import NetworkSpec
from nas.timing import ReferenceCache
from runners.ray_cluster import Mailbox, poster

DECISION_WAIT_SECONDS = 600.0  # a driver that does not answer: train on rather than hang


def cache_dir() -> Path:
    """This machine's cache for ``nas`` (0700): ``$XDG_CACHE_HOME/nas``, else ``~/.cache/nas``, else ``<tmp>/nas-cache-<uid>``.

    A worker keeps what it caches here, on its own machine: nothing it writes depends on the driver's
    filesystem (on a cluster the driver's run directory does not exist on the other machines).
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    for path in (Path(base) / "nas", Path(tempfile.gettempdir()) / f"nas-cache-{os.getuid()}"):
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            if os.access(path, os.W_OK):
                return path
        except OSError:
            continue
    raise OSError("no writable cache directory: set XDG_CACHE_HOME")


def reference_cache_path(run_dir: str) -> Path:
    """The reference-time cache of one sweep on this machine: keyed by the driver's run directory (a name, never opened)."""
    digest = hashlib.sha256(run_dir.encode()).hexdigest()[:16]
    return cache_dir() / f"reference_times-{digest}.json"


def trial_seed(study_seed: int, number: int) -> int:
    """Per-trial seed derived from (study seed, trial number)."""
    return (study_seed * 1_000_003 + number * 7919 + 17) % (2**31 - 1)


def asha_pruner() -> optuna.pruners.BasePruner:
    """The successive-halving pruner of ``--pruner asha``."""
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)


class PruneBoard(Mailbox):
    """A mailbox between workers and the driver (run as a Ray actor): per-epoch values in, decisions out;
    in-trial progress (epoch, step, images/s) in, for the driver's stderr.

    >>> board = PruneBoard()
    >>> board.report(3, 1, 0.5); board.take_reports()
    [(3, 1, 0.5)]
    >>> board.decide(3, 1, True); board.decision(3, 1)
    True
    """

    def __init__(self) -> None:
        super().__init__()
        self.reports: list[tuple[int, int, float]] = []
        self.decisions: dict[tuple[int, int], bool] = {}

    def report(self, number: int, epoch: int, value: float) -> None:
        self.reports.append((number, epoch, value))

    def take_reports(self) -> list[tuple[int, int, float]]:
        reports, self.reports = self.reports, []
        return reports

    def decide(self, number: int, epoch: int, prune: bool) -> None:
        self.decisions[(number, epoch)] = prune

    def decision(self, number: int, epoch: int) -> bool | None:
        return self.decisions.pop((number, epoch), None)


def _ask_driver(board: Any, number: int, epochs: int, prune: bool, score: str = "accuracy"):
    """An epoch callback that posts the epoch's progress and, with ``prune``, sends the value to the driver and returns its decision.

    The value is ``score`` (the sweep's A, ``train.score``) of the curve so far: the pruner ranks what the reward will.
    """
    import ray

    curve: list[dict] = []

    def on_epoch(epoch: int, metrics: dict) -> bool:
        board.post.remote(number, {"epoch": epoch, "epochs": epochs, "val_accuracy": float(metrics["val_accuracy"])})
        if not prune:
            return False
        curve.append(dict(metrics))
        value = score_so_far(curve, score)
        ray.get(board.report.remote(number, epoch, float(value if value is not None else metrics["val_accuracy"])))
        deadline = time.monotonic() + DECISION_WAIT_SECONDS
        while time.monotonic() < deadline:
            decision = ray.get(board.decision.remote(number, epoch))
            if decision is not None:
                return decision
            time.sleep(0.05)
        return False

    return on_epoch


def evaluate_trial(spec: NetworkSpec, dataset: Dataset, train: TrainConfig, timing: TimingConfig, backbone: NetworkSpec,
                   use_gpu: bool, run_dir: str, board: tuple[Any, int] | None = None, prune: bool = False) -> TrialRecord:
    """Runs inside a Ray worker: evaluate one candidate; never raises (failures become records).

    ``train`` already carries the trial's seed and thread count; ``board`` is (PruneBoard actor, trial number): progress
    goes there, and with ``prune`` each epoch's ``train.score`` so far, whose answer may stop the trial.
    """
    import ray

    use_threads(max(1, train.threads or 1))  # Ray sets OMP_NUM_THREADS=1 in workers
    on_epoch = _ask_driver(*board, train.epochs, prune, train.score) if board is not None else None
    on_progress = poster(*board) if board is not None else None
    node = ray.get_runtime_context().get_node_id()
    try:
        record = evaluate_candidate(
            spec, dataset, train, timing_config=timing, backbone=backbone,
            device="cuda" if use_gpu and torch.cuda.is_available() else "cpu", on_epoch=on_epoch,
            reference_cache=ReferenceCache(reference_cache_path(run_dir)), on_progress=on_progress,
        )
    except Exception as error:  # the sweep goes on; the trial is stored FAIL with this reason
        record = TrialRecord(failure_reason=f"{type(error).__name__}: {error}", traceback=traceback.format_exc(limit=8))
    return record.with_(ray_node_id=node)
