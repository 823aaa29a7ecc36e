"""``nas search``: the sweep driver. Optuna asks, Ray trains, Optuna is told.

Design: we drive Optuna's ask/tell ourselves and use Ray core tasks as the workers (not Tune's
``OptunaSearch``). The study in the RDB storage is the only state, shared by any number of
drivers on the same study:

- **Liveness**: each driver beats (Optuna's RDB heartbeat) for every trial it has in flight; a
  RUNNING trial whose beat is older than ``grace_period`` belongs to a dead driver and is failed
  (``interrupted``) and queued again, at most ``max_retries`` times, by whichever driver sees it.
- **One sweep**: every driver counts all drivers' RUNNING trials toward ``n_trials``; a trial
  claims its architecture (``spec_key``) before training, and the lowest-numbered trial holding a
  key trains it while later ones wait for its record (or are answered at once from a finished one).
- **The study is the authority**: the settings that define a sweep are stored in the study when
  it is created; a later driver with other settings is refused before it changes anything.
- **Dashboard notes** are not written on the hot path (they read every note of the study): ``nas
  dashboard`` writes them for finished trials, and keeps doing so while a sweep runs.
- **Cheap at scale**: the driver keeps a ledger (architecture index and state counts) updated from
  its own tells and from small queries (the RUNNING/WAITING trials, and trials it has not seen yet),
  never re-reading the whole study on the hot path.

(Tune keeps a second state that lags Optuna's by seconds and cannot restore after a kill: see FINDINGS.md.)
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import optuna

from nas.data import Dataset, load_dataset
from nas.errors import InputError
from nas.io import atomic_write_json
from nas.spec import NetworkSpec
from nas.train import TrainConfig
from runners.config import SweepConfig
from runners.credentials import local_ray_environment, mask_url, private_dir
from runners.dashboard import refresh_figures
from runners.preflight import check_address, check_resources, check_sweep
from runners.progress import Progress
from runners.study import BACKBONE_ROLE, backbone_trial, best_scored, check_run_storage, quiet_optuna, rdb_storage, retried
from runners.worker import PruneBoard, asha_pruner, evaluate_trial, trial_seed
from runners.yardstick import against_backbone, ensure_backbone_trial
from search_spaces import SearchSpace, make_sampler

INTERRUPTED = "interrupted: the sweep driver stopped while this trial ran"  # stored at ask; replaced at tell
SURPLUS = "surplus: another driver filled the last slot of the sweep first"
TIMEOUT = "timeout: the trial ran longer than trial_timeout"
DRIVER_SETTINGS = ("n_trials", "max_retries", "heartbeat_interval", "grace_period", "trial_timeout")  # stored; later drivers adopt them
SEARCH_SETTINGS = ("data", "backbone", "space", "reward", "objective", "pruner", "train", "timing")
NOT_COPIED = ("seed", "reused_from", "retry_of", "attempt", "driver", "role")  # per-trial attributes of a duplicate
CLAIM_WAIT_SECONDS = 30.0  # a trial asked longer ago than this without a claim is not waited for
FIGURE_SECONDS = 30.0  # dashboard figures read the whole study: redraw at most this often, off the per-trial path
BACKBONE_VALUES = (float("-inf"), float("inf"), float("inf"))  # the backbone's objective values: last under every direction
TrialState = optuna.trial.TrialState
Evaluate = Callable[[NetworkSpec, TrainConfig], dict[str, Any]]


# ---- the driver side -------------------------------------------------------------------------
def init_ray(config: SweepConfig) -> bool:
    """Start Ray in-process (or join ``config.address``); returns True when we started it."""
    if not config.address:
        local_ray_environment(os.environ)  # before `import ray`: Ray reads these at import
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if config.ray_tmpdir:
        os.environ["RAY_TMPDIR"] = str(config.ray_tmpdir)
    import ray

    if ray.is_initialized():
        return False
    if config.address and config.address != "auto":
        check_address(config.address)
    kwargs: dict[str, Any] = dict(include_dashboard=config.ray_dashboard, log_to_driver=False, logging_level="WARNING")
    main = threading.current_thread() is threading.main_thread()
    ours = signal.getsignal(signal.SIGTERM) if main else None
    if config.address:
        ray.init(address=config.address, **kwargs)
    else:
        ray.init(num_cpus=os.cpu_count(), **kwargs)
    if main and callable(ours):
        # ray.init replaces the SIGTERM handler (its local node kills itself and exits 1; its core worker adds a crash
        # dump that aborts): ours again, so SIGTERM stops the driver like Ctrl-C (the cleanup runs, exit 143)
        signal.signal(signal.SIGTERM, ours)
    return True


def _write_run_config(config: SweepConfig) -> None:
    private_dir(config.run_dir)  # 0700, and owner-only files from here on
    atomic_write_json(config.run_dir / "config.json", json.loads(json.dumps(config.to_dict())))


# ---- the study as the authority ----------------------------------------------------------------
LATER_TRAIN_DEFAULTS = {"data_fraction": 1.0, "score": "accuracy"}  # train settings added after studies were stored


def data_digest(dataset: Any) -> str:
    """``sha256:...`` of the loaded tensors (images, labels, class count): the data's identity, wherever its files sit.

    >>> import torch
    >>> from nas.data import Dataset
    >>> d = Dataset("x", torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1]), torch.zeros(1, 1, 2, 2, dtype=torch.uint8), torch.tensor([1]), 2)
    >>> data_digest(d) == data_digest(d), data_digest(d).startswith("sha256:")
    (True, True)
    """
    digest = hashlib.sha256(str(dataset.num_classes).encode())
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        tensor = getattr(dataset, name).contiguous()
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.numpy().tobytes())
    return f"sha256:{digest.hexdigest()}"


def search_settings(config: SweepConfig, backbone: NetworkSpec, space: SearchSpace, dataset: Any = None) -> dict[str, Any]:
    """The settings that define a sweep (all drivers of one study must agree on them), JSON-normalized.

    ``data`` is the digest of the loaded data when ``dataset`` is given (the same data at another path is the
    same sweep; other data at the same path is not), its resolved path otherwise (studies made before digests).

    >>> from runners.config import resolve_config
    >>> cfg = resolve_config(None, {"name": "x"})
    >>> sorted(search_settings(cfg, SearchSpace.from_config({}).backbone, SearchSpace.from_config({})))[:3]
    ['backbone', 'data', 'data_path']
    """
    data = config.data
    if data != "digits" and Path(data).exists():
        data = str(Path(data).resolve())  # the same data spelled another way is the same sweep
    train = {k: v for k, v in asdict(config.train).items() if k not in ("seed", "threads")  # per trial / per machine
             and LATER_TRAIN_DEFAULTS.get(k, object()) != v}  # at its default, a later setting is left out: older studies resume
    settings = {"data": data_digest(dataset) if dataset is not None else data, "data_path": data, "backbone": backbone.to_dict(),
                "space": space.describe(), "reward": config.reward, "objective": config.objective, "pruner": config.pruner,
                "train": train, "timing": asdict(config.timing)}
    return json.loads(json.dumps(settings))


def settings_difference(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Names of the settings that differ (``train.epochs`` for nested ones).

    >>> settings_difference({"reward": {"name": "paper"}, "train": {"epochs": 1}}, {"reward": {"name": "paper"}, "train": {"epochs": 2}})
    ['train.epochs']
    """
    names = []
    for key in SEARCH_SETTINGS:
        old, new = stored.get(key), current.get(key)
        if old == new:
            continue
        if key in ("train", "timing") and isinstance(old, dict) and isinstance(new, dict):
            names += [f"{key}.{k}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        else:
            names.append(key)
    return names


def open_study(config: SweepConfig, storage: optuna.storages.RDBStorage, settings: dict[str, Any], extra: dict[str, Any],
               driver: str, space: SearchSpace) -> tuple[optuna.Study, bool]:
    """Create the study (its backbone trial, then its settings) or load it and check ours against its; returns (study, created)."""
    multi = config.objective == "multi"
    pruner = asha_pruner() if config.pruner == "asha" else None
    try:
        study = optuna.create_study(study_name=config.name, storage=storage, sampler=make_sampler(config.sampler, seed=config.seed),
                                    directions=["maximize", "minimize", "minimize"] if multi else ["maximize"], pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError:  # exactly one driver creates it; the others load it
        pass
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["accuracy", "normalized_step_time", "normalized_params"] if multi else ["reward"])
        # the yardstick before the settings: a driver that loads the study waits for the settings, so it finds the
        # backbone already queued and does not queue a second one
        ensure_backbone_trial(study, space)
        drivers = {key: getattr(config, key) for key in DRIVER_SETTINGS}
        for key, value in {**extra, "drivers": drivers, "search": settings}.items():
            study.set_user_attr(key, json.loads(json.dumps(value)))
        return study, True
    # a per-driver sampler seed: drivers that share a study draw different proposals
    seed = int.from_bytes(hashlib.sha256(f"{config.seed}:{driver}".encode()).digest()[:4], "big") % (2**31 - 1)
    study = optuna.load_study(study_name=config.name, storage=storage, sampler=make_sampler(config.sampler, seed=seed), pruner=pruner)
    stored = study.user_attrs.get("search")
    deadline = time.monotonic() + 30
    while stored is None and time.monotonic() < deadline and all(t.user_attrs.get("role") == BACKBONE_ROLE
                                                                  for t in study.get_trials(deepcopy=False)):
        time.sleep(0.5)  # created a moment ago by another driver that is still writing its settings
        stored = study.user_attrs.get("search")
    if stored is None:  # a study from before settings were stored: adopt ours
        study.set_user_attr("search", settings)
        return study, False
    if not str(stored.get("data", "")).startswith("sha256:"):  # a study from before data digests: compare paths
        settings = {**settings, "data": settings.get("data_path", settings["data"])}
    changed = settings_difference(stored, settings)
    if changed:
        raise InputError(f"study {config.name!r} was created with another {', '.join(changed)}; this driver's settings differ "
                         f"(nothing changed in the study); use the study's settings or another --name")
    return study, False


def adopt_driver_settings(config: SweepConfig, study: optuna.Study, log: Callable[[str], None]) -> SweepConfig:
    """``config`` with the study's ``n_trials``, ``max_retries``, ``heartbeat_interval``, ``grace_period``, ``trial_timeout``.

    Every driver of a study works with the same values (a shorter grace period would fail other drivers' live
    trials; "exactly N finished" needs one N): the creator's, stored with the search settings. A later driver
    that names others says so in one line and adopts the study's, except a larger ``n_trials``, which raises the
    study's (extending a sweep). A study from before they were stored gets ours.
    """
    stored = study.user_attrs.get("drivers")
    if not isinstance(stored, dict):
        study.set_user_attr("drivers", {key: getattr(config, key) for key in DRIVER_SETTINGS})
        return config
    if config.n_trials > stored.get("n_trials", config.n_trials):  # a larger --trials extends the sweep, for every driver
        log(f"study {config.name!r}: n_trials raised from {stored['n_trials']} to {config.n_trials}")
        stored = {**stored, "n_trials": config.n_trials}
        study.set_user_attr("drivers", stored)
    adopted = replace(config, **{key: stored[key] for key in DRIVER_SETTINGS if key in stored})
    changed = [f"{key}={getattr(adopted, key):g} (not {getattr(config, key):g})" for key in DRIVER_SETTINGS
               if getattr(adopted, key) != getattr(config, key)]
    if changed:
        log(f"study {config.name!r} runs with {', '.join(changed)}: adopted from the study, as every driver of it does")
    return adopted


# ---- liveness ------------------------------------------------------------------------------------
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
        attempt = int(trial.user_attrs.get("attempt", 0))
        counter[0] += 1
        if attempt < max_retries:
            extra = {"role": trial.user_attrs["role"]} if "role" in trial.user_attrs else {}
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number, "attempt": attempt + 1, **extra})

    return callback


