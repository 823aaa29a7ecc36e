"""The model builder: a pure function ``NetworkSpec -> nn.Module``, plus parameter and MAC counts.

Each block is first described by a :class:`BlockPlan` (its convolutions and SE with channels, kernel,
stride, groups); the modules, :func:`count_spec_params` and :func:`count_macs` are all read from it.
Modules are named like timm's: ``stages[i][j].conv_pw / conv_dw / se / conv_pwl`` (Fused-MBConv:
``conv_exp / se / conv_pwl``), ``nn.Identity()`` where a block has no such part.

Block semantics follow the reference code (``shared/REFERENCE.md``): SiLU, BatchNorm eps 1e-3,
bias-free convolutions except inside SE, residual + stochastic depth when shape is kept.

    >>> from nas.zoo import get
    >>> count_params(build(get("efficientnet-b0")))
    5288548
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nas.errors import InputError
from nas.spec import NetworkSpec, SpecError, StageSpec

BN_EPS = 1e-3


# ---- the layer plan: the one description of a block's convolutions ------------------------------
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


# ---- modules built from the plan -------------------------------------------------------------------
class ConvBnAct(nn.Module):
    """``conv`` -> ``bn`` -> ``act`` (SiLU or Identity), built from a :class:`ConvPlan`."""

    def __init__(self, plan: ConvPlan) -> None:
        super().__init__()
        self.conv = nn.Conv2d(plan.in_channels, plan.out_channels, plan.kernel, plan.stride, plan.kernel // 2,
                              groups=plan.groups, bias=False)
        self.bn = nn.BatchNorm2d(plan.out_channels, eps=BN_EPS)
        self.act = nn.SiLU(inplace=True) if plan.activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Module):
    """Channel gate built from an :class:`SEPlan`."""

    def __init__(self, plan: SEPlan) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(plan.channels, plan.squeeze, 1)
        self.act = nn.SiLU(inplace=True)
        self.conv_expand = nn.Conv2d(plan.squeeze, plan.channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)  # (N, C, 1, 1)
        return x * torch.sigmoid(self.conv_expand(self.act(self.conv_reduce(scale))))


class StochasticDepth(nn.Module):
    """Drops the whole residual branch per sample with probability ``p`` while training."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep


def _layer(part: ConvPlan | SEPlan | None) -> nn.Module:
    if part is None:
        return nn.Identity()  # absent parts keep their name, as in timm
    return SqueezeExcite(part) if isinstance(part, SEPlan) else ConvBnAct(part)


class Block(nn.Module):
    """``x + drop_path(layers(x))`` when the block keeps its shape, else ``layers(x)``.

    ``LAYERS`` names the plan's parts (expand, depthwise, se, project) in forward order; a subclass without
    a part names it None. Layers are registered in that order (the order ``build`` initializes them in).
    """

    LAYERS: tuple[str | None, ...] = ()

    def __init__(self, plan: BlockPlan, drop: float) -> None:
        super().__init__()
        self.plan = plan
        self.use_residual = plan.use_residual
        self.drop_path = StochasticDepth(drop) if self.use_residual and drop > 0 else nn.Identity()
        self.names = tuple(name for name in self.LAYERS if name)
        for name, part in zip(self.LAYERS, (plan.expand, plan.depthwise, plan.se, plan.project)):
            if name:
                self.add_module(name, _layer(part))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for name in self.names:
            out = getattr(self, name)(out)
        return x + self.drop_path(out) if self.use_residual else out


class MBConv(Block):
    """``conv_pw`` (1x1, Identity if e = 1) -> ``conv_dw`` (kxk depthwise) -> ``se`` -> ``conv_pwl`` (1x1, no activation)."""

    LAYERS = ("conv_pw", "conv_dw", "se", "conv_pwl")


class FusedMBConv(Block):
    """``conv_exp`` (kxk) -> ``se`` -> ``conv_pwl`` (1x1, no activation; Identity if e = 1)."""

    LAYERS = ("conv_exp", None, "se", "conv_pwl")


BLOCKS: dict[str, type[Block]] = {"mbconv": MBConv, "fused_mbconv": FusedMBConv}


