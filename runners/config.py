"""Sweep configuration: a config file (YAML / TOML / JSON) with flags on top, resolved into one frozen object.

    >>> cfg = resolve_config(None, {"name": "demo", "n_trials": 4})
    >>> cfg.n_trials, cfg.train.epochs
    (4, 3)
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from nas.configs import TimingConfig, TrainConfig
from nas.errors import InputError, check_ints, check_number
from nas.io import load_config_file
from rewards import DEFAULT_OPTIONS, REWARD_OPTIONS
from runners.credentials import mask_url, remember_secret
from runners.preflight import check_reward
from search_spaces import SAMPLERS

OBJECTIVES = ("reward", "multi")
CUSTOM_REWARD = "custom"  # a reward function given to the Python API (runners.api.search), recorded by name
PRUNERS = ("none", "asha")

# the embedded default: finishes on a 2-core CPU in a few minutes (README quickstart)
DEFAULT_TRAIN = TrainConfig(epochs=3, image_size=32, batch_size=64)
DEFAULT_TIMING = TimingConfig(batch_size=16, image_size=64, warmup=2, steps=5)


def default_layout(cpus: int | None = None, max_concurrent: Any = None, cpus_per_trial: Any = None,
                   gpus_per_trial: Any = 0, gpus: int | None = None) -> tuple[int, float]:
    """(max_concurrent, cpus_per_trial) for a machine; a value given is kept and the other derived from it.

    CPU: up to 4 trials of at least two threads each, the cores split evenly (2 cores: 1 x 2; 16: 4 x 4).
    On an idle 2-core machine one 2-thread trial at a time finished the same 9 candidates in 146 s
    against 159 s for 2 x 1 (bench/bench_sweep.py, bench/RESULTS.md): a small net's step scales to 2
    threads almost perfectly, while side-by-side trials wait for each other's exclusive timing; more
    than 4 at once lose more to that than they gain. GPU: one trial per ``gpus_per_trial`` of the GPUs.

        >>> default_layout(2), default_layout(8), default_layout(16), default_layout(2, cpus_per_trial=1)
        ((1, 2.0), (4, 2.0), (4, 4.0), (2, 1))
    """
    cpus = max(1, cpus or os.cpu_count() or 1)
    usable = isinstance(gpus_per_trial, (int, float)) and gpus_per_trial > 0
    given_cpus = isinstance(cpus_per_trial, (int, float)) and not isinstance(cpus_per_trial, bool) and cpus_per_trial > 0
    if max_concurrent is None:  # a value given (even a bad one, which validation then names) is kept
        if given_cpus:
            max_concurrent = max(1, min(4, int(cpus // cpus_per_trial)))
        elif usable:
            if gpus is None:
                import torch  # only here: reading a config must not pay torch's import

                gpus = torch.cuda.device_count()
            max_concurrent = max(1, int(gpus // gpus_per_trial))
        else:
            max_concurrent = max(1, min(4, cpus // 2))
    if cpus_per_trial is None:
        share = max_concurrent if isinstance(max_concurrent, int) and not isinstance(max_concurrent, bool) and max_concurrent > 0 else 1
        cpus_per_trial = float(max(1, cpus // share))
    return max_concurrent, cpus_per_trial


@dataclass(frozen=True)
class SweepConfig:
    """Everything a sweep needs; stored resolved in the run directory as ``config.json``."""

    name: str = "default"
    runs_dir: str = "runs"
    data: str = "digits"
    backbone: str = "efficientnetv2-b0"
    space: dict[str, Any] = field(default_factory=dict)
    n_trials: int = 8
    max_concurrent: int = field(default_factory=lambda: default_layout()[0])
    cpus_per_trial: float = field(default_factory=lambda: default_layout()[1])
    gpus_per_trial: float = 0.0
    sampler: str = "tpe"
    seed: int = 0
    objective: str = "reward"
    reward: dict[str, Any] = field(default_factory=lambda: {"name": "paper", **DEFAULT_OPTIONS["paper"]})
    pruner: str = "none"
    storage: str | None = field(default=None, repr=False)  # may hold a password: never in a repr
    address: str | None = None
    ray_tmpdir: str | None = None
    ray_dashboard: bool = False
    quiet: bool = False
    heartbeat_interval: int = 30  # seconds between the driver's liveness beats for its running trials
    grace_period: int = 120  # a RUNNING trial whose last beat is older than this is recovered
    max_retries: int = 1  # times a recovered (interrupted) trial is queued again
    trial_timeout: float = 21600.0  # seconds; a trial running longer is cancelled and stored FAIL "timeout"
    train: TrainConfig = DEFAULT_TRAIN
    timing: TimingConfig = DEFAULT_TIMING

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,80}", self.name):
            raise InputError(f"name: {self.name!r} is not allowed, allowed letters, digits, '_', '.', '-'")
        check_ints(self, (("n_trials", 1), ("max_concurrent", 1), ("heartbeat_interval", 1), ("grace_period", 1), ("max_retries", 0)))
        if self.grace_period <= self.heartbeat_interval:
            raise InputError(f"grace_period: {self.grace_period} is not allowed, allowed a number of seconds > heartbeat_interval "
                             f"({self.heartbeat_interval})")
        check_number("trial_timeout", self.trial_timeout, low=0, low_open=True, high=1e9, note=" (seconds)")
        check_number("cpus_per_trial", self.cpus_per_trial, low=0, low_open=True)
        check_number("gpus_per_trial", self.gpus_per_trial, low=0, high=8, note=" (fractions share a GPU)")
        check_number("seed", self.seed, integer=True)
        if self.sampler not in SAMPLERS:
            raise InputError(f"sampler: {self.sampler!r} is not allowed, allowed {', '.join(SAMPLERS)}")
        if self.objective not in OBJECTIVES:
            raise InputError(f"objective: {self.objective!r} is not allowed, allowed {', '.join(OBJECTIVES)}")
        if self.pruner not in PRUNERS:
            raise InputError(f"pruner: {self.pruner!r} is not allowed, allowed {', '.join(PRUNERS)}")
        if not isinstance(self.reward, dict) or "name" not in self.reward:
            raise InputError("reward: expected a mapping with a 'name' (paper, constrained, accuracy) and its options")
        if self.reward["name"] == CUSTOM_REWARD:  # a Python function given to runners.api.search: its name is recorded
            if set(self.reward) != {"name", "function"} or not isinstance(self.reward["function"], str):
                raise InputError("reward: custom takes only 'function' (the function's module.name), allowed {name: custom, function: NAME}")
        else:
            self.reward_function()
        if self.storage is not None:
            check_storage_url(self.storage)
            remember_secret(self.storage)
        if self.address is not None and self.address != "auto" and not re.fullmatch(r"(ray://)?[A-Za-z0-9_.-]+:\d{1,5}", self.address):
            raise InputError(f"address: {self.address!r} is not allowed, allowed HOST:PORT, ray://HOST:PORT or auto")

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.run_dir / 'study.db').resolve()}"

    def reward_function(self):
        if self.reward["name"] == CUSTOM_REWARD:
            raise InputError(f"reward: this sweep's reward is the Python function {self.reward['function']}; "
                             "run it through the Python API, allowed runners.api.search(..., reward=FUNCTION)")
        return check_reward(self.reward["name"], {k: v for k, v in self.reward.items() if k != "name"})

    def to_dict(self) -> dict[str, Any]:
        """The config as stored and shown (``config.json``, study attributes): the storage password masked."""
        data = asdict(self)
        if self.storage is not None:
            data["storage"] = mask_url(self.storage)
        return data


def check_storage_url(url: str) -> None:
    """Reject what cannot be an Optuna RDB URL (``sqlite:///``, ``postgresql://``, ``mysql://``)."""
    if not isinstance(url, str) or not re.match(r"^(sqlite|postgresql|postgres|mysql)(\+\w+)?://", url):
        shown = mask_url(url) if isinstance(url, str) else url
        raise InputError(f"storage: {shown!r} is not an RDB URL, allowed sqlite:///PATH, postgresql://..., mysql://...")
    if url.startswith("sqlite") and not url.startswith("sqlite:///"):
        raise InputError(f"storage: {mask_url(url)!r} is not allowed, allowed sqlite:///PATH (three slashes)")


_TOP = {f.name for f in fields(SweepConfig)}


def _sub(kind: type, name: str, base: Any, raw: Any) -> Any:
    if raw is None:
        return base
    if not isinstance(raw, dict):
        raise InputError(f"{name}: expected a mapping")
    known = {f.name for f in fields(kind)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InputError(f"{name}: unknown key(s) {', '.join(unknown)}, allowed {', '.join(sorted(known))}")
    try:
        return kind(**{**asdict(base), **raw})
    except TypeError as error:
        raise InputError(f"{name}: {error}") from None
    except InputError as error:
        raise InputError(f"{name}.{error}") from None


def resolve_config(path: str | None, overrides: dict[str, Any]) -> SweepConfig:
    """Config file values, then non-None ``overrides`` (flags) on top; unknown keys are errors."""
    data: dict[str, Any] = load_config_file(path, "sweep config") if path else {}
    unknown = sorted(set(data) - _TOP)
    if unknown:
        raise InputError(f"sweep config: unknown key(s) {', '.join(unknown)}, allowed {', '.join(sorted(_TOP))}")
    for key, value in overrides.items():
        if value is None:
            continue
        if key in ("train", "timing", "reward"):
            data[key] = {**(data.get(key) or {}), **value}
        else:
            data[key] = value
    if data.get("max_concurrent") is None or data.get("cpus_per_trial") is None:  # derive the layout from this machine
        data["max_concurrent"], data["cpus_per_trial"] = default_layout(None, data.get("max_concurrent"), data.get("cpus_per_trial"),
                                                                        data.get("gpus_per_trial", 0))
    data["train"] = _sub(TrainConfig, "train", DEFAULT_TRAIN, data.get("train"))
    data["timing"] = _sub(TimingConfig, "timing", DEFAULT_TIMING, data.get("timing"))
    if "reward" in data:
        reward = data["reward"]
        if isinstance(reward, str):
            reward = {"name": reward}
        if not isinstance(reward, dict):
            raise InputError("reward: expected a name or a mapping")
        name = reward.get("name", "paper")
        defaults = DEFAULT_OPTIONS.get(name, {})
        allowed = set(REWARD_OPTIONS.get(name, ())) | {"name"}
        data["reward"] = {"name": name, **defaults, **{k: v for k, v in reward.items() if k in allowed or name not in REWARD_OPTIONS}}
        extra = sorted(set(reward) - allowed) if name in REWARD_OPTIONS else []
        if extra:
            raise InputError(f"reward {name}: unknown option(s) {', '.join(extra)}, allowed {', '.join(sorted(allowed - {'name'})) or 'none'}")
    space = data.get("space")
    if space is not None and not isinstance(space, dict):
        raise InputError("space: expected a mapping (see `nas space --config`)")
    try:
        return SweepConfig(**data)
    except TypeError as error:
        raise InputError(f"sweep config: {error}") from None


def config_from_dict(data: dict[str, Any]) -> SweepConfig:
    """Rebuild a config stored in a run directory."""
    data = dict(data)
    data["train"] = TrainConfig(**data["train"])
    data["timing"] = TimingConfig(**data["timing"])
    return SweepConfig(**data)