def report_curve(trial: optuna.Trial, curve: list[dict[str, Any]]) -> None:
    """Each epoch's validation accuracy as the trial's intermediate value (the dashboard's learning curves)."""
    for point in curve:
        if "epoch" in point and point.get("val_accuracy") is not None:
            trial.report(float(point["val_accuracy"]), int(point["epoch"]))


# ---- the ledger: what the driver knows about every trial, kept incrementally -----------------------
@dataclass(frozen=True)
class Seen:
    """The part of a trial the driver's bookkeeping needs."""

    number: int
    state: TrialState
    key: str | None
    reason: str | None
    attempt: int
    role: str | None
    reward: float | None
    started: float = 0.0  # POSIX time the trial started (0 when unknown)

    @classmethod
    def of(cls, trial: optuna.trial.FrozenTrial) -> Seen:
        a = trial.user_attrs
        return cls(trial.number, trial.state, a.get("spec_key"), a.get("failure_reason"), int(a.get("attempt", 0)), a.get("role"),
                   a.get("reward") if trial.state == TrialState.COMPLETE else None,
                   trial.datetime_start.timestamp() if trial.datetime_start else 0.0)


class Ledger:
    """Counts, the architecture index and the best reward, from the study, updated incrementally.

    Finished trials never change, so each is read once: from this driver's own tells, or fetched
    by number when it leaves the RUNNING/WAITING set or appears as a number not seen before.
    """

    def __init__(self, study: optuna.Study, storage: optuna.storages.RDBStorage, max_retries: int) -> None:
        self.study, self.storage, self.max_retries = study, storage, max_retries
        self.study_id = storage.get_study_id_from_name(study.study_name)
        self.counts = {"complete": 0, "pruned": 0, "failed": 0, "interrupted": 0, "surplus": 0}
        self.finished: set[int] = set()
        self.counted = 0
        self.index: dict[str, int] = {}  # spec_key -> number of the finished trial that answers it
        self.best: tuple[float, int, str] | None = None  # (reward, number, spec_key)
        self.active: dict[int, Seen] = {}  # RUNNING and WAITING trials at the last refresh
        self.ids: dict[int, int] = {}  # number -> storage trial id
        self.horizon = -1  # every number up to here is finished-known or active
        self.unclaimed: dict[int, float] = {}  # RUNNING trial without a claim -> monotonic time this driver first saw it so
        for trial in study.get_trials(deepcopy=False):  # once, at start-up
            self.horizon = max(self.horizon, trial.number)
            if trial.state.is_finished():
                self.absorb(Seen.of(trial))
            else:
                self.active[trial.number] = Seen.of(trial)
        self.refresh()

    def trial_id(self, number: int) -> int:
        if number not in self.ids:
            self.ids[number] = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
        return self.ids[number]

    def fetch(self, number: int) -> optuna.trial.FrozenTrial:
        return self.storage.get_trial(self.trial_id(number))

    def absorb(self, seen: Seen) -> None:
        if seen.number in self.finished:
            return
        self.finished.add(seen.number)
        self.active.pop(seen.number, None)
        self.ids.pop(seen.number, None)
        if seen.role == "backbone":  # the reference trial: not counted; a sampled twin of it is answered from it
            if seen.state == TrialState.COMPLETE and seen.key is not None:
                self.index.setdefault(seen.key, seen.number)
            return
        if seen.state == TrialState.FAIL and seen.reason == INTERRUPTED:
            self.counts["interrupted"] += 1
            self.counted += seen.attempt >= self.max_retries  # not queued again: it stays a failure of the sweep
            return
        if seen.state == TrialState.FAIL and (seen.reason or "").startswith("surplus"):
            self.counts["surplus"] += 1
            return
        self.counted += 1
        self.counts[{TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}.get(seen.state, "failed")] += 1
        if seen.key is not None:
            self.index.setdefault(seen.key, seen.number)
        if seen.reward is not None and (self.best is None or (seen.reward, -seen.number) > (self.best[0], -self.best[1])):
            self.best = (seen.reward, seen.number, seen.key or "")

    def refresh(self) -> None:
        """Bring the ledger up to date: one small query plus one read per trial that changed since."""
        current = {t.number: Seen.of(t) for t in self.storage.get_all_trials(self.study_id, deepcopy=False,
                                                                              states=(TrialState.RUNNING, TrialState.WAITING))}
        for number in [n for n in self.active if n not in current]:  # finished since the last look
            self.see(self.fetch(number), current)
        while True:  # numbers are dense: probe past the highest known one for trials never seen (another driver's)
            number = self.horizon + 1
            if number not in current:
                try:
                    trial = self.fetch(number)
                except KeyError:
                    break
                self.see(trial, current)
            self.horizon = number
        self.active = current
        now = time.monotonic()
        self.unclaimed = {n: self.unclaimed.get(n, now) for n, s in current.items() if s.state == TrialState.RUNNING and s.key is None}

    def unclaimed_for(self, number: int) -> float:
        """Seconds this driver has seen trial ``number`` RUNNING without a claim (a duration on this host's clock; 0 if claimed)."""
        return time.monotonic() - self.unclaimed[number] if number in self.unclaimed else 0.0

    def see(self, trial: optuna.trial.FrozenTrial, current: dict[int, Seen]) -> None:
        if trial.state.is_finished():
            self.absorb(Seen.of(trial))
        else:
            current[trial.number] = Seen.of(trial)

    def note_asked(self, number: int, trial_id: int) -> None:
        self.ids[number] = trial_id

    def running(self) -> list[Seen]:
        return [s for s in self.active.values() if s.state == TrialState.RUNNING and s.role != "backbone"]

    def claims(self) -> list[Seen]:
        """RUNNING trials that may answer a later twin: the search trials and the backbone trial."""
        return [s for s in self.active.values() if s.state == TrialState.RUNNING]


