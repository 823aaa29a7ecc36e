"""A synthetic objective over the search space with a known optimum, for comparing samplers without training.

The reward of a spec is ``-(|log(P / P*)| + |log(M / M*)|)`` with P its exact parameter count and M
its exact multiply-adds at ``image_size``, and (P*, M*) those of a hidden target architecture drawn
from the space with ``seed``: the optimum is exactly 0 (the target itself), so the regret of a
search is minus its best reward.

    >>> from search_spaces import SearchSpace
    >>> objective = AnalyticObjective.draw(SearchSpace.default("efficientnetv2-b0"), seed=0)
    >>> objective.reward(objective.target)
    -0.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nas.plan import count_macs, count_spec_params
from nas.spec import NetworkSpec
from search_spaces.space import SearchSpace


@dataclass(frozen=True)
class AnalyticObjective:
    """Distance in log params and log MACs to a hidden target architecture of ``space``."""

    space: SearchSpace
    target: NetworkSpec
    image_size: int = 32

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int) or self.image_size < 8:
            raise ValueError(f"image_size: {self.image_size!r} is not allowed, allowed an integer >= 8")

    @classmethod
    def draw(cls, space: SearchSpace, seed: int = 0, image_size: int = 32) -> AnalyticObjective:
        """A target drawn uniformly from ``space`` with ``seed``."""
        rng = np.random.default_rng(seed)
        choices = {}
        for number, stage in enumerate(space.stages, 1):
            choices[number] = (stage.operators[rng.integers(len(stage.operators))],
                               int(rng.integers(stage.min_layers, stage.max_layers + 1)),
                               stage.kernels[rng.integers(len(stage.kernels))],
                               stage.expansions[rng.integers(len(stage.expansions))])
        return cls(space, space.spec_from_choices(choices), image_size)

    def reward(self, spec: NetworkSpec) -> float:
        """0 at the target, negative elsewhere."""
        return -(abs(math.log(count_spec_params(spec) / count_spec_params(self.target)))
                 + abs(math.log(count_macs(spec, self.image_size) / count_macs(self.target, self.image_size))))

    def __call__(self, trial) -> float:
        """An Optuna objective: suggest through the space, return the reward (maximize)."""
        return self.reward(self.space.suggest(trial))
