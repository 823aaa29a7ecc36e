"""The stage-wise factorized search space of EfficientNetV2 (paper section 3.3).

Per stage: operator {MBConv, Fused-MBConv}, number of layers (a range), kernel {3, 5} and
expansion {1, 4, 6}; channels and strides are reused from the backbone. The space is an
inspectable frozen object; :meth:`SearchSpace.suggest` maps an ``optuna.Trial`` to a
:class:`~nas.spec.NetworkSpec` and does nothing else (define-by-run).

    >>> space = SearchSpace.default("efficientnetv2-b0")
    >>> space.size()
    1451188224
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import Any

from nas.errors import InputError, check_number
from nas.io import load_config_file, load_spec
from nas.plan import count_fixed_params, count_stage_params
from nas.spec import KERNELS, OPERATORS, NetworkSpec, StageSpec

DEFAULT_BACKBONE = "efficientnetv2-b0"
DEFAULT_KERNELS = (3, 5)
DEFAULT_EXPANSIONS = (1, 4, 6)
DEFAULT_SE_RATIO = 0.25  # MBConv gets SE, Fused-MBConv none, unless a stage sets se_ratio


CHOICES = ("op", "layers", "kernel", "expansion")  # per stage, in the order of spec_from_choices' tuples


def param_name(stage: int, choice: str) -> str:
    """The Optuna parameter of one choice of stage ``stage`` (1-based): the space's only naming rule.

        >>> param_name(3, "op")
        'stage3.op'
    """
    return f"stage{stage}.{choice}"


@dataclass(frozen=True)
class StageChoices:
    """The choices for one stage. ``se_ratio=None`` means "follows the operator" (0.25 MBConv, 0 fused).

        >>> StageChoices(operators=("mbconv",), min_layers=1, max_layers=3).count()
        18
    """

    operators: tuple[str, ...] = OPERATORS
    min_layers: int = 1
    max_layers: int = 2
    kernels: tuple[int, ...] = DEFAULT_KERNELS
    expansions: tuple[int, ...] = DEFAULT_EXPANSIONS
    se_ratio: float | None = None

    def __post_init__(self) -> None:
        for name, values, allowed in (
            ("operators", self.operators, OPERATORS),
            ("kernels", self.kernels, KERNELS),
            ("expansions", self.expansions, tuple(range(1, 17))),
        ):
            if not isinstance(values, tuple) or not values:
                raise InputError(f"{name}: the choice list is empty, allowed a non-empty list of {', '.join(map(str, allowed))}")
            for value in values:
                if value not in allowed or isinstance(value, bool):
                    shown = ", ".join(map(str, allowed)) if name != "expansions" else "integers 1..16"
                    raise InputError(f"{name}: {value!r} is not allowed, allowed {shown}")
            if len(set(values)) != len(values):
                raise InputError(f"{name}: {list(values)} repeats a choice")
        for name in ("min_layers", "max_layers"):
            check_number(name, getattr(self, name), low=1, high=100, integer=True)
        if self.min_layers > self.max_layers:
            raise InputError(f"layers: min {self.min_layers} > max {self.max_layers}")
        check_number("se_ratio", self.se_ratio, low=0, high=1, optional=True)

    def count(self) -> int:
        """Distinct stage configurations."""
        return len(self.operators) * (self.max_layers - self.min_layers + 1) * len(self.kernels) * len(self.expansions)

    def se_for(self, operator: str) -> float:
        if self.se_ratio is not None:
            return float(self.se_ratio)
        return DEFAULT_SE_RATIO if operator == "mbconv" else 0.0


@dataclass(frozen=True)
class SearchSpace:
    """A backbone plus one :class:`StageChoices` per backbone stage."""

    backbone: NetworkSpec
    stages: tuple[StageChoices, ...]

    def __post_init__(self) -> None:
        if len(self.stages) != len(self.backbone.stages):
            raise InputError(
                f"stages: {len(self.stages)} stage choices given, the backbone {self.backbone.name} has {len(self.backbone.stages)}"
            )

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def default(cls, backbone: str | NetworkSpec = DEFAULT_BACKBONE, layers_delta: int = 1) -> SearchSpace:
        """Every stage: both operators, kernels {3, 5}, expansions {1, 4, 6}, backbone layers ± ``layers_delta``."""
        spec = load_spec(backbone) if isinstance(backbone, str) else backbone
        return cls(spec, tuple(
            StageChoices(min_layers=max(1, s.layers - layers_delta), max_layers=s.layers + layers_delta) for s in spec.stages
        ))

    @classmethod
    def from_config(cls, config: dict[str, Any], backbone: str | NetworkSpec | None = None) -> SearchSpace:
        """Build from a dict (see README: ``backbone``, ``layers_delta``, ``defaults``, ``stages``).

        ``stages`` maps a 1-based stage number to overrides: ``operators``, ``layers`` ([min, max]
        or one integer), ``kernels``, ``expansions``, ``se_ratio``.
        """
        allowed = {"backbone", "layers_delta", "defaults", "stages"}
        unknown = sorted(set(config) - allowed)
        if unknown:
            raise InputError(f"space config: unknown key(s) {', '.join(unknown)}, allowed {', '.join(sorted(allowed))}")
        spec_source = backbone or config.get("backbone", DEFAULT_BACKBONE)
        spec = load_spec(spec_source) if isinstance(spec_source, str) else spec_source
        delta = config.get("layers_delta", 1)
        check_number("layers_delta", delta, low=0, integer=True)
        defaults = _stage_overrides("defaults", config.get("defaults") or {})
        per_stage = config.get("stages") or {}
        if isinstance(per_stage, list):
            per_stage = {i + 1: value for i, value in enumerate(per_stage)}
        if not isinstance(per_stage, dict):
            raise InputError("stages: expected a mapping from stage number (1-based) to choices")
        stages = []
        for number, stage in enumerate(spec.stages, 1):
            base = dict(min_layers=max(1, stage.layers - delta), max_layers=stage.layers + delta)
            base.update(defaults)
            base.update(_stage_overrides(f"stages.{number}", per_stage.get(number, per_stage.get(str(number))) or {}))
            stages.append(_choices(f"stages.{number}", base))
        extra = sorted(str(k) for k in per_stage if str(k) not in {str(i) for i in range(1, len(spec.stages) + 1)})
        if extra:
            raise InputError(f"stages: unknown stage number(s) {', '.join(extra)}, allowed 1..{len(spec.stages)}")
        return cls(spec, tuple(stages))

    @classmethod
    def from_file(cls, path: str, backbone: str | None = None) -> SearchSpace:
        return cls.from_config(load_config_file(path, "space config"), backbone)

    # ---- the define-by-run sampler -----------------------------------------------------
    def suggest(self, trial: Any) -> NetworkSpec:
        """Map an Optuna trial to a spec; parameters are named ``stage3.op``, ``stage3.layers``, ... (:func:`param_name`).

        Only ``trial.suggest_*`` calls happen here: no training, no I/O.
        """
        choices = {}
        for number, stage in enumerate(self.stages, 1):
            choices[number] = (
                trial.suggest_categorical(param_name(number, "op"), list(stage.operators)),
                trial.suggest_int(param_name(number, "layers"), stage.min_layers, stage.max_layers),
                trial.suggest_categorical(param_name(number, "kernel"), list(stage.kernels)),
                trial.suggest_categorical(param_name(number, "expansion"), list(stage.expansions)),
            )
        return self.spec_from_choices(choices)

    def spec_from_params(self, params: dict[str, Any]) -> NetworkSpec:
        """The spec for a stored trial's ``params`` (inverse of :meth:`suggest`)."""
        return self.spec_from_choices({n: tuple(params[param_name(n, c)] for c in CHOICES) for n in range(1, len(self.stages) + 1)})

    def params_for(self, spec: NetworkSpec) -> dict[str, Any] | None:
        """The parameters under which :meth:`suggest` yields ``spec`` (e.g. the backbone); None if the space excludes it.

            >>> space = SearchSpace.default("efficientnetv2-b0")
            >>> space.spec_from_params(space.params_for(space.backbone)).key() == space.backbone.key()
            True
        """
        params: dict[str, Any] = {}
        for number, (choice, stage) in enumerate(zip(self.stages, spec.stages, strict=True), 1):
            if (stage.operator not in choice.operators or not choice.min_layers <= stage.layers <= choice.max_layers
                    or stage.kernel not in choice.kernels or stage.expansion not in choice.expansions
                    or choice.se_for(stage.operator) != stage.se_ratio):
                return None
            values = (stage.operator, stage.layers, stage.kernel, stage.expansion)
            params.update({param_name(number, c): v for c, v in zip(CHOICES, values, strict=True)})
        return params

    def spec_from_choices(self, choices: dict[int, tuple[str, int, int, int]]) -> NetworkSpec:
        stages = tuple(
            replace(base, operator=op, layers=layers, kernel=kernel, expansion=expansion, se_ratio=self.stages[n - 1].se_for(op))
            for n, base, (op, layers, kernel, expansion) in ((n, self.backbone.stages[n - 1], choices[n]) for n in choices)
        )
        return replace(self.backbone, name="candidate", stages=stages)

    # ---- inspection ----------------------------------------------------------------------
    def size(self) -> int:
        """Number of distinct architectures (distinct canonical keys)."""
        return math.prod(stage.count() for stage in self.stages)

    def stage_options(self, number: int) -> list[StageSpec]:
        """Every distinct stage the space allows at 1-based ``number``."""
        choice, base = self.stages[number - 1], self.backbone.stages[number - 1]
        return [
            replace(base, operator=op, layers=layers, kernel=k, expansion=e, se_ratio=choice.se_for(op))
            for op, layers, k, e in itertools.product(
                choice.operators, range(choice.min_layers, choice.max_layers + 1), choice.kernels, choice.expansions
            )
        ]

    def param_range(self) -> tuple[int, int]:
        """(smallest, largest) parameter count in the space: stages add up independently."""
        fixed = count_fixed_params(self.backbone)
        per_stage = [[count_stage_params(s) for s in self.stage_options(n)] for n in range(1, len(self.stages) + 1)]
        return fixed + sum(min(p) for p in per_stage), fixed + sum(max(p) for p in per_stage)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description: backbone, size, per-stage choices, param range."""
        smallest, largest = self.param_range()
        return {
            "backbone": self.backbone.name,
            "size": self.size(),
            "min_params": smallest,
            "max_params": largest,
            "num_classes": self.backbone.num_classes,
            "stages": [
                {
                    "stage": n,
                    "operators": list(c.operators),
                    "layers": [c.min_layers, c.max_layers],
                    "kernels": list(c.kernels),
                    "expansions": list(c.expansions),
                    "se_ratio": "follows operator" if c.se_ratio is None else c.se_ratio,
                    "stride": b.stride,
                    "channels": [b.input_channels, b.output_channels],
                    "choices": c.count(),
                }
                for n, (c, b) in enumerate(zip(self.stages, self.backbone.stages), 1)
            ],
        }


_OVERRIDE_KEYS = {"operators", "layers", "kernels", "expansions", "se_ratio"}


def _stage_overrides(where: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected a mapping of choices")
    unknown = sorted(set(raw) - _OVERRIDE_KEYS)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(unknown)}, allowed {', '.join(sorted(_OVERRIDE_KEYS))}")
    out: dict[str, Any] = {}
    for key in ("operators", "kernels", "expansions"):
        if key in raw:
            value = raw[key]
            out[key] = tuple(value) if isinstance(value, list) else (value,) if value is not None else ()
    if "layers" in raw:
        layers = raw["layers"]
        if isinstance(layers, int) and not isinstance(layers, bool):
            out["min_layers"] = out["max_layers"] = layers
        elif isinstance(layers, list) and len(layers) == 2:
            out["min_layers"], out["max_layers"] = layers
        else:
            raise InputError(f"{where}.layers: {layers!r} is not allowed, allowed [min, max] or one integer")
    if "se_ratio" in raw:
        out["se_ratio"] = raw["se_ratio"]
    return out


def _choices(where: str, values: dict[str, Any]) -> StageChoices:
    try:
        return StageChoices(**values)
    except InputError as error:
        raise InputError(f"{where}.{error}") from None
