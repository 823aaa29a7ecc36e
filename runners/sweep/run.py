"""``nas search``: the sweep driver. Optuna asks, Ray trains, Optuna is told.

Design: we drive Optuna's ask/tell ourselves and use Ray core tasks as the workers (not Tune's
``OptunaSearch``). The study in the RDB storage is the only state, shared by any number of
drivers on the same study:

- **Liveness** (:mod:`runners.sweep.liveness`): each driver beats for every trial it has in flight; a
  dead driver's trial is queued again by whichever driver sees it.
- **One sweep** (:mod:`runners.sweep.driver`): every driver counts all drivers' trials toward ``n_trials``,
  and one architecture is trained once.
- **The study is the authority** (:mod:`runners.sweep.settings`): the settings that define a sweep are
  stored in the study when it is created; a later driver with other settings is refused before it writes.
- **Cheap at scale** (:mod:`runners.sweep.ledger`): counts and the architecture index are kept from the
  driver's own tells and small queries, never by re-reading the whole study on the hot path.
- **No figures here**: dashboard notes and figures read the whole study; ``nas dashboard`` keeps them
  current while a sweep runs, ``nas report`` draws its own.

(Tune saves its own experiment state only every 10 s or more: after a killed driver its restore re-runs
trials Optuna already finished, so the study alone is the state.)
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna

from nas.data import Dataset, load_dataset
from nas.errors import InputError
from nas.io import atomic_write_json
from nas.record import record_of
from runners.config import SweepConfig
from runners.credentials import mask_url, private_dir
from runners.preflight import check_resources, check_sweep
from runners.ray_cluster import init_ray
from runners.study import backbone_trial, best_scored, check_run_storage, quiet_optuna, rdb_storage, retried, sweep_counts
from runners.sweep.driver import Driver
from runners.sweep.executors import Evaluate, LocalExecutor, RayExecutor, as_task
from runners.sweep.ledger import Ledger
from runners.sweep.liveness import Heartbeat, requeue_stale
from runners.sweep.progress import Progress
from runners.sweep.settings import adopt_driver_settings, ensure_backbone_trial, open_study, search_settings
from runners.yardstick import against_backbone
from search_spaces import SearchSpace

Reward = Callable[[float, float, float], float]


def run_sweep(config: SweepConfig, evaluate: Evaluate | None = None, *, dataset: Dataset | None = None,
              reward: Reward | None = None, evaluate_on_ray: bool = False) -> dict[str, Any]:
    """Run (or resume, or join) the sweep described by ``config``; returns a summary dict.

    ``dataset`` (the Python API's user data) replaces loading ``config.data``, which then names it;
    ``reward`` (a function of A, S, P) replaces ``config.reward``'s, which then names it (``custom``).

    ``evaluate`` replaces the Ray workers by an in-process function ``(spec, train_config) -> record``
    (a :class:`~nas.record.TrialRecord` as :func:`nas.evaluate.evaluate_candidate` returns it); Ray is then not started,
    unless ``evaluate_on_ray``: then ``evaluate`` is the Ray task in place of training. It exists to measure the driver
    itself (``bench/bench_driver.py``), alone or with Ray's round trips.
    """
    quiet_optuna()
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")  # we beat ourselves
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    begin = time.monotonic()
    check_sweep(config)  # paths, storage, address, resources, memory: before anything is created
    check_run_storage(config)  # a run directory's study stays where it is
    dataset = dataset if dataset is not None else load_dataset(config.data)  # bad data paths fail here, before Ray starts
    space = SearchSpace.from_config(config.space or {}, backbone=config.backbone)
    progress = Progress(config.n_trials, config.quiet, config.max_concurrent)
    recovered, name = [0], _driver_name()
    config, study, storage = _open(config, dataset, space, progress, recovered=recovered, driver=name)
    executor, started_ray = _executor(config, dataset, space.backbone.with_classes(dataset.num_classes), evaluate, on_ray=evaluate_on_ray)
    startup_seconds = time.monotonic() - begin  # data, study, Ray start: before the first trial
    heartbeat = Heartbeat(storage, config.heartbeat_interval, progress.log)
    driver = Driver(config, study, Ledger(study, storage, config.max_retries), heartbeat, executor, space,
                    dataset.num_classes, progress, name, reward=reward)
    try:
        driver.loop()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: hand this driver's trials over now rather than after the grace period
        driver.release(requeue_stale(config.max_retries, [0]))
        raise
    finally:
        heartbeat.close()
        if started_ray:
            import ray

            ray.shutdown()
    return _summary(config, study, driver.new_done, recovered=recovered[0], begin=begin, startup_seconds=startup_seconds)


def _driver_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


def _open(config: SweepConfig, dataset: Any, space: SearchSpace, progress: Progress, *,
          recovered: list[int], driver: str) -> tuple[SweepConfig, optuna.Study, optuna.storages.RDBStorage]:
    """Open (or create) the study, adopt its driver settings, recover what dead drivers left; (config, study, storage)."""
    backbone = space.backbone.with_classes(dataset.num_classes)
    settings = search_settings(config, backbone, space, dataset)
    if config.storage is None:
        private_dir(config.run_dir)  # the default SQLite study lives there
    storage = _open_storage(config, requeue_stale(config.max_retries, recovered))
    storage.on_retry = progress.log
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
        progress.backbone_reward = record_of(known).reward if known is not None else None
    return config, study, storage


def _executor(config: SweepConfig, dataset: Any, backbone: Any, evaluate: Evaluate | None, *,
              on_ray: bool = False) -> tuple[RayExecutor | LocalExecutor, bool]:
    """Ray workers (started or joined here; True when we started Ray), or ``evaluate`` in this process (or on Ray)."""
    if evaluate is not None and not on_ray:
        return LocalExecutor(evaluate), False
    started_ray = init_ray(config)
    import ray  # heavy: only when trials train

    try:
        check_resources(config, ray.nodes())  # a request no node can satisfy would wait forever
    except InputError:
        if started_ray:
            ray.shutdown()
        raise
    return RayExecutor(config, dataset, backbone, task=as_task(evaluate) if evaluate is not None else None), started_ray


def _summary(config: SweepConfig, study: optuna.Study, new_done: int, *, recovered: int, begin: float,
             startup_seconds: float) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    counts = sweep_counts(trials)
    best = best_scored(study)  # by reward, also in multi-objective runs (reward is stored there too)
    record = record_of(best) if best else None
    return {"run_dir": str(config.run_dir), "study": config.name, "storage": mask_url(config.storage_url), **counts,
            "trials_this_run": new_done, "best_trial": best.number if best else None,
            "best_reward": record.reward if record else None, "best_spec_key": record.spec_key if record else None,
            "best_metrics": {**record.metrics(), "reward": record.reward} if record else None,
            "against_backbone": against_backbone(study, best) if best else None,
            "wall_seconds": time.monotonic() - begin, "startup_seconds": startup_seconds, "recovered": recovered}


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


def _write_run_config(config: SweepConfig) -> None:
    private_dir(config.run_dir)  # 0700, and owner-only files from here on
    atomic_write_json(config.run_dir / "config.json", json.loads(json.dumps(config.to_dict())))
