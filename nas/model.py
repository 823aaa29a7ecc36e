"""The model builder: a pure function ``NetworkSpec -> nn.Module``, plus parameter and MAC counts.

Block semantics follow the reference code (``shared/REFERENCE.md``): SiLU, BatchNorm eps 1e-3,
bias-free convolutions except inside SE, residual + stochastic depth when shape is kept.

    >>> from nas.zoo import get
    >>> count_params(build(get("efficientnet-b0")))
    5288548
"""

from __future__ import annotations

import torch
from torch import nn

from nas.spec import NetworkSpec, StageSpec

BN_EPS = 1e-3


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    # "same" padding for odd kernels: output size = ceil(input / stride)
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout, eps=BN_EPS),
        nn.SiLU(inplace=True) if act else nn.Identity(),
    ]
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """Channel gate; squeeze width is computed from the *block input* channels (reference semantics)."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.act = nn.SiLU(inplace=True)
        self.expand = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)  # (N, C, 1, 1)
        return x * torch.sigmoid(self.expand(self.act(self.reduce(scale))))


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


def _se(cin: int, channels: int, se_ratio: float) -> nn.Module:
    return SqueezeExcite(channels, max(1, int(cin * se_ratio))) if se_ratio > 0 else nn.Identity()


class _Residual(nn.Module):
    """Shared forward: ``x + drop(body(x))`` when the block keeps its shape, else ``body(x)``."""

    body: nn.Sequential

    def __init__(self, cin: int, cout: int, stride: int, drop: float) -> None:
        super().__init__()
        self.use_residual = stride == 1 and cin == cout
        self.drop = StochasticDepth(drop) if self.use_residual and drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + self.drop(out) if self.use_residual else out


class MBConv(_Residual):
    """1x1 expand (if e != 1) -> kxk depthwise -> SE -> 1x1 project (no activation)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int, se_ratio: float, drop: float) -> None:
        super().__init__(cin, cout, stride, drop)
        mid = cin * expansion
        self.body = nn.Sequential(
            _conv_bn(cin, mid, 1) if expansion != 1 else nn.Identity(),
            _conv_bn(mid, mid, kernel, stride, groups=mid),
            _se(cin, mid, se_ratio),
            _conv_bn(mid, cout, 1, act=False),
        )


