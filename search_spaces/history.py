"""What the history-driven samplers (``rl``, ``evolution``) share: reading the study, choices, seeded RNGs.

Both samplers keep no state of their own between trials: every proposal is a pure function of
(seed, trial number, the study's finished trials), so a driver killed and restarted, or a second
process loading the study, proposes exactly what an uninterrupted one would have.

    >>> choices_of(optuna.distributions.IntDistribution(1, 3))
    (1, 2, 3)
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np
import optuna

from nas.errors import InputError
from nas.record import record_of

TrialState = optuna.trial.TrialState
Distribution = optuna.distributions.BaseDistribution


MAX_CHOICES = 10_000  # a grid larger than this is sampled as a range, not as a list of choices


def choices_of(distribution: Distribution) -> tuple[Any, ...] | None:
    """The finite choice list of a categorical distribution or a linear grid (int, or float with ``step``).

    None for anything else (continuous or log-scaled ranges, grids over ``MAX_CHOICES`` points).
    """
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return tuple(distribution.choices)
    numeric = (optuna.distributions.IntDistribution, optuna.distributions.FloatDistribution)
    if not isinstance(distribution, numeric) or distribution.log:
        return None
    step = distribution.step
    if isinstance(distribution, optuna.distributions.IntDistribution):
        count = (distribution.high - distribution.low) // distribution.step + 1
        return tuple(range(distribution.low, distribution.high + 1, distribution.step)) if count <= MAX_CHOICES else None
    if step is not None:  # a float grid
        count = int(round((distribution.high - distribution.low) / step)) + 1  # Optuna adjusts high onto the grid
        return tuple(_on_grid(distribution, i) for i in range(count)) if count <= MAX_CHOICES else None
    return None


def _on_grid(distribution: Distribution, index: int) -> float:
    """The ``index``-th point ``low + index * step`` of a float grid, as a Python float kept inside [low, high]."""
    return float(min(distribution.high, max(distribution.low, distribution.low + index * distribution.step)))


def trial_reward(trial: optuna.trial.FrozenTrial, directions: list[optuna.study.StudyDirection]) -> float | None:
    """The quantity to maximize: the ``reward`` attribute, else a single objective value (sign by direction).

    The backbone yardstick (``role = "backbone"``) and trials without a finite reward give None.
    """
    record = record_of(trial)
    if record.is_backbone:
        return None
    value = record.reward
    if value is None and trial.values is not None and len(trial.values) == 1:
        value = trial.values[0] if directions[0] == optuna.study.StudyDirection.MAXIMIZE else -trial.values[0]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return None
    return float(value)


def scored_history(study: optuna.Study) -> list[tuple[optuna.trial.FrozenTrial, float]]:
    """COMPLETE trials with a reward, in trial-number order (the order the samplers replay them in)."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    directions = study.directions
    scored = [(t, trial_reward(t, directions)) for t in sorted(trials, key=lambda t: t.number)]
    return [(t, r) for t, r in scored if r is not None]


def check_seed(seed: int | None) -> int:
    """A fixed integer seed; None draws one once (so the sampler is still consistent within a process)."""
    if seed is None:
        return int(np.random.SeedSequence().entropy % 2**63)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise InputError(f"seed: {seed!r} is not allowed, allowed an integer")
    return seed % 2**63  # numpy seeds are non-negative


def rng_for(seed: int, number: int, name: str = "") -> np.random.Generator:
    """A generator that depends only on (seed, trial number, parameter name): stable across processes."""
    return np.random.default_rng([seed, number, zlib.crc32(name.encode())])


def random_value(distribution: Distribution, rng: np.random.Generator) -> Any:
    """A draw from ``distribution`` with a Python type, inside it: uniform over choices or grids, log-uniform on log scales."""
    choices = choices_of(distribution)
    if choices is not None:
        return choices[int(rng.integers(len(choices)))]
    low, high = distribution.low, distribution.high
    if isinstance(distribution, optuna.distributions.FloatDistribution):
        if distribution.step is not None:  # a grid too large to list
            return _on_grid(distribution, int(rng.integers(int(round((high - low) / distribution.step)) + 1)))
        value = math.exp(rng.uniform(math.log(low), math.log(high))) if distribution.log else rng.uniform(low, high)
        return float(min(high, max(low, value)))
    if isinstance(distribution, optuna.distributions.IntDistribution):
        if distribution.log:
            value = int(round(math.exp(rng.uniform(math.log(low - 0.5), math.log(high + 0.5)))))  # each integer its log-width
            return int(min(high, max(low, value)))
        return int(low + distribution.step * int(rng.integers((high - low) // distribution.step + 1)))
    raise ValueError(f"unsupported distribution {distribution!r}")


class HistorySampler(optuna.samplers.BaseSampler):
    """Base class: a proposal per trial computed once from the study's history, cached until the trial ends."""

    def __init__(self, seed: int | None = None) -> None:
        self.seed = check_seed(seed)
        self._proposals: dict[tuple[str, int], dict[str, Any]] = {}
        self._spaces: dict[str, optuna.search_space.IntersectionSearchSpace] = {}

    def propose(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, space: dict[str, Distribution]) -> dict[str, Any]:
        """Values for the parameters in ``space`` (subclasses); may include parameters outside it."""
        raise NotImplementedError

    def infer_relative_search_space(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict[str, Distribution]:
        # Optuna's calculator caches incrementally; the result only depends on the study's COMPLETE trials
        calculator = self._spaces.setdefault(study.study_name, optuna.search_space.IntersectionSearchSpace())
        return {name: d for name, d in calculator.calculate(study).items() if choices_of(d) is not None}

    def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                        search_space: dict[str, Distribution]) -> dict[str, Any]:
        """The proposal over the finite parameters of ``search_space``; ranges (no choice list) are drawn independently."""
        finite = {name: d for name, d in search_space.items() if choices_of(d) is not None}
        proposal = self.propose(study, trial, finite)
        self._proposals[(study.study_name, trial.number)] = proposal
        values = {name: proposal[name] for name in finite if name in proposal and _contains(finite[name], proposal[name])}
        for name, distribution in search_space.items():
            if name not in values:
                values[name] = self.independent_value(study, trial, name, distribution)
        return values

    def sample_independent(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, param_name: str,
                           param_distribution: Distribution) -> Any:
        proposal = self._proposals.get((study.study_name, trial.number), {})
        value = proposal.get(param_name)
        if value is not None and _contains(param_distribution, value):
            return value
        return self.independent_value(study, trial, param_name, param_distribution)

    def independent_value(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, param_name: str,
                          param_distribution: Distribution) -> Any:
        """A parameter the relative space did not cover: uniform by default."""
        return random_value(param_distribution, rng_for(self.seed, trial.number, param_name))

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: TrialState,
                    values: Any) -> None:
        self._proposals.pop((study.study_name, trial.number), None)


def _contains(distribution: Distribution, value: Any) -> bool:
    """Whether ``value`` is one ``distribution`` can return: a choice, or a number in range and on its grid."""
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return value in distribution.choices
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    if isinstance(distribution, optuna.distributions.IntDistribution):
        return float(value).is_integer() and distribution.low <= value <= distribution.high and \
            (distribution.log or (value - distribution.low) % distribution.step == 0)
    if isinstance(distribution, optuna.distributions.FloatDistribution):
        k = (value - distribution.low) / distribution.step if distribution.step else 0.0
        return distribution.low <= value <= distribution.high and abs(k - round(k)) < 1e-8
    return False
