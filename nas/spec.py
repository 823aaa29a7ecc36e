"""Frozen architecture specs: the single source of truth for a network.

A :class:`StageSpec` describes one stage (a run of identical blocks), a
:class:`NetworkSpec` a whole MBConv / Fused-MBConv network. Both validate on
construction and round-trip through JSON and through the compact block-string
grammar of the reference code::

    >>> s = StageSpec.from_string("r2_k3_s1_e1_i24_o24_c1")
    >>> s.operator, s.layers, s.to_string()
    ('fused_mbconv', 2, 'r2_k3_s1_e1_i24_o24_c1')
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields, replace
from typing import Any

from nas.errors import InputError, check_number

SCHEMA_VERSION = 1
OPERATORS = ("mbconv", "fused_mbconv")
KERNELS = (1, 3, 5, 7)
STRIDES = (1, 2)


class SpecError(InputError):
    """A spec (or its JSON / string form) is invalid; the message names the field."""


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    check_number(name, value, low=low, high=high, integer=True, error=SpecError)


def _check_float(name: str, value: Any, low: float, high: float) -> None:
    check_number(name, value, low=low, high=high, error=SpecError)


@dataclass(frozen=True)
class StageSpec:
    """One stage: ``layers`` identical blocks; only the first has ``stride`` and ``input_channels``.

    Example::

        >>> StageSpec("mbconv", layers=3, kernel=3, stride=2, expansion=4,
        ...           input_channels=48, output_channels=96, se_ratio=0.25).to_string()
        'r3_k3_s2_e4_i48_o96_se0.25'
    """

    operator: str
    layers: int
    kernel: int
    stride: int
    expansion: int
    input_channels: int
    output_channels: int
    se_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.operator not in OPERATORS:
            raise SpecError(f"operator: unknown operator {self.operator!r}, allowed {', '.join(OPERATORS)}")
        _check_int("layers", self.layers, 1, 100)
        _check_int("kernel", self.kernel, 1)
        if self.kernel not in KERNELS:
            raise SpecError(f"kernel: {self.kernel} is not allowed, allowed {', '.join(map(str, KERNELS))}")
        _check_int("stride", self.stride, 1)
        if self.stride not in STRIDES:
            raise SpecError(f"stride: {self.stride} is not allowed, allowed {', '.join(map(str, STRIDES))}")
        _check_int("expansion", self.expansion, 1, 16)
        _check_int("input_channels", self.input_channels, 1, 8192)
        _check_int("output_channels", self.output_channels, 1, 8192)
        _check_float("se_ratio", self.se_ratio, 0.0, 1.0)

    def to_string(self) -> str:
        """Encode as a reference block string, e.g. ``r2_k3_s2_e4_i24_o48_c1``."""
        parts = [
            f"r{self.layers}",
            f"k{self.kernel}",
            f"s{self.stride}",
            f"e{self.expansion}",
            f"i{self.input_channels}",
            f"o{self.output_channels}",
        ]
        if self.se_ratio > 0:
            parts.append(f"se{self.se_ratio:g}")
        if self.operator == "fused_mbconv":
            parts.append("c1")
        return "_".join(parts)

    @classmethod
    def from_string(cls, text: str) -> StageSpec:
        """Decode a reference block string (``r6_k3_s2_e4_i64_o128_se0.25``; ``s22`` is read as stride 2)."""
        if not isinstance(text, str) or not text.strip():
            raise SpecError(f"block string: expected a non-empty string, got {text!r}")
        values: dict[str, str] = {}
        for token in text.strip().split("_"):
            # "se" must be tried before "s"; "noskip" has no meaning in our semantics
            key = next((p for p in ("se", "r", "k", "s", "e", "i", "o", "c") if token.startswith(p)), None)
            if key is None or len(token) == len(key):
                raise SpecError(f"block string {text!r}: unknown token {token!r}, allowed r,k,s,e,i,o,se,c")
            if key in values:
                raise SpecError(f"block string {text!r}: token {key!r} given twice")
            values[key] = token[len(key) :]
        missing = [k for k in ("r", "k", "s", "e", "i", "o") if k not in values]
        if missing:
            raise SpecError(f"block string {text!r}: missing token(s) {', '.join(missing)}")

        def number(key: str, kind: type) -> Any:
            raw = values[key]
            if key == "s" and len(raw) == 2 and raw[0] == raw[1]:
                raw = raw[0]  # v1 writes strides as s11 / s22
            try:
                return kind(raw)
            except ValueError:
                raise SpecError(f"block string {text!r}: {key}{raw} is not a number") from None

        conv = number("c", int) if "c" in values else 0
        if conv not in (0, 1):
            raise SpecError(f"block string {text!r}: c{conv} is not allowed, allowed c0 (MBConv) or c1 (Fused-MBConv)")
        return cls(
            operator="fused_mbconv" if conv == 1 else "mbconv",
            layers=number("r", int),
            kernel=number("k", int),
            stride=number("s", int),
            expansion=number("e", int),
            input_channels=number("i", int),
            output_channels=number("o", int),
            se_ratio=number("se", float) if "se" in values else 0.0,
        )


@dataclass(frozen=True)
class NetworkSpec:
    """A whole network: stem, stages, head, classifier and its default image sizes.

    Example::

        >>> from nas.zoo import get
        >>> spec = get("efficientnetv2-b0")
        >>> NetworkSpec.from_json(spec.to_json()) == spec
        True
    """

    name: str
    stem_channels: int
    stages: tuple[StageSpec, ...]
    head_channels: int = 1280
    num_classes: int = 1000
    dropout: float = 0.2
    stochastic_depth: float = 0.2
    train_image_size: int = 224
    eval_image_size: int = 224

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise SpecError(f"name: expected a string, got {self.name!r}")
        if isinstance(self.stages, list):  # accept lists from Python callers, store a tuple
            object.__setattr__(self, "stages", tuple(self.stages))
        if not isinstance(self.stages, tuple) or not self.stages:
            raise SpecError("stages: expected a non-empty list of stages")
        for index, stage in enumerate(self.stages):
            if not isinstance(stage, StageSpec):
                raise SpecError(f"stages[{index}]: expected a StageSpec, got {type(stage).__name__}")
        _check_int("stem_channels", self.stem_channels, 1, 8192)
        _check_int("head_channels", self.head_channels, 1, 16384)
        _check_int("num_classes", self.num_classes, 1, 100000)
        _check_float("dropout", self.dropout, 0.0, 0.99)
        _check_float("stochastic_depth", self.stochastic_depth, 0.0, 0.99)
        _check_int("train_image_size", self.train_image_size, 8, 2048)
        _check_int("eval_image_size", self.eval_image_size, 8, 2048)
        previous = self.stem_channels
        for index, stage in enumerate(self.stages):
            if stage.input_channels != previous:
                raise SpecError(
                    f"stages[{index}].input_channels: {stage.input_channels} does not match the previous "
                    f"output channels {previous}"
                )
            previous = stage.output_channels

    # ---- derived -------------------------------------------------------------------------
    @property
    def total_blocks(self) -> int:
        """Number of blocks over all stages (the N of stochastic depth)."""
        return sum(stage.layers for stage in self.stages)

    @property
    def block_strings(self) -> tuple[str, ...]:
        """The stages as reference block strings."""
        return tuple(stage.to_string() for stage in self.stages)

    def key(self) -> str:
        """Canonical identity of the architecture (what builds the same network ignoring regularization).

        Two specs with the same key build the same modules with the same parameter count.
        """
        return f"stem{self.stem_channels} " + " ".join(self.block_strings) + f" head{self.head_channels}"

    def with_classes(self, num_classes: int) -> NetworkSpec:
        """A copy with another classifier size."""
        return replace(self, num_classes=num_classes)

    # ---- JSON ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with ``schema_version``; stages as dicts of full-word fields."""
        data = asdict(self)
        data["stages"] = [asdict(stage) for stage in self.stages]
        return {"schema_version": SCHEMA_VERSION, **data}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Any) -> NetworkSpec:
        """Validate and build a spec from a dict; errors name the offending field.

        A stage may also be given as a block string (``"r2_k3_s1_e1_i24_o24_c1"``).
        """
        if not isinstance(data, dict):
            raise SpecError(f"spec: expected a JSON object, got {type(data).__name__}")
        if isinstance(data.get("spec"), dict) and "provenance" in data:
            data = data["spec"]  # an `nas export` file (arch.json): the spec beside its provenance
        data = dict(data)
        version = data.pop("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise SpecError(f"schema_version: {version!r} is not supported, allowed {SCHEMA_VERSION}")
        data.pop("provenance", None)  # exports carry provenance beside the spec
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"spec: unknown field(s) {', '.join(unknown)}, allowed {', '.join(sorted(known))}")
        required = {f.name for f in fields(cls) if f.default is MISSING}
        missing = sorted(name for name in required if name not in data)
        if missing:
            raise SpecError(f"spec: missing field(s) {', '.join(missing)}")
        stages = data["stages"]
        if not isinstance(stages, list):
            raise SpecError("stages: expected a list of stages")
        data["stages"] = tuple(_stage_from_any(index, stage) for index, stage in enumerate(stages))
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> NetworkSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise SpecError(f"spec JSON is malformed: {error.msg} at line {error.lineno} column {error.colno}") from None
        return cls.from_dict(data)

    # ---- compact string ------------------------------------------------------------------
    @classmethod
    def from_block_strings(cls, name: str, stem_channels: int, blocks: list[str] | tuple[str, ...], **kwargs: Any) -> NetworkSpec:
        """Build a spec from published block strings (the tables of the reference code paste in)."""
        return cls(name=name, stem_channels=stem_channels, stages=tuple(StageSpec.from_string(b) for b in blocks), **kwargs)


_STAGE_FIELDS = {f.name for f in fields(StageSpec)}
_STAGE_REQUIRED = {f.name for f in fields(StageSpec) if f.name != "se_ratio"}


def _stage_from_any(index: int, stage: Any) -> StageSpec:
    where = f"stages[{index}]"
    if isinstance(stage, str):
        try:
            return StageSpec.from_string(stage)
        except SpecError as error:
            raise SpecError(f"{where}: {error}") from None
    if not isinstance(stage, dict):
        raise SpecError(f"{where}: expected an object or a block string, got {type(stage).__name__}")
    unknown = sorted(set(stage) - _STAGE_FIELDS)
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {', '.join(unknown)}, allowed {', '.join(sorted(_STAGE_FIELDS))}")
    missing = sorted(_STAGE_REQUIRED - set(stage))
    if missing:
        raise SpecError(f"{where}: missing field(s) {', '.join(missing)}")
    try:
        return StageSpec(**stage)
    except SpecError as error:
        raise SpecError(f"{where}.{error}") from None
