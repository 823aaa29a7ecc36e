"""The layer plan: the one description of a network's convolutions, and what is counted from it.

A :class:`BlockPlan` lists one block's convolutions and SE (channels, kernel, stride, groups) in forward
order; :mod:`nas.model` builds its modules from it, and the counts here read it without building
anything (no torch): parameters (:func:`count_spec_params`), multiply-adds (:func:`count_macs`) and
the activations a training step keeps for backward (:func:`count_activations`, the memory preflight).

    >>> from nas.zoo import get
    >>> count_spec_params(get("efficientnet-b0"))
    5288548
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nas.spec import NetworkSpec, StageSpec


def _out(size: int, stride: int) -> int:
    return -(-size // stride)  # ceil: "same" padding


@dataclass(frozen=True)
class ConvPlan:
    """One bias-free convolution + BatchNorm (+ SiLU when ``activation``); "same" padding.

        >>> ConvPlan(16, 64, 1).params, ConvPlan(64, 64, 3, stride=2, groups=64).macs(32)
        (1152, 147456)
    """

    in_channels: int
    out_channels: int
    kernel: int
    stride: int = 1
    groups: int = 1
    activation: bool = True

    @property
    def params(self) -> int:
        """Conv weight + BN affine."""
        return self.out_channels * (self.in_channels // self.groups) * self.kernel**2 + 2 * self.out_channels

    def output_size(self, size: int) -> int:
        return _out(size, self.stride)

    def macs(self, size: int) -> int:
        """Multiply-adds on a ``size`` x ``size`` input."""
        out = self.output_size(size)
        return out * out * self.out_channels * (self.in_channels // self.groups) * self.kernel**2

    def activations(self, size: int) -> int:
        """Elements of its output per image on a ``size`` x ``size`` input (what backward keeps of it)."""
        return self.out_channels * self.output_size(size) ** 2


@dataclass(frozen=True)
class SEPlan:
    """Squeeze-and-excitation on ``channels``: two 1x1 convs with bias around a ``squeeze``-wide SiLU."""

    channels: int
    squeeze: int

    @property
    def params(self) -> int:
        return 2 * self.channels * self.squeeze + self.squeeze + self.channels

    @property
    def macs(self) -> int:
        return 2 * self.channels * self.squeeze  # on the pooled (N, C, 1, 1) tensor


@dataclass(frozen=True)
class BlockPlan:
    """One block's layers, in forward order: ``expand`` -> ``depthwise`` -> ``se`` -> ``project``.

    MBConv: ``expand`` is the 1x1 ``conv_pw`` (absent when e = 1), ``depthwise`` the kxk ``conv_dw``.
    Fused-MBConv: ``expand`` is the kxk ``conv_exp``, no ``depthwise``; with e = 1 it maps straight to the
    output channels and there is no ``project``. Modules, parameter and MAC counts all derive from this.

        >>> plan = plan_block(StageSpec.from_string("r1_k3_s1_e1_i24_o24_c1"), 0)
        >>> plan.expand.kernel, plan.depthwise, plan.project, plan.use_residual
        (3, None, None, True)
    """

    operator: str
    in_channels: int
    out_channels: int
    stride: int
    expand: ConvPlan | None
    depthwise: ConvPlan | None
    se: SEPlan | None
    project: ConvPlan | None

    @property
    def use_residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels

    @property
    def convs(self) -> tuple[ConvPlan, ...]:
        return tuple(conv for conv in (self.expand, self.depthwise, self.project) if conv is not None)

    @property
    def params(self) -> int:
        return sum(conv.params for conv in self.convs) + (self.se.params if self.se else 0)

    def macs(self, size: int) -> tuple[int, int]:
        """(multiply-adds, output size) on a ``size`` x ``size`` input."""
        total = self.se.macs if self.se else 0
        for conv in self.convs:
            total += conv.macs(size)
            size = conv.output_size(size)
        return total, size

    def activations(self, size: int) -> tuple[int, int]:
        """(elements per image of its convolutions' outputs, output size) on a ``size`` x ``size`` input.

        SE's pooled tensors are left out: the count is a lower bound of what a training step keeps.

            >>> plan_block(StageSpec.from_string("r1_k3_s2_e4_i16_o24_c1"), 0).activations(32)
            (22528, 16)
        """
        total = 0
        for conv in self.convs:
            total += conv.activations(size)
            size = conv.output_size(size)
        return total, size


def plan_block(stage: StageSpec, layer: int) -> BlockPlan:
    """The plan of block ``layer`` (0-based) of ``stage``: only the first block strides and changes width."""
    first = layer == 0
    cin = stage.input_channels if first else stage.output_channels
    cout, kernel, stride = stage.output_channels, stage.kernel, stage.stride if first else 1
    fused = stage.operator == "fused_mbconv"
    single = fused and stage.expansion == 1  # one kxk conv + BN + SiLU, no projection
    mid = cout if single else cin * stage.expansion
    # squeeze width from the *block input* channels (reference semantics)
    se = SEPlan(mid, max(1, int(cin * stage.se_ratio))) if stage.se_ratio > 0 else None
    project = None if single else ConvPlan(mid, cout, 1, activation=False)
    if fused:
        return BlockPlan(stage.operator, cin, cout, stride, ConvPlan(cin, mid, kernel, stride), None, se, project)
    expand = ConvPlan(cin, mid, 1) if stage.expansion != 1 else None
    return BlockPlan(stage.operator, cin, cout, stride, expand, ConvPlan(mid, mid, kernel, stride, groups=mid), se, project)


def plan_stage(stage: StageSpec) -> tuple[BlockPlan, ...]:
    """The plans of every block of ``stage``."""
    return tuple(plan_block(stage, layer) for layer in range(stage.layers))


def plan_stem(spec: NetworkSpec) -> ConvPlan:
    return ConvPlan(3, spec.stem_channels, 3, 2)


def plan_head(spec: NetworkSpec) -> ConvPlan:
    return ConvPlan(spec.stages[-1].output_channels, spec.head_channels, 1)


# ---- counts read from the plan ----------------------------------------------------------------------
def count_macs(spec: NetworkSpec, image_size: int) -> int:
    """Multiply-adds of one forward pass at ``image_size`` x ``image_size``, from the spec alone.

    Counts convolutions (SE included) and the classifier, as the reference code's figures do.

        >>> from nas.zoo import get
        >>> round(count_macs(get("efficientnet-b0"), 224) / 1e9, 2)
        0.39
    """

    stem, head = plan_stem(spec), plan_head(spec)
    macs, size = stem.macs(image_size), stem.output_size(image_size)
    for stage in spec.stages:
        for plan in plan_stage(stage):
            block_macs, size = plan.macs(size)
            macs += block_macs
    return macs + head.macs(size) + spec.head_channels * spec.num_classes


def count_stage_params(stage: StageSpec) -> int:
    """Parameters of one stage, from the spec alone (equals the built modules' count)."""
    return sum(plan.params for plan in plan_stage(stage))


def count_fixed_params(spec: NetworkSpec) -> int:
    """Parameters outside the stages: stem, head conv and classifier (what a search over stages never changes)."""
    return plan_stem(spec).params + plan_head(spec).params + spec.head_channels * spec.num_classes + spec.num_classes


def count_spec_params(spec: NetworkSpec) -> int:
    """Parameters of ``build(spec)`` without building it (fast enough to sweep a search space)."""
    return count_fixed_params(spec) + sum(count_stage_params(s) for s in spec.stages)


def count_stage_activations(stage: StageSpec, size: int) -> tuple[int, int]:
    """(elements per image a training step keeps for ``stage``'s conv outputs, output size); a lower bound."""
    total = 0
    for plan in plan_stage(stage):
        elements, size = plan.activations(size)
        total += elements
    return total, size


def count_activations(spec: NetworkSpec, image_size: int, *, stage_options: Sequence[Sequence[StageSpec]] | None = None) -> int:
    """Elements per image kept for backward by a training step of ``spec``: the input and every conv output.

    With ``stage_options`` (each stage's alternatives, as in a search space), the largest over the alternatives.

        >>> from nas.zoo import get
        >>> count_activations(get("efficientnetv2-b0", 10), 32) > 32 * 32 * 3
        True
    """
    stem = plan_stem(spec)
    total, size = 3 * image_size * image_size + stem.activations(image_size), stem.output_size(image_size)
    for index, stage in enumerate(spec.stages):
        counted = [count_stage_activations(option, size) for option in (stage_options[index] if stage_options else [stage])]
        total += max(elements for elements, _ in counted)
        size = counted[0][1]  # stride and channels are fixed per stage
    return total + plan_head(spec).activations(size)