# ---- executors: Ray workers, or an in-process evaluation (benchmarks of the driver) ---------------------
class RayExecutor:
    """Trials as Ray tasks; pruning decisions through a ``PruneBoard`` actor."""

    def __init__(self, config: SweepConfig, dataset: Any, backbone: NetworkSpec) -> None:
        import ray

        self.ray, self.config, self.backbone = ray, config, backbone
        self.dataset_ref = ray.put(dataset)
        self.remote = ray.remote(evaluate_trial).options(num_cpus=config.cpus_per_trial, num_gpus=config.gpus_per_trial, max_retries=0)
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

    def result(self, handle: Any) -> dict[str, Any]:
        try:
            return self.ray.get(handle)
        except Exception as error:  # a worker that died (OOM-killed, its machine lost): interrupted, queued again
            return {"status": "failed", "failure_reason": INTERRUPTED, "worker_lost": f"{type(error).__name__}: {str(error)[:300]}"}

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

    def result(self, handle: int) -> dict[str, Any]:
        return self.done.pop(handle)

    def cancel(self, handle: int) -> None:
        self.done.pop(handle, None)

    def reports(self) -> list[tuple[int, int, float]]:
        return []

    def progress_reports(self) -> list[tuple[int, dict[str, Any]]]:
        return []

    def decide(self, number: int, epoch: int, prune: bool) -> None:
        pass