class FusedMBConv(_Residual):
    """kxk conv expand -> SE -> 1x1 project; with e == 1 a single kxk conv + BN + SiLU, no projection."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int, se_ratio: float, drop: float) -> None:
        super().__init__(cin, cout, stride, drop)
        if expansion == 1:
            self.body = nn.Sequential(_conv_bn(cin, cout, kernel, stride), _se(cin, cout, se_ratio))
        else:
            mid = cin * expansion
            self.body = nn.Sequential(
                _conv_bn(cin, mid, kernel, stride),
                _se(cin, mid, se_ratio),
                _conv_bn(mid, cout, 1, act=False),
            )


BLOCKS: dict[str, type[_Residual]] = {"mbconv": MBConv, "fused_mbconv": FusedMBConv}


class Network(nn.Module):
    """stem -> stages -> head (1x1 conv, pool, dropout, linear). Built by :func:`build`."""

    def __init__(self, spec: NetworkSpec) -> None:
        super().__init__()
        self.stem = _conv_bn(3, spec.stem_channels, 3, 2)
        blocks: list[nn.Module] = []
        index, total = 0, spec.total_blocks
        for stage in spec.stages:
            for layer in range(stage.layers):
                blocks.append(_block(stage, layer, spec.stochastic_depth * index / total))
                index += 1
        self.blocks = nn.Sequential(*blocks)
        self.head = _conv_bn(spec.stages[-1].output_channels, spec.head_channels, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(spec.head_channels, spec.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))  # (N, head, H/32, W/32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)  # (N, head)
        return self.classifier(self.dropout(x))

    def set_dropout(self, p: float) -> None:
        """Change the classifier dropout in place (progressive learning changes it per stage)."""
        self.dropout = nn.Dropout(p) if p > 0 else nn.Identity()


def _block(stage: StageSpec, layer: int, drop: float) -> nn.Module:
    first = layer == 0
    return BLOCKS[stage.operator](
        stage.input_channels if first else stage.output_channels,
        stage.output_channels,
        stage.kernel,
        stage.stride if first else 1,
        stage.expansion,
        stage.se_ratio,
        drop,
    )


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
    for block in model.blocks:
        # residual blocks start as identity: zero the last BN scale (Goyal et al. 2017)
        if isinstance(block, _Residual) and block.use_residual:
            last_bn = [m for m in block.body.modules() if isinstance(m, nn.BatchNorm2d)][-1]
            nn.init.zeros_(last_bn.weight)
    return model


def count_params(model: nn.Module) -> int:
    """Exact number of parameters."""
    return sum(p.numel() for p in model.parameters())


def _out(size: int, stride: int) -> int:
    return -(-size // stride)  # ceil: "same" padding


def count_macs(spec: NetworkSpec, image_size: int) -> int:
    """Multiply-adds of one forward pass at ``image_size`` x ``image_size``, from the spec alone.

    Counts convolutions (SE included) and the classifier, as the reference code's figures do.

        >>> from nas.zoo import get
        >>> round(count_macs(get("efficientnet-b0"), 224) / 1e9, 2)
        0.39
    """

    def conv(size: int, cin: int, cout: int, kernel: int, groups: int = 1) -> int:
        return size * size * cout * (cin // groups) * kernel * kernel

    size = _out(image_size, 2)
    macs = conv(size, 3, spec.stem_channels, 3)
    for stage in spec.stages:
        for layer in range(stage.layers):
            cin = stage.input_channels if layer == 0 else stage.output_channels
            cout, k, e = stage.output_channels, stage.kernel, stage.expansion
            size_in, size = size, _out(size, stage.stride if layer == 0 else 1)
            mid = cin * e
            if stage.operator == "mbconv":
                if e != 1:
                    macs += conv(size_in, cin, mid, 1)
                macs += conv(size, mid, mid, k, groups=mid)
            else:
                mid = cout if e == 1 else mid
                macs += conv(size, cin, mid, k)
            if stage.se_ratio > 0:
                squeeze = max(1, int(cin * stage.se_ratio))
                macs += 2 * mid * squeeze
            if not (stage.operator == "fused_mbconv" and e == 1):
                macs += conv(size, mid, cout, 1)
    macs += conv(size, spec.stages[-1].output_channels, spec.head_channels, 1)
    return macs + spec.head_channels * spec.num_classes


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


def _conv_bn_params(cin: int, cout: int, kernel: int, groups: int = 1) -> int:
    return cout * (cin // groups) * kernel * kernel + 2 * cout  # conv weight + BN affine


def count_stage_params(stage: StageSpec) -> int:
    """Parameters of one stage, from the spec alone (equals the built modules' count)."""
    total = 0
    for layer in range(stage.layers):
        cin = stage.input_channels if layer == 0 else stage.output_channels
        cout, k, e = stage.output_channels, stage.kernel, stage.expansion
        mid = cin * e
        if stage.operator == "mbconv":
            total += (_conv_bn_params(cin, mid, 1) if e != 1 else 0) + _conv_bn_params(mid, mid, k, groups=mid)
        else:
            mid = cout if e == 1 else mid
            total += _conv_bn_params(cin, mid, k)
        if stage.se_ratio > 0:
            squeeze = max(1, int(cin * stage.se_ratio))
            total += 2 * mid * squeeze + squeeze + mid  # two 1x1 convs with bias
        if not (stage.operator == "fused_mbconv" and e == 1):
            total += _conv_bn_params(mid, cout, 1)
    return total


def count_spec_params(spec: NetworkSpec) -> int:
    """Parameters of ``build(spec)`` without building it (fast enough to sweep a search space)."""
    stem = _conv_bn_params(3, spec.stem_channels, 3)
    head = _conv_bn_params(spec.stages[-1].output_channels, spec.head_channels, 1)
    classifier = spec.head_channels * spec.num_classes + spec.num_classes
    return stem + sum(count_stage_params(s) for s in spec.stages) + head + classifier
