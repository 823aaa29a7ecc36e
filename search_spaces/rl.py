"""A REINFORCE controller as an Optuna sampler (MnasNet / TuNAS style, the EfficientNetV2 paper's search).

The policy is a product of independent categorical distributions, one softmax over the choices of
each parameter (``stage3.op``, ``stage3.layers``, ...). For every scored trial, in trial-number
order, the logits move along ``advantage * grad log pi(choice)``; the advantage is the reward minus
a moving-average baseline, divided by a moving standard deviation and clipped (so the learning rate
does not depend on the reward's scale). The policy is replayed from the study's trials at each
proposal, so resume loses nothing and concurrent trials simply see the policy as it stands.

    >>> import optuna
    >>> study = optuna.create_study(direction="maximize", sampler=ReinforceSampler(seed=0))
    >>> study.optimize(lambda t: float(t.suggest_categorical("op", ["a", "b", "c"]) == "b"), n_trials=60)
    >>> sum(t.params["op"] == "b" for t in study.trials[-20:]) > 10
    True
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import optuna

from nas.errors import InputError
from search_spaces.history import Distribution, HistorySampler, choices_of, rng_for, scored_history


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


class ReinforceSampler(HistorySampler):
    """Independent per-parameter logits trained by REINFORCE with a moving-average reward baseline."""

    def __init__(self, seed: int | None = None, learning_rate: float = 0.1, baseline_decay: float = 0.97,
                 clip: float = 3.0, exploration: float = 0.0) -> None:
        super().__init__(seed)
        self._replayed: dict[str, tuple[list[tuple[int, float]], Any]] = {}  # memo: (trial number, reward) replayed -> policy state
        for name, value, low, high in (("learning_rate", learning_rate, 0.0, 100.0), ("baseline_decay", baseline_decay, 0.0, 1.0),
                                       ("clip", clip, 0.0, 1e6), ("exploration", exploration, -1e-12, 1.0)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not low < value < high:
                raise InputError(f"{name}: {value!r} is not allowed, allowed a number in ({low:g}, {high:g})")
        self.learning_rate, self.baseline_decay, self.clip = float(learning_rate), float(baseline_decay), float(clip)
        self.exploration = float(exploration)

    def policy(self, study: optuna.Study) -> dict[tuple[str, tuple[Any, ...]], np.ndarray]:
        """The logits after replaying every scored trial; keyed by (parameter name, its choices)."""
        history = scored_history(study)
        numbers = [(t.number, reward) for t, reward in history]
        done, state = self._replayed.get(study.study_name, ([], ({}, None, 0.0)))
        if numbers[: len(done)] != done:  # a trial finished out of order: replay from the start
            done, state = [], ({}, None, 0.0)
        logits, baseline, variance = copy.deepcopy(state)
        for trial, reward in history[len(done):]:
            if baseline is None:
                baseline = reward
                continue  # the first reward only sets the baseline
            deviation = reward - baseline
            variance = self.baseline_decay * variance + (1 - self.baseline_decay) * deviation**2
            advantage = float(np.clip(deviation / (variance**0.5 + 1e-12), -self.clip, self.clip))
            for name, value in trial.params.items():
                choices = choices_of(trial.distributions[name])
                if choices is None or value not in choices:
                    continue
                key = (name, choices)
                weights = logits.setdefault(key, np.zeros(len(choices)))
                gradient = -_softmax(weights)
                gradient[choices.index(value)] += 1.0
                weights += self.learning_rate * advantage * gradient
            baseline = self.baseline_decay * baseline + (1 - self.baseline_decay) * reward
        # memoized only: the result equals a full replay, so resume and other processes agree
        self._replayed[study.study_name] = (numbers, copy.deepcopy((logits, baseline, variance)))
        return logits

    def propose(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, space: dict[str, Distribution]) -> dict[str, Any]:
        logits = self.policy(study)
        proposal = {}
        for name, distribution in space.items():
            proposal[name] = self._draw(logits, name, distribution, trial.number)
        return proposal

    def independent_value(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, param_name: str,
                          param_distribution: Distribution) -> Any:
        if choices_of(param_distribution) is None:
            return super().independent_value(study, trial, param_name, param_distribution)
        return self._draw(self.policy(study), param_name, param_distribution, trial.number)

    def _draw(self, logits: dict, name: str, distribution: Distribution, number: int) -> Any:
        choices = choices_of(distribution)
        weights = logits.get((name, choices), np.zeros(len(choices)))
        probabilities = (1 - self.exploration) * _softmax(weights) + self.exploration / len(choices)  # a floor keeps exploring
        index = rng_for(self.seed, number, name).choice(len(choices), p=probabilities)
        return choices[int(index)]
