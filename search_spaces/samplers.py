"""Optuna samplers by name, each seeded: ``tpe`` (multivariate), ``random``, ``qmc``, ``nsga2``, and ours:
``rl`` (a REINFORCE controller, :mod:`search_spaces.rl`) and ``evolution`` (regularized evolution,
:mod:`search_spaces.evolution`), both rebuilt from the study's trials at each proposal.

    >>> type(make_sampler("random", seed=0)).__name__
    'RandomSampler'
"""

from __future__ import annotations

import warnings

import optuna

from nas.errors import InputError
from search_spaces.evolution import RegularizedEvolutionSampler
from search_spaces.rl import ReinforceSampler

SAMPLERS = ("tpe", "random", "qmc", "nsga2", "rl", "evolution")


def make_sampler(name: str, seed: int | None = 0) -> optuna.samplers.BaseSampler:
    """A seeded Optuna sampler; ``nsga2`` is meant for multi-objective runs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=5)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "qmc":
            return optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
        if name == "rl":
            return ReinforceSampler(seed=seed)
        if name == "evolution":
            return RegularizedEvolutionSampler(seed=seed)
    raise InputError(f"sampler: unknown sampler {name!r}, allowed {', '.join(SAMPLERS)}")
