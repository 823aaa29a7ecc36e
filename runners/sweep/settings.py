"""The study as the authority: the settings that define a sweep, stored when it is created and checked by every later driver.

A later driver with other search settings is refused before it writes anything; the driver settings
(``n_trials``, ``max_retries``, ``heartbeat_interval``, ``grace_period``, ``trial_timeout``) are adopted
from the study, so every driver of one sweep works with the same values.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import optuna

from nas.errors import InputError
from nas.record import BACKBONE_ROLE, DIRECTIONS, METRICS, REWARD, attrs, record_of
from nas.spec import NetworkSpec
from runners.config import SweepConfig
from runners.study import backbone_numbers
from runners.sweep.worker import asha_pruner
from search_spaces import SearchSpace, make_sampler

TrialState = optuna.trial.TrialState
DRIVER_SETTINGS = ("n_trials", "max_retries", "heartbeat_interval", "grace_period", "trial_timeout")  # stored; later drivers adopt them
SEARCH_SETTINGS = ("data", "backbone", "space", "reward", "objective", "pruner", "train", "timing")


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
                                    directions=list(DIRECTIONS) if multi else [DIRECTIONS[0]], pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError:  # exactly one driver creates it; the others load it
        pass
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(METRICS) if multi else [REWARD])
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
    while stored is None and time.monotonic() < deadline and all(record_of(t).is_backbone
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



def ensure_backbone_trial(study: optuna.Study, space: SearchSpace) -> bool:
    """Enqueue the backbone once per study (idempotent on resume and across drivers); True when enqueued now.

    A backbone trial that is waiting, running, finished or truly failed counts as present; one a
    killed driver left interrupted is present through its retry (``retry_of``).
    """
    trials = study.get_trials(deepcopy=False)
    numbers = backbone_numbers(trials)
    alive = [t for t in trials if t.number in numbers and not (t.state == TrialState.FAIL and record_of(t).interrupted)]
    params = space.params_for(space.backbone)
    if alive or params is None:
        return False
    study.enqueue_trial(params, user_attrs=attrs(role=BACKBONE_ROLE), skip_if_exists=False)
    return True
