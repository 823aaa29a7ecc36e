"""The trial record: one evaluated candidate, as every trial stores it (its Optuna user attributes).

The worker writes it (:func:`nas.evaluate.evaluate_candidate`), the driver adds the trial's role,
reward and bookkeeping, and everything else reads it through :class:`TrialRecord`; this module is
the only place its field names are spelled. A, S and P (the reward's inputs) and their objective
directions are defined here once.

    >>> r = TrialRecord(status=OK, accuracy=0.9, normalized_step_time=1.1, normalized_params=0.8)
    >>> r.asp, TrialRecord.from_attrs(r.to_attrs()) == r
    ((0.9, 1.1, 0.8), True)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from nas.errors import InputError

# A, S, P: accuracy (higher is better), step time and params over the backbone's (lower is better)
METRICS = ("accuracy", "normalized_step_time", "normalized_params")
METRIC_LABELS = ("A", "S", "P")
DIRECTIONS = ("maximize", "minimize", "minimize")
REWARD = "reward"  # the single objective's name
SPEC_KEY = "spec_key"  # the architecture's identity: a claim, the duplicate index, a row's spec column
RESCORED = (*METRICS, "step_time_ms", "params", SPEC_KEY)  # what re-scoring shows beside a new reward
PROVENANCE = (*METRICS, "step_time_ms", "reference_step_time_ms", "params", REWARD, "device", "host", "torch_version",
              "train_config", "timing_config")  # copied into an export's provenance

# a record's status, and the trial state it is told as
OK, PRUNED, FAILED = "ok", "pruned", "failed"
STATUSES = (OK, PRUNED, FAILED)

# roles and failure reasons the driver stores; readers count trials by them
BACKBONE_ROLE = "backbone"  # the yardstick trial: the reference for S and P, never counted toward n_trials
INTERRUPTED = "interrupted: the sweep driver stopped while this trial ran"  # stored at ask; replaced at tell
SURPLUS = "surplus: another driver filled the last slot of the sweep first"
TIMEOUT = "timeout: the trial ran longer than trial_timeout"
# per-trial attributes of a duplicate that are its own, not its twin's
NOT_COPIED = ("seed", "reused_from", "retry_of", "attempt", "driver", "role")


@dataclass(frozen=True)
class TrialRecord:
    """Everything one trial stores; every field optional (a failed trial has few), unknown stored keys kept in ``extra``."""

    status: str = FAILED
    failure_reason: str | None = None
    # the proxy training
    accuracy: float | None = None  # A: the proxy score chosen by train.score (the final accuracy by default)
    final_accuracy: float | None = None
    val_loss: float | None = None
    curve: list[dict[str, Any]] | None = None  # per epoch: epoch, train_loss, val_loss, val_accuracy
    epochs_run: int | None = None
    train_seconds: float | None = None
    trained_step: dict[str, Any] | None = None
    # size
    params: int | None = None
    normalized_params: float | None = None  # P
    reference_params: int | None = None
    macs: int | None = None
    proxy_macs: int | None = None
    # the timed training step
    step_time_ms: float | None = None
    step_time_iqr_ms: float | None = None
    step_time_cv: float | None = None
    step_time_samples_ms: list[float] | None = None
    timed_step: dict[str, Any] | None = None
    reference_step_time_ms: float | None = None
    normalized_step_time: float | None = None  # S
    throughput_img_s: float | None = None
    # what ran, where
    spec: dict[str, Any] | None = None
    spec_key: str | None = None
    data: str | None = None
    num_classes: int | None = None
    train_config: dict[str, Any] | None = None
    timing_config: dict[str, Any] | None = None
    backbone: str | None = None
    device: str | None = None
    device_id: str | None = None
    torch_version: str | None = None
    threads: int | None = None
    host: str | None = None
    ray_node_id: str | None = None
    peak_memory_mb: float | None = None
    seed: int | None = None
    core_wait_seconds: float | None = None  # waited for a core slot other trainings on the host held
    wall_seconds: float | None = None
    finished_at: str | None = None
    traceback: str | None = None  # a worker's exception (shown once, not stored)
    worker_lost: str | None = None  # the worker died: not the trial's fault, queued again
    # the driver's
    reward: float | None = None
    role: str | None = None
    driver: str | None = None
    attempt: int | None = None
    retry_of: int | None = None
    reused_from: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise InputError(f"status: {self.status!r} is not allowed, allowed {', '.join(STATUSES)}")

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> TrialRecord:
        """The record stored as ``attrs`` (a trial's user attributes; old sweeps' records included)."""
        values = {k: v for k, v in attrs.items() if k in FIELDS}
        if values.get("status") not in STATUSES:
            values.pop("status", None)
        return cls(**values, extra={k: v for k, v in attrs.items() if k not in FIELDS})

    def to_attrs(self) -> dict[str, Any]:
        """The fields that are set, JSON-normalized, as user attributes (the traceback stays out)."""
        attrs = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("extra", "traceback")}
        # failure_reason always: a completed trial's record clears the "interrupted" its claim stored
        attrs = {k: v for k, v in {**attrs, **self.extra}.items() if v is not None or k == "failure_reason"}
        return json.loads(json.dumps(attrs, default=str))

    def with_(self, **changes: Any) -> TrialRecord:
        return replace(self, **changes)

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def asp(self) -> tuple[float, float, float]:
        """(A, S, P): the reward's inputs and the multi-objective values."""
        return (self.accuracy, self.normalized_step_time, self.normalized_params)

    def metrics(self) -> dict[str, float]:
        """A, S, P by their field names: ``{"accuracy": ..., "normalized_step_time": ..., "normalized_params": ...}``."""
        return dict(zip(METRICS, self.asp, strict=True))

    @property
    def is_backbone(self) -> bool:
        return self.role == BACKBONE_ROLE

    @property
    def interrupted(self) -> bool:
        return self.failure_reason == INTERRUPTED

    @property
    def surplus(self) -> bool:
        return (self.failure_reason or "").startswith(SURPLUS.split(":")[0])

    def pick(self, names: tuple[str, ...]) -> dict[str, Any]:
        """``{name: value}`` for ``names`` (fields of the record), None where unset."""
        return {name: getattr(self, name) for name in names}

    def copied(self) -> dict[str, Any]:
        """The stored attributes a duplicate of this trial takes over (not its per-trial ones)."""
        return {k: v for k, v in self.to_attrs().items() if k not in NOT_COPIED}


FIELDS = frozenset(f.name for f in fields(TrialRecord)) - {"extra"}  # the stored names


def record_of(trial: Any) -> TrialRecord:
    """The record of an Optuna trial (anything with ``user_attrs``)."""
    return TrialRecord.from_attrs(trial.user_attrs)


def attrs(**values: Any) -> dict[str, Any]:
    """Some of a record's fields as user attributes (names checked), for the driver's partial writes.

        >>> attrs(role=BACKBONE_ROLE)
        {'role': 'backbone'}
    """
    unknown = sorted(set(values) - FIELDS)
    if unknown:
        raise TypeError(f"not fields of TrialRecord: {', '.join(unknown)}")
    return json.loads(json.dumps(values, default=str))
