"""The factorized search space and the samplers that walk it."""

from search_spaces.samplers import SAMPLERS, make_sampler
from search_spaces.space import DEFAULT_BACKBONE, SearchSpace, StageChoices

__all__ = ["DEFAULT_BACKBONE", "SAMPLERS", "SearchSpace", "StageChoices", "make_sampler"]
