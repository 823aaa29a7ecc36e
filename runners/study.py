"""Reading a sweep back: open a run directory's study, and turn trials into records and tables.

Used by ``nas rescore``, ``export``, ``report`` and ``dashboard``; nothing here trains.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from nas.errors import InputError
from nas.io import read_json_mapping
from nas.record import TrialRecord, record_of
from nas.spec import NetworkSpec
from runners.config import SweepConfig, check_storage_url, config_from_dict
from runners.credentials import STORAGE_ENV, is_masked, mask_url, remember_secret, same_database, scrub

MADE_BY = "a run directory made by `nas search`"


def quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna").setLevel(logging.WARNING)


SCHEMA_RACE = ("UNIQUE constraint failed", "already exists", "duplicate key")
STORAGE_RETRY_SECONDS = 300.0  # how long a storage call is retried through a database restart or a lost connection


class StorageLost(RuntimeError):
    """The storage stayed unreachable for longer than the retry bound."""


def transient(error: BaseException) -> bool:
    """A storage error worth retrying: a lost connection, a server restarting, SQLite busy (``database is locked``)."""
    from sqlalchemy import exc

    cause = error.__cause__ if isinstance(error, optuna.exceptions.StorageInternalError) else error
    if isinstance(cause, exc.DBAPIError) and cause.connection_invalidated:
        return True
    if isinstance(cause, exc.OperationalError) and type(cause.orig).__module__.startswith("sqlite3"):
        return any(text in str(cause.orig) for text in ("locked", "busy"))  # not "no such table" and the like
    return isinstance(cause, (exc.OperationalError, exc.InterfaceError, exc.DisconnectionError))


class RetryingStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage whose calls are retried with backoff for up to ``retry_seconds`` on transient errors.

    A call that keeps failing past the bound raises :class:`StorageLost`. A retried write that reached the
    database before its connection dropped is safe: a second ``tell`` raises Optuna's
    ``UpdateFinishedTrialError`` (never a second result), a second attribute write stores the same value.
    """

    retry_seconds = STORAGE_RETRY_SECONDS
    on_retry = None  # called with a one-line note when a call fails a second time in a row (an outage, not a blip)


def _retrying(method):
    def call(self, *args, **kwargs):
        deadline, delay, failures = time.monotonic() + self.retry_seconds, 0.2, 0
        while True:
            try:
                return method(self, *args, **kwargs)
            except Exception as error:
                if not transient(error):
                    raise
                if time.monotonic() + delay > deadline:
                    reason = scrub(str(getattr(error, "__cause__", None) or error).splitlines()[0])
                    raise StorageLost(f"storage unreachable for {self.retry_seconds:g} s ({reason}); "
                                      f"the next driver recovers this driver's trials") from None
                failures += 1
                # a blip that one retry mends (a pooled connection that Ctrl-C or SIGTERM closed mid-call) is not an outage
                if failures == 2 and self.on_retry is not None:
                    self.on_retry(f"storage: {type(error).__name__}; retrying for up to {self.retry_seconds:g} s")
                time.sleep(delay)
                delay = min(5.0, delay * 2)

    call.__name__, call.__doc__ = method.__name__, method.__doc__
    return call


for _name in ("create_new_study", "set_study_user_attr", "set_study_system_attr", "get_study_id_from_name", "get_study_name_from_id",
              "get_study_directions", "get_study_user_attrs", "get_study_system_attrs", "get_all_studies", "_create_new_trial",
              "_set_trial_param", "get_trial_id_from_study_id_trial_number", "_get_best_trial_id", "set_trial_state_values",
              "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr", "get_trial", "_get_trials",
              "record_heartbeat", "_get_stale_trial_ids"):  # every call Optuna's study makes (get_all_trials calls _get_trials)
    # the private names are RDBStorage's own building blocks (its public methods call them): the one place we name them
    if hasattr(optuna.storages.RDBStorage, _name):
        setattr(RetryingStorage, _name, _retrying(getattr(optuna.storages.RDBStorage, _name)))


def retried(storage: optuna.storages.BaseStorage, call: Callable[[], Any]) -> Any:
    """``call()`` retried as the storage's own methods are (for Optuna functions such as ``fail_stale_trials``
    that also read the storage in ways no public method covers); plain call for another storage."""
    if not isinstance(storage, RetryingStorage):
        return call()
    return _retrying(lambda self: call())(storage)


def rdb_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None,
                stale_callback=None) -> RetryingStorage:
    """An RDB storage; SQLite gets a long busy timeout since several processes write to it.

    The sweep driver passes heartbeat settings (and what to do with a stale trial); readers do not.
    """
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    remember_secret(url)
    attempt = 0
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = RetryingStorage(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat_interval,
                                          grace_period=grace_period, heartbeat_stale_trial_callback=stale_callback)
            if url.startswith("sqlite") and heartbeat_interval is not None:
                write_ahead_log(storage)
            return storage
        except Exception as error:
            # drivers started together on a new database race to create Optuna's tables: the loser sees them
            # half-made ("UNIQUE constraint failed: alembic_version", "already exists") and opens them a moment later
            attempt += 1
            if attempt < 4 and any(text in str(error) for text in SCHEMA_RACE):
                time.sleep(0.5 * attempt)
                continue
            # the message names the masked URL; the driver's text is scrubbed of the password
            raise InputError(f"storage: cannot open {mask_url(url)!r}: {scrub(str(error).splitlines()[0])}") from None