class Network(nn.Module):
    """``stem`` -> ``stages[i][j]`` blocks -> ``head`` (1x1 conv), pool, dropout, ``classifier``. Built by :func:`build`.

    ``spec`` is the :class:`~nas.spec.NetworkSpec` it was built from.
    """

    def __init__(self, spec: NetworkSpec) -> None:
        super().__init__()
        self.spec = spec
        self.stem = ConvBnAct(plan_stem(spec))
        stages: list[nn.Module] = []
        index, total = 0, spec.total_blocks
        for stage in spec.stages:
            blocks = []
            for plan in plan_stage(stage):
                blocks.append(BLOCKS[plan.operator](plan, spec.stochastic_depth * index / total))
                index += 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = ConvBnAct(plan_head(spec))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(spec.head_channels, spec.num_classes)

    def blocks(self) -> list[Block]:
        """Every block, in forward order."""
        return [block for stage in self.stages for block in stage]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))  # (N, head, H/32, W/32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)  # (N, head)
        return self.classifier(self.dropout(x))

    def set_dropout(self, p: float) -> None:
        """Change the classifier dropout in place (progressive learning changes it per stage)."""
        self.dropout = nn.Dropout(p) if p > 0 else nn.Identity()


def _init(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        # depthwise: fan_in (k*k), since fan_out (C*k*k) shrinks activations ~C-fold and leaves
        # BN running statistics far behind the batch statistics for hundreds of steps
        depthwise = module.groups > 1 and module.groups == module.in_channels
        nn.init.kaiming_normal_(module.weight, mode="fan_in" if depthwise else "fan_out")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        # 1/sqrt(fan_in): small initial logits (1/sqrt(out) gives a loss of ~4.6 at 10 classes)
        bound = 1.0 / module.in_features**0.5
        nn.init.uniform_(module.weight, -bound, bound)
        nn.init.zeros_(module.bias)


def build(spec: NetworkSpec) -> Network:
    """Build the PyTorch model described by ``spec`` (pure: same spec, same architecture).

    Works at any input resolution and in ``channels_last``::

        >>> from nas.zoo import get
        >>> build(get("efficientnetv2-b0", num_classes=10))(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 10])
    """
    model = Network(spec)
    model.apply(_init)
    for block in model.blocks():
        # residual blocks start as identity: zero the last BN scale (Goyal et al. 2017)
        if block.use_residual:
            last_bn = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)][-1]
            nn.init.zeros_(last_bn.weight)
    return model


def load_checkpoint(path: str | Path, ema: bool = False) -> Network:
    """Rebuild the network saved in a ``checkpoint.pt`` of ``nas train`` from the spec stored in it.

    The checkpoint's ``identity`` JSON holds the spec; ``ema=True`` loads the EMA weights instead.

        >>> model = load_checkpoint("runs/final/checkpoint.pt")  # doctest: +SKIP
        >>> model.spec.name, model.eval()(images).argmax(1)  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint: {path} is not a file, allowed a checkpoint.pt written by `nas train`")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
        spec = NetworkSpec.from_dict(json.loads(state["identity"])["spec"])
    except SpecError as error:
        raise InputError(f"checkpoint: {path} holds an invalid spec: {error}") from None
    except (KeyError, TypeError, ValueError, RuntimeError, OSError, pickle.UnpicklingError) as error:
        raise InputError(f"checkpoint: {path} is not a checkpoint of `nas train` ({type(error).__name__})") from None
    weights = state["ema"] if ema else state["model"]
    if not weights:
        raise InputError(f"checkpoint: {path} holds no {'EMA ' if ema else ''}weights")
    model = Network(spec)
    model.load_state_dict(weights)
    return model


def count_params(model: nn.Module) -> int:
    """Exact number of parameters."""
    return sum(p.numel() for p in model.parameters())


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


def count_macs_traced(model: nn.Module, image_size: int) -> int:
    """MACs measured by forward hooks on a real pass (a cross-check of :func:`count_macs`)."""
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * (module.in_channels // module.groups) * k
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size))
    model.train(was_training)
    for handle in handles:
        handle.remove()
    return total


def count_stage_params(stage: StageSpec) -> int:
    """Parameters of one stage, from the spec alone (equals the built modules' count)."""
    return sum(plan.params for plan in plan_stage(stage))


def count_fixed_params(spec: NetworkSpec) -> int:
    """Parameters outside the stages: stem, head conv and classifier (what a search over stages never changes)."""
    return plan_stem(spec).params + plan_head(spec).params + spec.head_channels * spec.num_classes + spec.num_classes


def count_spec_params(spec: NetworkSpec) -> int:
    """Parameters of ``build(spec)`` without building it (fast enough to sweep a search space)."""
    return count_fixed_params(spec) + sum(count_stage_params(s) for s in spec.stages)