@dataclass
class InFlight:
    """A trial this driver holds: training (``handle``) or waiting for ``winner``'s record."""

    trial: optuna.Trial
    trial_id: int
    spec: NetworkSpec
    started: float
    attempt: int = 0
    handle: Any = None
    winner: int | None = None


# ---- the sweep ----------------------------------------------------------------------------------
def run_sweep(config: SweepConfig, evaluate: Evaluate | None = None, *, dataset: Dataset | None = None,
              reward: Callable[[float, float, float], float] | None = None) -> dict[str, Any]:
    """Run (or resume, or join) the sweep described by ``config``; returns a summary dict.

    ``dataset`` (the Python API's user data) replaces loading ``config.data``, which then names it;
    ``reward`` (a function of A, S, P) replaces ``config.reward``'s, which then names it (``custom``).

    ``evaluate`` replaces the Ray workers by an in-process function ``(spec, train_config) -> record``
    (a record as :func:`runners.evaluate.evaluate_candidate` returns it); Ray is then not started.
    It exists to measure the driver itself (``bench/bench_driver.py``).
    """
    quiet_optuna()
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")  # we beat ourselves
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    begin = time.monotonic()
    check_sweep(config)  # paths, storage, address, resources, memory: before anything is created
    check_run_storage(config)  # a run directory's study stays where it is
    dataset = dataset if dataset is not None else load_dataset(config.data)  # bad data paths fail here, before Ray starts
    space = SearchSpace.from_config(config.space or {}, backbone=config.backbone)
    backbone = space.backbone.with_classes(dataset.num_classes)
    settings = search_settings(config, backbone, space, dataset)
    progress = Progress(config.n_trials, config.quiet, config.max_concurrent)
    recovered = [0]
    if config.storage is None:
        private_dir(config.run_dir)  # the default SQLite study lives there
    storage = _open_storage(config, requeue_stale(config.max_retries, recovered))
    storage.on_retry = progress.log
    driver = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    extra = {"config": config.to_dict(), "backbone": backbone.to_dict(), "space": space.describe(), "reward": config.reward,
             "objective": config.objective, "data": config.data}
    study, created = open_study(config, storage, settings, extra, driver, space)  # refuses other settings before any write
    config = adopt_driver_settings(config, study, progress.log)
    progress.total = config.n_trials
    storage.heartbeat_interval, storage.grace_period = config.heartbeat_interval, config.grace_period
    storage.heartbeat_stale_trial_callback = requeue_stale(config.max_retries, recovered)
    _write_run_config(config)
    retried(storage, lambda: optuna.storages.fail_stale_trials(study))  # the public API; retried as one call
    if recovered[0]:
        progress.log(f"resuming {config.name}: {recovered[0]} interrupted trial(s) marked failed and queued again")
    if not created:  # the creator queued it in open_study; a joining or resuming driver queues it if it is missing or was lost
        ensure_backbone_trial(study, space)  # the yardstick: evaluated first, never counted toward n_trials
        known = backbone_trial(study)
        progress.backbone_reward = known.user_attrs.get("reward") if known is not None else None

    executor: RayExecutor | LocalExecutor
    started_ray = False
    if evaluate is None:
        started_ray = init_ray(config)
        import ray

        try:
            check_resources(config, ray.nodes())  # a request no node can satisfy would wait forever
        except InputError:
            if started_ray:
                ray.shutdown()
            raise
        executor = RayExecutor(config, dataset, backbone)
    else:
        executor = LocalExecutor(evaluate)
    startup_seconds = time.monotonic() - begin  # data, study, Ray start: before the first trial
    heartbeat = Heartbeat(storage, config.heartbeat_interval, progress.log)
    driver_run = _Driver(config, study, Ledger(study, storage, config.max_retries), heartbeat, executor, space,
                         dataset.num_classes, progress, driver, reward=reward)
    try:
        driver_run.loop()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: hand this driver's trials over now rather than after the grace period
        driver_run.release(requeue_stale(config.max_retries, [0]))
        raise
    finally:
        heartbeat.close()
        if started_ray:
            import ray

            ray.shutdown()
    refresh_figures(study)
    counts = _counts(study, config.max_retries)
    best = best_scored(study)  # by reward, also in multi-objective runs (reward is stored there too)
    return {"run_dir": str(config.run_dir), "study": config.name, "storage": mask_url(config.storage_url), **counts,
            "trials_this_run": driver_run.new_done, "best_trial": best.number if best else None,
            "best_reward": best.user_attrs["reward"] if best else None, "best_spec_key": best.user_attrs["spec_key"] if best else None,
            "best_metrics": {k: best.user_attrs[k] for k in ("accuracy", "normalized_step_time", "normalized_params", "reward")} if best else None,
            "against_backbone": against_backbone(study, best) if best else None,
            "wall_seconds": time.monotonic() - begin, "startup_seconds": startup_seconds, "recovered": recovered[0]}