def _wal_pragmas(connection, record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def write_ahead_log(storage: optuna.storages.RDBStorage) -> None:
    """A driver's SQLite study: WAL journal and ``synchronous=NORMAL``, as SQLite documents for WAL.

    In WAL mode with synchronous=NORMAL a commit syncs the disk only at checkpoints, not per write (about 25
    writes per trial), and stays consistent on a crash of the process; a power loss may undo the last
    commits (trials then recovered like an interrupted run). WAL needs the database on a local
    filesystem (not NFS): the embedded study is for one machine, a team uses PostgreSQL.
    """
    from sqlalchemy import event

    event.listen(storage.engine, "connect", _wal_pragmas)
    storage.engine.dispose()  # connections opened before the listener: closed, so every one from now on has the pragmas


def run_storage_url(config: SweepConfig, path: Path, storage: str | None = None) -> str:
    """Where a run's study lives: its own SQLite file, or the stored URL with the password from ``storage``.

    ``config.json`` keeps the storage URL masked, so a PostgreSQL run whose URL had a password needs
    the URL again (``--storage`` or ``NAS_STORAGE``); a URL without one (libpq's PGPASSWORD or
    ~/.pgpass) is used as stored.
    """
    if not config.storage:
        return f"sqlite:///{(path / 'study.db').resolve()}"  # --storage / NAS_STORAGE do not apply to it
    if storage is None:
        if is_masked(config.storage):
            raise InputError(f"storage: the study is in {mask_url(config.storage)} and the run directory does not keep passwords; "
                             f"give the URL with --storage or {STORAGE_ENV} (or leave the password out and use PGPASSWORD / ~/.pgpass)")
        return config.storage
    check_storage_url(storage)
    if not same_database(storage, config.storage):
        raise InputError(f"storage: {mask_url(storage)} is not this run's storage ({mask_url(config.storage)})")
    return storage


def check_run_storage(config: SweepConfig) -> None:
    """A run directory remembers where its study lives: resuming it elsewhere is refused (never a second, new study).

    ``config.json`` keeps the storage URL masked; a sweep on that run directory must name the same database
    (``--storage`` or ``NAS_STORAGE``), and one whose study is the directory's own SQLite file must not name another.
    """
    path = config.run_dir / "config.json"
    if not path.is_file():
        return
    stored = read_json_mapping(path, "run directory").get("storage")
    if stored and config.storage is None:
        raise InputError(f"storage: the study of {str(config.run_dir)!r} is in {mask_url(stored)}; give that URL with --storage or "
                         f"{STORAGE_ENV} (the run directory does not keep passwords; PGPASSWORD / ~/.pgpass work too)")
    if stored and not same_database(config.storage, stored):
        raise InputError(f"storage: {mask_url(config.storage)} is not this run's storage ({mask_url(stored)}), allowed that URL "
                         f"or another --name")
    if not stored and config.storage is not None:
        raise InputError(f"storage: the study of {str(config.run_dir)!r} is its own SQLite file (study.db), allowed no --storage "
                         f"and no {STORAGE_ENV} for it, or another --name")


@dataclass
class Run:
    """A finished or running sweep: its directory, resolved config and Optuna study."""

    path: Path
    config: SweepConfig
    study: optuna.Study
    storage: optuna.storages.RDBStorage  # the study's storage (optuna.Study keeps its own private)

    @property
    def multi(self) -> bool:
        return self.config.objective == "multi"

    def finished(self) -> list[optuna.trial.FrozenTrial]:
        """COMPLETE search trials (the backbone yardstick is not one)."""
        trials = self.study.get_trials(deepcopy=False)
        backbone = backbone_numbers(trials)
        return [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.number not in backbone]

    def trial(self, number: int) -> optuna.trial.FrozenTrial:
        for t in self.study.get_trials(deepcopy=False):
            if t.number == number:
                return t
        raise InputError(f"trial: no trial number {number} in {self.path}, allowed 0..{len(self.study.trials) - 1}")


def open_run(run_dir: str | Path, storage: str | None = None) -> Run:
    """Open ``run_dir`` (made by ``nas search``); a missing or foreign directory is an InputError.

    ``storage``: the run's storage URL with its password, for a study in PostgreSQL (see :func:`run_storage_url`).
    """
    quiet_optuna()
    path = Path(run_dir)
    config_file = path / "config.json"
    if not path.is_dir():
        raise InputError(f"run directory: {str(path)!r} {'is not a directory' if path.exists() else 'does not exist'}, allowed {MADE_BY}")
    if not config_file.is_file():
        raise InputError(f"run directory: {str(path)!r} holds no config.json, allowed {MADE_BY}")
    raw = read_json_mapping(config_file, "run directory")
    try:
        config = config_from_dict(raw)
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise InputError(f"run directory: {config_file} is not a sweep config ({(str(error) or type(error).__name__).splitlines()[0]}), allowed {MADE_BY}") from None
    url = run_storage_url(config, path, storage)
    if url.startswith("sqlite:///") and not Path(url.split("?", 1)[0].removeprefix("sqlite:///")).is_file():
        # opening would create an empty database: reading commands never create files
        raise InputError(f"run directory: {str(path)!r} holds no study ({url.removeprefix('sqlite:///')} does not exist), allowed {MADE_BY}")
    storage = rdb_storage(url)
    try:
        study = optuna.load_study(study_name=config.name, storage=storage)
    except KeyError:
        raise InputError(f"run directory: the study {config.name!r} is not in its storage") from None
    return Run(path, config, study, storage)


TrialState = optuna.trial.TrialState
KINDS = ("complete", "pruned", "failed", "interrupted", "surplus", "backbone")  # how a finished trial counts


def kind(state: TrialState, record: TrialRecord) -> str:
    """How a finished trial counts in a sweep: only complete, pruned and failed (and interrupted trials not queued
    again) count toward ``n_trials``; the backbone and a surplus trial never do. The one counting rule of the project.
    """
    if record.is_backbone:
        return "backbone"
    if state == TrialState.FAIL and record.interrupted:
        return "interrupted"
    if state == TrialState.FAIL and record.surplus:
        return "surplus"
    return {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}.get(state, "failed")


def sweep_counts(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    """Finished trials by :func:`kind`, without the backbone and surplus (as ``nas search`` reports them)."""
    counts = dict.fromkeys(KINDS[:4], 0)
    backbone = backbone_numbers(trials)
    for trial in trials:
        if trial.state.is_finished() and trial.number not in backbone:
            found = kind(trial.state, record_of(trial))
            if found in counts:
                counts[found] += 1
    return counts


def backbone_numbers(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    """Numbers of the backbone trials: ``role = "backbone"``, and retries of them (``retry_of``) after a kill."""
    records = {t.number: record_of(t) for t in trials}
    numbers = {n for n, r in records.items() if r.is_backbone}
    retries = {n: r.retry_of for n, r in records.items() if r.retry_of is not None}
    grown = True
    while grown:  # a retry of a retry of the backbone is the backbone too
        more = {n for n, source in retries.items() if source in numbers} - numbers
        numbers |= more
        grown = bool(more)
    return numbers


def _has_metrics(trial: optuna.trial.FrozenTrial) -> bool:
    record = record_of(trial)
    return record.reward is not None and record.normalized_step_time is not None


def study_score(study: optuna.Study) -> str:
    """The proxy score that is A in this study's records (its stored ``train.score``; older studies: accuracy)."""
    return ((study.user_attrs.get("search") or {}).get("train") or {}).get("score") or "accuracy"


def scored_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Finished search trials with a reward and raw metrics: not failed, pruned, running, nor the backbone yardstick."""
    trials = study.get_trials(deepcopy=False)
    backbone = backbone_numbers(trials)
    return [t for t in trials if t.state == TrialState.COMPLETE and _has_metrics(t) and t.number not in backbone]


def backbone_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The finished backbone yardstick trial with its metrics (the latest if several), or None."""
    trials = study.get_trials(deepcopy=False)
    backbone = backbone_numbers(trials)
    done = [t for t in trials if t.number in backbone and t.state == TrialState.COMPLETE and _has_metrics(t)]
    return done[-1] if done else None


def best_scored(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The scored trial with the highest reward (lowest number on ties); None before any finishes."""
    trials = scored_trials(study)
    return max(trials, key=lambda t: (record_of(t).reward, -t.number)) if trials else None


def trial_spec(trial: optuna.trial.FrozenTrial) -> NetworkSpec:
    return NetworkSpec.from_dict(record_of(trial).spec)


def stage_rows(spec: NetworkSpec) -> list[dict[str, Any]]:
    return [
        {"stage": i, "operator": s.operator, "layers": s.layers, "kernel": s.kernel, "expansion": s.expansion,
         "channels": s.output_channels, "stride": s.stride, "se_ratio": s.se_ratio}
        for i, s in enumerate(spec.stages, 1)
    ]


def stage_table_markdown(spec: NetworkSpec) -> str:
    lines = ["| stage | operator | layers | kernel | expansion | channels | stride |", "|---|---|---|---|---|---|---|"]
    for row in stage_rows(spec):
        lines.append(f"| {row['stage']} | {row['operator']} | {row['layers']} | {row['kernel']} | {row['expansion']} | "
                     f"{row['channels']} | {row['stride']} |")
    return "\n".join(lines)
