"""``nas search``: the sweep driver. Optuna asks, Ray trains, Optuna is told.

Design: we drive Optuna's ask/tell ourselves and use Ray core tasks as the workers (not Tune's
``OptunaSearch``). The study in the RDB storage is then the only state: resume after a SIGKILL
is "mark the dead RUNNING trials FAIL, enqueue them again, continue"; failed and pruned trials
get their true states; duplicates are answered from the stored record. (Tune keeps a second
state that lags Optuna's by seconds and cannot restore after a kill: see FINDINGS.md.)
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import warnings
from typing import Any

import optuna

from nas.data import load_dataset
from nas.errors import InputError
from nas.io import atomic_write_json
from nas.spec import NetworkSpec
from runners.config import SweepConfig
from runners.dashboard import refresh_figures
from runners.study import backbone_numbers, best_scored, quiet_optuna, rdb_storage, scored_trials
from runners.worker import asha_pruner, evaluate_trial, trial_seed
from runners.yardstick import ensure_backbone_trial
from search_spaces import SearchSpace, make_sampler

INTERRUPTED = "interrupted: the sweep driver stopped while this trial ran"
# config fields that may change between a run and its resume; anything else must match
RESUMABLE = {"n_trials", "max_concurrent", "quiet", "address", "ray_tmpdir", "ray_dashboard", "cpus_per_trial", "gpus_per_trial"}
TrialState = optuna.trial.TrialState


# ---- the driver side -------------------------------------------------------------------------
class Progress:
    """One stderr line per event: done / running / failed, best so far, ETA."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.quiet, self.begin = total, quiet, time.monotonic()

    def log(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def update(self, done: int, running: int, failed: int, pruned: int, best: optuna.trial.FrozenTrial | None,
               new_done: int) -> None:
        if self.quiet:
            return
        elapsed = time.monotonic() - self.begin
        remaining = self.total - done
        eta = f"{elapsed / new_done * remaining:.0f}s" if new_done and remaining else ("0s" if not remaining else "?")
        best_text = f"best reward {best.user_attrs['reward']:.4f} ({best.user_attrs['spec_key']})" if best else "best reward -"
        self.log(f"[{done}/{self.total} done, {running} running, {failed} failed, {pruned} pruned] {best_text}  "
                 f"elapsed {elapsed:.0f}s  ETA {eta}")


def _check_address(address: str) -> None:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=10):
            pass
    except OSError as error:
        raise InputError(f"address: cannot reach the Ray cluster at {address} ({error.strerror or error})") from None


