"""The model builder: a pure function ``NetworkSpec -> nn.Module``, plus its exact parameter count and traced MACs.

Each block's modules are built from its :class:`~nas.plan.BlockPlan` (its convolutions and SE with
channels, kernel, stride, groups); the counts from the spec alone (:func:`~nas.plan.count_spec_params`,
:func:`~nas.plan.count_macs`, :func:`~nas.plan.count_activations`) read the same plans in :mod:`nas.plan`.
Modules are named like timm's: ``stages[i][j].conv_pw / conv_dw / se / conv_pwl`` (Fused-MBConv:
``conv_exp / se / conv_pwl``), ``nn.Identity()`` where a block has no such part.

Block semantics follow the official EfficientNetV2 code: SiLU, BatchNorm eps 1e-3,
bias-free convolutions except inside SE, residual + stochastic depth when shape is kept.

    >>> from nas.zoo import get
    >>> count_params(build(get("efficientnet-b0")))
    5288548
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from torch import nn

from nas.errors import InputError
from nas.plan import BlockPlan, ConvPlan, SEPlan, plan_head, plan_stage, plan_stem
from nas.spec import NetworkSpec, SpecError

BN_EPS = 1e-3


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


def count_macs_traced(model: nn.Module, image_size: int) -> int:
    """MACs measured by forward hooks on a real pass (a cross-check of :func:`nas.plan.count_macs`)."""
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

