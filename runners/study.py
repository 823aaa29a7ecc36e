"""Reading a sweep back: open a run directory's study, and turn trials into records and tables.

Used by ``nas rescore``, ``export``, ``report`` and ``dashboard``; nothing here trains.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from nas.errors import InputError
from nas.spec import NetworkSpec
from runners.config import SweepConfig, config_from_dict

RAW_METRICS = ("accuracy", "normalized_step_time", "normalized_params", "step_time_ms", "params")


def quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna").setLevel(logging.WARNING)


def rdb_storage(url: str) -> optuna.storages.RDBStorage:
    """An RDB storage; SQLite gets a long busy timeout since several processes write to it."""
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=None)
    except Exception as error:
        raise InputError(f"storage: cannot open {url!r}: {str(error).splitlines()[0]}") from None


@dataclass
class Run:
    """A finished or running sweep: its directory, resolved config and Optuna study."""

    path: Path
    config: SweepConfig
    study: optuna.Study

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
        raise InputError(f"trial: no trial number {number} in {self.path} (it has 0..{len(self.study.trials) - 1})")


def open_run(run_dir: str | Path) -> Run:
    """Open ``run_dir`` (made by ``nas search``); a missing or foreign directory is an InputError."""
    quiet_optuna()
    path = Path(run_dir)
    config_file = path / "config.json"
    if not path.is_dir():
        raise InputError(f"run directory: {str(path)!r} does not exist")
    if not config_file.is_file():
        raise InputError(f"run directory: {str(path)!r} holds no config.json (not made by `nas search`)")
    try:
        config = config_from_dict(json.loads(config_file.read_text()))
    except (json.JSONDecodeError, TypeError, KeyError) as error:
        raise InputError(f"run directory: {config_file} is unreadable ({error})") from None
    storage = rdb_storage(config.storage_url if config.storage else f"sqlite:///{(path / 'study.db').resolve()}")
    try:
        study = optuna.load_study(study_name=config.name, storage=storage)
    except KeyError:
        raise InputError(f"run directory: the study {config.name!r} is not in its storage") from None
    return Run(path, config, study)


BACKBONE_ROLE = "backbone"  # user attribute ``role`` of the yardstick trial (runners.yardstick)


def backbone_numbers(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    """Numbers of the backbone trials: ``role = "backbone"``, and retries of them (``retry_of``) after a kill."""
    numbers = {t.number for t in trials if t.user_attrs.get("role") == BACKBONE_ROLE}
    retries = {t.number: t.user_attrs.get("retry_of") for t in trials if "retry_of" in t.user_attrs}
    grown = True
    while grown:  # a retry of a retry of the backbone is the backbone too
        more = {n for n, source in retries.items() if source in numbers} - numbers
        numbers |= more
        grown = bool(more)
    return numbers


def _has_metrics(trial: optuna.trial.FrozenTrial) -> bool:
    return "reward" in trial.user_attrs and "normalized_step_time" in trial.user_attrs


def scored_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Finished search trials with a reward and raw metrics: not failed, pruned, running, nor the backbone yardstick."""
    trials = study.get_trials(deepcopy=False)
    backbone = backbone_numbers(trials)
    return [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and _has_metrics(t) and t.number not in backbone]


def backbone_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The finished backbone yardstick trial with its metrics (the latest if several), or None."""
    trials = study.get_trials(deepcopy=False)
    backbone = backbone_numbers(trials)
    done = [t for t in trials if t.number in backbone and t.state == optuna.trial.TrialState.COMPLETE and _has_metrics(t)]
    return done[-1] if done else None


def best_scored(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The scored trial with the highest reward (lowest number on ties); None before any finishes."""
    trials = scored_trials(study)
    return max(trials, key=lambda t: (t.user_attrs["reward"], -t.number)) if trials else None


def trial_spec(trial: optuna.trial.FrozenTrial) -> NetworkSpec:
    return NetworkSpec.from_dict(trial.user_attrs["spec"])


def raw_metrics(trial: optuna.trial.FrozenTrial) -> dict[str, float]:
    return {key: trial.user_attrs[key] for key in RAW_METRICS if key in trial.user_attrs}


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
