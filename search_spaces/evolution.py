"""Regularized evolution (Real et al. 2019, "aging evolution") as an Optuna sampler.

The population is the last ``population`` scored trials (the oldest leaves as a child arrives);
a tournament of ``sample`` members drawn from it picks the parent (highest reward); the child is
the parent with exactly one choice changed. Until the population is full, proposals are uniform.
Everything is rebuilt from the study's trials at each proposal, so resume loses nothing.

    >>> import optuna
    >>> study = optuna.create_study(direction="maximize", sampler=RegularizedEvolutionSampler(seed=0, population=4, sample=2))
    >>> study.optimize(lambda t: -abs(t.suggest_int("x", 0, 20) - 7), n_trials=40)
    >>> study.best_value
    0.0
"""

from __future__ import annotations

from typing import Any

import optuna

from nas.errors import InputError
from search_spaces.history import Distribution, HistorySampler, choices_of, random_value, rng_for, scored_history


class RegularizedEvolutionSampler(HistorySampler):
    """Aging evolution: tournament of ``sample`` from the last ``population`` trials, mutate one choice."""

    def __init__(self, seed: int | None = None, population: int = 20, sample: int = 5) -> None:
        super().__init__(seed)
        for name, value in (("population", population), ("sample", sample)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name}: {value!r} is not allowed, allowed an integer >= 1")
        if sample > population:
            raise InputError(f"sample: {sample} is not allowed, allowed at most population ({population})")
        self.population, self.sample = population, sample

    def propose(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, space: dict[str, Distribution]) -> dict[str, Any]:
        history = scored_history(study)
        rng = rng_for(self.seed, trial.number)
        if len(history) < self.population or not space:  # the initial random population
            return {name: random_value(d, rng) for name, d in space.items()}
        members = history[-self.population:]  # aging: only the youngest survive
        picked = rng.choice(len(members), size=self.sample, replace=False)
        parent = max((members[i] for i in picked), key=lambda pair: (pair[1], -pair[0].number))[0]
        child = dict(parent.params)  # parameters outside ``space`` are inherited in sample_independent
        mutable = [name for name, d in space.items() if len(choices_of(d)) > 1 and name in child]
        if mutable:
            name = mutable[int(rng.integers(len(mutable)))]
            others = [c for c in choices_of(space[name]) if c != child[name]]
            child[name] = others[int(rng.integers(len(others)))]
        for name, distribution in space.items():  # a parent without this parameter: draw it
            if name not in child:
                child[name] = random_value(distribution, rng)
        return child