def _open_storage(config: SweepConfig, stale_callback: Callable) -> optuna.storages.RDBStorage:
    for attempt in range(3):
        try:
            return rdb_storage(config.storage_url, heartbeat_interval=config.heartbeat_interval, grace_period=config.grace_period,
                               stale_callback=stale_callback)
        except InputError:
            if attempt == 2:
                raise
            time.sleep(1 + attempt)  # drivers creating a new database's tables at the same moment: the loser retries
    raise AssertionError("unreachable")


def _counts(study: optuna.Study, max_retries: int) -> dict[str, int]:
    """Final counts from one full read (end of the sweep only)."""
    ledger_counts = {"complete": 0, "pruned": 0, "failed": 0, "interrupted": 0}
    for trial in study.get_trials(deepcopy=False):
        seen = Seen.of(trial)
        if not trial.state.is_finished() or seen.role == "backbone" or (seen.reason or "").startswith("surplus"):
            continue
        if trial.state == TrialState.FAIL and seen.reason == INTERRUPTED:
            ledger_counts["interrupted"] += 1
        else:
            ledger_counts[{TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}.get(trial.state, "failed")] += 1
    return ledger_counts


class _Driver:
    """The loop of one driver: fill free slots, settle waiters, relay pruning, time out, tell."""

    def __init__(self, config: SweepConfig, study: optuna.Study, ledger: Ledger, heartbeat: Heartbeat,
                 executor: RayExecutor | LocalExecutor, space: SearchSpace, num_classes: int, progress: Progress, driver: str,
                 *, reward: Callable[[float, float, float], float] | None = None) -> None:
        self.config, self.study, self.ledger, self.heartbeat, self.executor = config, study, ledger, heartbeat, executor
        self.space, self.num_classes, self.progress, self.driver = space, num_classes, progress, driver
        self.multi = config.objective == "multi"
        self.reward = reward or config.reward_function()
        self.mine: dict[int, InFlight] = {}  # by trial number
        self.new_done = 0
        self.next_stale_check = time.monotonic() + config.heartbeat_interval
        self.next_figures = time.monotonic() + FIGURE_SECONDS

    # -- filling slots
    def room(self) -> bool:
        return self.ledger.counted + len(self.ledger.running()) < self.config.n_trials

    def loop(self) -> None:
        while True:
            now = time.monotonic()
            if now >= self.next_stale_check:
                retried(self.ledger.storage, lambda: optuna.storages.fail_stale_trials(self.study))
                self.fail_unclaimed()
                self.next_stale_check = now + self.config.heartbeat_interval
            self.ledger.refresh()
            changed = False
            while len(self.mine) < self.config.max_concurrent and self.room():
                changed |= self.start_one()
            changed |= self.settle_waiters()
            changed |= self.relay_pruning()
            changed |= self.enforce_timeouts()
            if changed:  # after the refill, so "running" counts the trials just started
                self.show()
            if not self.mine:
                if self.ledger.counted >= self.config.n_trials:
                    break
                # other drivers' trials fill the sweep: stay, to recover them if their driver dies
                time.sleep(min(1.0, self.config.heartbeat_interval))
                continue
            handles = [f.handle for f in self.mine.values() if f.handle is not None]
            waiting = len(handles) < len(self.mine) or self.config.pruner == "asha"
            timeout = min(0.2 if waiting else 5.0, self.config.heartbeat_interval, self.time_to_timeout())
            ready = self.executor.wait(handles, max(0.0, timeout)) if handles else (time.sleep(timeout) or [])
            by_handle = {f.handle: n for n, f in self.mine.items() if f.handle is not None}
            for handle in ready:
                number = by_handle[handle]
                self.finish(number, self.executor.result(handle))
            if ready:
                self.show()

    def fail_unclaimed(self) -> None:
        """Recover trials whose driver died between ``ask`` and its first heartbeat (Optuna's check skips them).

        A trial is claimed (``spec_key``) right after its first heartbeat is recorded, within milliseconds of
        its ask; one seen RUNNING unclaimed for longer than ``grace_period`` has no driver, and is failed
        ``interrupted`` and queued again as a stale trial is.
        """
        callback = self.ledger.storage.get_heartbeat_stale_trial_callback()
        for number in list(self.ledger.unclaimed):
            waited = self.ledger.unclaimed_for(number)
            if number in self.mine or waited <= self.config.grace_period:
                continue
            trial_id = self.ledger.trial_id(number)
            try:
                self.ledger.storage.set_trial_user_attr(trial_id, "failure_reason", INTERRUPTED)
                if not self.ledger.storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # claimed or recovered meanwhile
            self.progress.log(f"trial {number}: no heartbeat {waited:.0f} s after its ask (its driver died); recovered")
            if callback is not None:
                callback(self.study, self.ledger.fetch(number))

    def start_one(self) -> bool:
        """Ask one trial, claim its architecture; train it, wait for its twin, or answer it now."""
        trial = self.study.ask()
        if os.environ.get("NAS_TEST_KILL_AFTER_ASK"):  # test hook: a driver dying before its trial's first heartbeat
            os.kill(os.getpid(), signal.SIGKILL)
        trial_id = self.ledger.storage.get_trial_id_from_study_id_trial_number(self.ledger.study_id, trial.number)
        self.ledger.note_asked(trial.number, trial_id)
        try:
            self.heartbeat.add(trial_id)
            spec = self.space.suggest(trial).with_classes(self.num_classes)
            for name, value in {"spec_key": spec.key(), "seed": trial_seed(self.config.seed, trial.number), "driver": self.driver,
                                "failure_reason": INTERRUPTED}.items():
                trial.set_user_attr(name, value)
        except optuna.exceptions.UpdateFinishedTrialError:  # stalled past grace_period (storage down): recovered meanwhile
            self.heartbeat.remove(trial_id)
            self.progress.log(f"warning: trial {trial.number} was recovered by another driver before its claim; left to its retry")
            return False
        flight = InFlight(trial, trial_id, spec, time.monotonic(), int(trial.user_attrs.get("attempt", 0)))
        self.mine[trial.number] = flight
        self.ledger.refresh()  # sees other drivers' claims made meanwhile
        ahead = [s for s in self.ledger.running() if s.number < trial.number]
        if self.ledger.counted + len(ahead) >= self.config.n_trials:  # another driver took the last slot first
            self.close(trial.number, {"status": "failed", "failure_reason": SURPLUS}, count=False)
            return False
        return self.decide(trial.number)

    def decide(self, number: int) -> bool:
        """Answer from a finished twin, wait for a running one with a lower number, or train; True if finished now."""
        flight = self.mine[number]
        key = flight.spec.key()
        source = self.ledger.index.get(key)
        if source is not None:
            self.answer(number, self.ledger.fetch(source))
            return True
        deadline = time.monotonic() + CLAIM_WAIT_SECONDS
        while True:  # lower-numbered trials asked a moment ago and still writing their claim: wait until it is visible
            pending = [s for s in self.ledger.running()
                       if s.number < number and s.key is None and self.ledger.unclaimed_for(s.number) < CLAIM_WAIT_SECONDS]
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(0.05)
            self.ledger.refresh()
        if key in self.ledger.index:
            self.answer(number, self.ledger.fetch(self.ledger.index[key]))
            return True
        twins = [s.number for s in self.ledger.claims() if s.key == key and s.number < number]
        if twins:
            flight.winner = min(twins)
            return False
        flight.winner = None
        train = replace(self.config.train, seed=trial_seed(self.config.seed, number), threads=max(1, int(self.config.cpus_per_trial)))
        flight.handle = self.executor.submit(number, flight.spec, train)
        flight.started = time.monotonic()
        self.progress.trial_started(number, flight.spec, self.executor.where, backbone=self.is_backbone(flight))
        return False

    def is_backbone(self, flight: InFlight) -> bool:
        return flight.trial.user_attrs.get("role") == BACKBONE_ROLE

    def settle_waiters(self) -> bool:
        changed = False
        running = {s.number for s in self.ledger.claims()}
        for number, flight in list(self.mine.items()):
            if flight.handle is None and flight.winner is not None and flight.winner not in running:
                changed |= self.decide(number)
        return changed

    # -- pruning and time limits
    def relay_pruning(self) -> bool:
        for number, epoch, value in self.executor.reports():
            flight = self.mine.get(number)
            if flight is None:
                self.executor.decide(number, epoch, True)  # timed out meanwhile: stop it
                continue
            flight.trial.report(value, epoch)
            self.executor.decide(number, epoch, flight.trial.should_prune())
        for number, info in self.executor.progress_reports():
            if number in self.mine:
                self.progress.trial_progress(number, info)
        return False

    def time_to_timeout(self) -> float:
        starts = [f.started for f in self.mine.values() if f.handle is not None]
        return max(0.0, min(starts) + self.config.trial_timeout - time.monotonic()) if starts else float("inf")

    def enforce_timeouts(self) -> bool:
        now, changed = time.monotonic(), False
        for number, flight in list(self.mine.items()):
            if flight.handle is not None and now - flight.started > self.config.trial_timeout:
                self.executor.cancel(flight.handle)
                self.finish(number, {"status": "failed", "failure_reason": f"{TIMEOUT} ({self.config.trial_timeout:g} s); cancelled"})
                changed = True
        return changed

    # -- telling
    def finish(self, number: int, record: dict[str, Any]) -> None:
        status = record.get("status", "failed")
        if status == "ok":
            try:
                record["reward"] = self.reward(record["accuracy"], record["normalized_step_time"], record["normalized_params"])
            except (ValueError, KeyError) as error:
                record["status"], record["failure_reason"] = "failed", f"reward: {error}"
        if number in self.mine and "reused_from" not in record:
            self.progress.trial_finished(number, record, backbone=self.is_backbone(self.mine[number]))
        self.close(number, record)

    def close(self, number: int, record: dict[str, Any], count: bool = True) -> None:
        """Store ``record`` on this driver's trial and tell its state; a trial failed meanwhile as stale is left as is."""
        flight = self.mine.pop(number)
        self.heartbeat.remove(flight.trial_id)
        status = record.get("status", "failed")
        state = {"ok": TrialState.COMPLETE, "pruned": TrialState.PRUNED}.get(status, TrialState.FAIL)
        try:
            for name, value in record.items():
                if name != "traceback":
                    flight.trial.set_user_attr(name, json.loads(json.dumps(value, default=str)))
            if self.config.pruner != "asha" and not self.multi:  # per-epoch curve as intermediate values (asha reported them)
                report_curve(flight.trial, record.get("curve") or [])
            if state == TrialState.COMPLETE:
                values = [record["accuracy"], record["normalized_step_time"], record["normalized_params"]] if self.multi else record["reward"]
                if self.is_backbone(flight):  # the yardstick's objective value is kept out: it is never "best" (its
                    values = BACKBONE_VALUES if self.multi else BACKBONE_VALUES[0]  # metrics stay in its user attributes)
                self.study.tell(flight.trial, values)
            else:
                self.study.tell(flight.trial, state=state)
        except optuna.exceptions.UpdateFinishedTrialError:
            self.progress.log(f"warning: trial {number} was recovered by another driver (heartbeat too late); its result is dropped")
            return
        if "worker_lost" in record:  # not the trial's fault: recovered like a dead driver's trial
            self.progress.log(f"trial {number}: its worker was lost ({record['worker_lost'][:120]}); queued again")
            callback = self.ledger.storage.get_heartbeat_stale_trial_callback()
            if callback is not None:
                callback(self.study, self.ledger.fetch(number))
            count = False
        self.new_done += count
        key = record.get("spec_key", flight.spec.key())
        reward = record.get("reward") if state == TrialState.COMPLETE else None
        self.ledger.absorb(Seen(number, state, key, record.get("failure_reason"), flight.attempt, flight.trial.user_attrs.get("role"), reward))

    def release(self, requeue: Callable[[optuna.Study, optuna.trial.FrozenTrial], None]) -> None:
        """Interrupted: store this driver's in-flight trials FAIL ``interrupted`` and queue them again, as a stale trial is."""
        for number, flight in list(self.mine.items()):
            self.heartbeat.remove(flight.trial_id)
            try:
                self.study.tell(flight.trial, state=TrialState.FAIL)  # its failure_reason says interrupted since the ask
                requeue(self.study, self.ledger.fetch(number))
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # recovered by another driver already
            except Exception as error:  # storage gone too: the trial goes stale and the next driver recovers it
                self.progress.log(f"warning: trial {number} left for recovery after the grace period: {type(error).__name__}")
        self.mine.clear()

    def answer(self, number: int, source: optuna.trial.FrozenTrial) -> None:
        """Finish ``number`` with the record of ``source``, a finished trial of the same architecture."""
        record = {k: v for k, v in source.user_attrs.items() if k not in NOT_COPIED}
        record["reused_from"] = source.number
        self.progress.trial_reused(number, source.number)
        record["status"] = {TrialState.COMPLETE: "ok", TrialState.PRUNED: "pruned"}.get(source.state, "failed")
        self.finish(number, record)

    def show(self) -> None:
        c = self.ledger.counts
        running = len({s.number for s in self.ledger.running()} | set(self.mine))  # the backbone and this driver's trials too
        self.progress.update(self.ledger.counted, running, c["failed"], c["pruned"], self.ledger.best, self.new_done)
        if time.monotonic() >= self.next_figures:
            refresh_figures(self.study, only_if_changed=True)  # never raises
            self.next_figures = time.monotonic() + FIGURE_SECONDS