def init_ray(config: SweepConfig) -> bool:
    """Start Ray in-process (or join ``config.address``); returns True when we started it."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token warning, no ~/.ray/auth_token
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if config.ray_tmpdir:
        os.environ["RAY_TMPDIR"] = str(config.ray_tmpdir)
    import ray

    if ray.is_initialized():
        return False
    if config.address and config.address != "auto":
        _check_address(config.address)
    kwargs: dict[str, Any] = dict(include_dashboard=config.ray_dashboard, log_to_driver=False, logging_level="WARNING")
    if config.address:
        ray.init(address=config.address, **kwargs)
    else:
        ray.init(num_cpus=os.cpu_count(), **kwargs)
    return True


def _prepare_run_dir(config: SweepConfig) -> None:
    config.run_dir.mkdir(parents=True, exist_ok=True)
    stored_file = config.run_dir / "config.json"
    current = json.loads(json.dumps(config.to_dict()))
    if stored_file.is_file():
        stored = json.loads(stored_file.read_text())
        changed = sorted(k for k in current if k not in RESUMABLE and stored.get(k) != current[k])
        if changed:
            raise InputError(f"run directory {config.run_dir} holds a sweep with another {', '.join(changed)}; "
                             f"use another --name to start a new sweep")
    atomic_write_json(stored_file, current)


def recover_interrupted(study: optuna.Study) -> int:
    """Trials a dead driver left RUNNING: mark them FAIL and enqueue their parameters again."""
    count = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(trial._trial_id, "failure_reason", INTERRUPTED)
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        count += 1
    return count


def _counts(study: optuna.Study) -> dict[str, int]:
    trials = study.get_trials(deepcopy=False)
    trials = [t for t in trials if t.number not in backbone_numbers(trials)]
    failed_real = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("failure_reason") != INTERRUPTED]
    return {
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "failed": len(failed_real),
        "interrupted": sum(t.state == TrialState.FAIL and t.user_attrs.get("failure_reason") == INTERRUPTED for t in trials),
    }


def run_sweep(config: SweepConfig) -> dict[str, Any]:
    """Run (or resume) the sweep described by ``config``; returns a summary dict."""
    quiet_optuna()
    begin = time.monotonic()
    dataset = load_dataset(config.data)  # bad data paths fail here, before Ray starts
    space = SearchSpace.from_config(config.space or {}, backbone=config.backbone)
    backbone = space.backbone.with_classes(dataset.num_classes)
    reward = config.reward_function()
    multi = config.objective == "multi"
    _prepare_run_dir(config)
    storage = rdb_storage(config.storage_url)

    existing = len(optuna.load_study(study_name=config.name, storage=storage).trials) if _study_exists(storage, config.name) else 0
    study = optuna.create_study(
        study_name=config.name, storage=storage, load_if_exists=True,
        # a resumed sweep re-seeds its sampler, so it does not replay the first run's proposals
        sampler=make_sampler(config.sampler, seed=config.seed + existing),
        directions=["maximize", "minimize", "minimize"] if multi else ["maximize"],
        pruner=asha_pruner() if config.pruner == "asha" else None,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["accuracy", "normalized_step_time", "normalized_params"] if multi else ["reward"])
    for key, value in {"config": config.to_dict(), "backbone": backbone.to_dict(), "space": space.describe(),
                       "reward": config.reward, "objective": config.objective, "data": config.data}.items():
        study.set_user_attr(key, json.loads(json.dumps(value)))
    progress = Progress(config.n_trials, config.quiet)
    recovered = recover_interrupted(study)
    if recovered:
        progress.log(f"resuming {config.name}: {recovered} interrupted trial(s) marked failed and queued again")
    ensure_backbone_trial(study, space)  # the yardstick: evaluated first, never counted toward n_trials

    started_ray = init_ray(config)
    import ray

    startup_seconds = time.monotonic() - begin  # data, study, Ray start: before the first trial

    try:
        dataset_ref = ray.put(dataset)
        remote = ray.remote(evaluate_trial).options(num_cpus=config.cpus_per_trial, num_gpus=config.gpus_per_trial, max_retries=0)
        config_json, backbone_json = json.loads(json.dumps(config.to_dict())), backbone.to_dict()
        in_flight: dict[Any, optuna.Trial] = {}
        new_done, changed = 0, False
        while True:
            counts = _counts(study)
            finished = counts["complete"] + counts["pruned"] + counts["failed"]
            while len(in_flight) < config.max_concurrent and finished + len(in_flight) < config.n_trials:
                trial = study.ask()
                spec = space.suggest(trial).with_classes(dataset.num_classes)
                seed = trial_seed(config.seed, trial.number)
                trial.set_user_attr("spec_key", spec.key())
                trial.set_user_attr("seed", seed)
                if _reuse_duplicate(study, trial, spec, multi, config):
                    finished += 1
                    new_done += 1
                    continue
                prune = {"study": config.name, "storage": config.storage_url, "trial_id": trial._trial_id} if config.pruner == "asha" else None
                ref = remote.remote(spec.to_dict(), dataset_ref, config_json, backbone_json, seed, prune, config.gpus_per_trial > 0,
                                    str(config.run_dir.resolve()))
                in_flight[ref] = trial
            if changed:  # after the refill, so "running" counts the trials just started
                counts = _counts(study)
                progress.update(counts["complete"] + counts["pruned"] + counts["failed"], len(in_flight), counts["failed"],
                                counts["pruned"], best_scored(study), new_done)
                changed = False
            if not in_flight:
                break
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=30)
            for ref in ready:
                trial = in_flight.pop(ref)
                try:
                    record = ray.get(ref)
                except Exception as error:  # a worker that died (OOM-killed, node lost)
                    record = {"status": "failed", "failure_reason": f"worker lost: {type(error).__name__}: {str(error)[:300]}"}
                _tell(study, trial, record, reward, multi, config)
                new_done, changed = new_done + 1, True
                if new_done % 4 == 0:
                    refresh_figures(study)  # dashboard figures; never raises
    finally:
        if started_ray:
            ray.shutdown()
    refresh_figures(study)
    best = best_scored(study)  # by reward, also in multi-objective runs (reward is stored there too)
    return {"run_dir": str(config.run_dir), "study": config.name, "storage": config.storage_url, **_counts(study),
            "trials_this_run": new_done, "best_trial": best.number if best else None,
            "best_reward": best.user_attrs["reward"] if best else None, "best_spec_key": best.user_attrs["spec_key"] if best else None,
            "wall_seconds": time.monotonic() - begin, "startup_seconds": startup_seconds}


def _annotate(study: optuna.Study, trial: optuna.Trial, config: SweepConfig) -> None:
    """Dashboard note and spec artifact for a trial about to complete; never breaks the sweep."""
    try:
        from runners.dashboard import annotate_trial

        annotate_trial(study, trial, config.run_dir, config.reward)
    except Exception as error:
        print(f"warning: dashboard note for trial {trial.number} not written: {error}", file=sys.stderr)


def _study_exists(storage: optuna.storages.BaseStorage, name: str) -> bool:
    return any(s.study_name == name for s in storage.get_all_studies())


def _values(record: dict[str, Any], reward_value: float, multi: bool) -> list[float]:
    if multi:
        return [record["accuracy"], record["normalized_step_time"], record["normalized_params"]]
    return [reward_value]


def _reuse_duplicate(study: optuna.Study, trial: optuna.Trial, spec: NetworkSpec, multi: bool, config: SweepConfig) -> bool:
    """Answer ``trial`` from a finished trial with the same architecture, without training."""
    key = spec.key()
    for done in scored_trials(study):  # never the backbone yardstick
        if done.user_attrs.get("spec_key") == key and "reward" in done.user_attrs and done.number != trial.number:
            for name, value in done.user_attrs.items():
                if name not in ("seed", "reused_from", "retry_of"):
                    trial.set_user_attr(name, value)
            trial.set_user_attr("reused_from", done.number)
            _annotate(study, trial, config)
            study.tell(trial, done.values if multi else done.value)
            return True
    return False


def _tell(study: optuna.Study, trial: optuna.Trial, record: dict[str, Any], reward, multi: bool, config: SweepConfig) -> None:
    status = record.get("status", "failed")
    if status == "ok":
        try:
            record["reward"] = reward(record["accuracy"], record["normalized_step_time"], record["normalized_params"])
        except (ValueError, KeyError) as error:
            status, record["status"], record["failure_reason"] = "failed", "failed", f"reward: {error}"
    for name, value in record.items():
        if name != "traceback":
            trial.set_user_attr(name, json.loads(json.dumps(value, default=str)))
    if status == "ok":
        _annotate(study, trial, config)
        study.tell(trial, _values(record, record["reward"], multi))
    elif status == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, state=TrialState.FAIL)
