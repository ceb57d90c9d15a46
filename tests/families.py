"""Compact re-implementations of the CNN families users ship (issue 17), small enough that
tracing and cutting each takes well under a second at 3x32x32.

Each keeps the quirk that matters to a channel pruner, written the way the widely used
model definitions write it (torchvision / timm / the papers' reference code):

* :class:`MobileNetV3Like`: inverted residuals, squeeze-excitation (avg-pool, 1x1 reduce,
  ReLU, 1x1 expand, hardsigmoid, multiply), hardswish and SiLU, torchvision-style
  stochastic depth (identity in eval), BatchNorm momentum 0.01;
* :class:`ShuffleNetV2Like`: channel split (``chunk``), concat, channel shuffle
  (reshape / transpose / reshape);
* :class:`RegNetLike`: X blocks whose 3x3 conv is grouped with a fixed group width of 8,
  plus one grouped conv whose input and output widths differ (its groups cannot be
  removed whole);
* :class:`ConvNeXtLike`: patchify stem, depthwise 7x7, LayerNorm over channels both ways
  (``permute`` + ``nn.LayerNorm``, and a hand-written ``LayerNorm2d`` with bare
  weight / bias), channels-last ``nn.Linear`` MLP with GELU, layer scale (a bare
  ``nn.Parameter`` gamma);
* :class:`DenseNetLike`: dense blocks (pre-activation BN-ReLU-conv, concatenation of
  every earlier output), a transition, and an Inception-like block of four concatenated
  branches.

Weights are random and seeded; BN statistics are randomised so zeroed channels matter.
"""

from __future__ import annotations

import torch
from torch import nn

INPUT_SHAPE = (1, 3, 32, 32)
CLASSES = 10
BN_MOMENTUM = 0.01


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, momentum=BN_MOMENTUM)


def conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.ReLU
            ) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), _bn(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class StochasticDepth(nn.Module):
    """torchvision.ops.StochasticDepth ("row" mode): drops whole residual branches while
    training, identity in eval."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty([x.shape[0]] + [1] * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep


# ------------------------------------------------------------------ MobileNetV3-like


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.avgpool(x)))))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, exp: int, cout: int, k: int, stride: int, se: bool, act: type[nn.Module],
                 drop: float = 0.0) -> None:
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if exp != cin:
            layers.append(conv_bn(cin, exp, 1, act=act))
        layers.append(conv_bn(exp, exp, k, stride, groups=exp, act=act))
        if se:
            layers.append(SqueezeExcite(exp, max(8, exp // 4)))
        layers.append(conv_bn(exp, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + self.stochastic_depth(out) if self.use_res else out


class MobileNetV3Like(nn.Module):
    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 16, 3, 2, act=nn.Hardswish),
            InvertedResidual(16, 16, 16, 3, 1, True, nn.ReLU, 0.1),
            InvertedResidual(16, 48, 24, 3, 2, False, nn.ReLU),
            InvertedResidual(24, 72, 24, 5, 1, True, nn.Hardswish, 0.1),
            InvertedResidual(24, 72, 32, 3, 2, True, nn.SiLU),
            InvertedResidual(32, 96, 32, 3, 1, True, nn.Hardswish, 0.1),
            conv_bn(32, 96, 1, act=nn.Hardswish),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(96, 128), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(128, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# ------------------------------------------------------------------ ShuffleNetV2-like


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.size()
    x = x.view(n, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(n, c, h, w)


class ShuffleBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(conv_bn(cin, cin, 3, stride, groups=cin, act=None), conv_bn(cin, half, 1))
        b_in = cin if stride > 1 else half
        self.branch2 = nn.Sequential(conv_bn(b_in, half, 1), conv_bn(half, half, 3, stride, groups=half, act=None),
                                     conv_bn(half, half, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2Like(nn.Module):
    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        self.conv1 = conv_bn(3, 16, 3, 2)
        self.stage2 = nn.Sequential(ShuffleBlock(16, 32, 2), ShuffleBlock(32, 32, 1))
        # two stride-1 units in a row: chained shuffles (torch-pruning's reshape mapping divided by 0 there)
        self.stage3 = nn.Sequential(ShuffleBlock(32, 64, 2), ShuffleBlock(64, 64, 1), ShuffleBlock(64, 64, 1))
        self.conv5 = conv_bn(64, 96, 1)
        self.fc = nn.Linear(96, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv5(self.stage3(self.stage2(self.conv1(x))))
        return self.fc(x.mean([2, 3]))


# ------------------------------------------------------------------ RegNet-like

GROUP_WIDTH = 8


class XBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, group_width: int = GROUP_WIDTH) -> None:
        super().__init__()
        self.a = conv_bn(cin, cout, 1)
        self.b = conv_bn(cout, cout, 3, stride, groups=cout // group_width)
        self.c = conv_bn(cout, cout, 1, act=None)
        self.proj = conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else None
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        short = x if self.proj is None else self.proj(x)
        return self.relu(short + self.c(self.b(self.a(x))))


class RegNetLike(nn.Module):
    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2)
        self.s1 = nn.Sequential(XBlock(16, 24, 2), XBlock(24, 24, 1))
        self.s2 = nn.Sequential(XBlock(24, 48, 2), XBlock(48, 48, 1))
        #: a grouped conv whose output width differs from its input width (4 groups of
        #: 12 -> 24): removing a conv group would change the group width; left whole
        self.widen = conv_bn(48, 96, 3, 1, groups=4)
        self.fc = nn.Linear(96, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.widen(self.s2(self.s1(self.stem(x)))).mean([2, 3]))


# ------------------------------------------------------------------ ConvNeXt-like


class LayerNorm2d(nn.Module):
    """ConvNeXt's reference "channels_first" LayerNorm: statistics over the channel
    dimension of an NCHW tensor, bare weight and bias parameters."""

    def __init__(self, c: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ConvNeXtBlock(nn.Module):
    def __init__(self, c: int, drop: float = 0.0, scale: float = 0.5) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.pwconv1 = nn.Linear(c, 4 * c)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(scale * torch.ones(c))  # layer scale
        self.drop_path = StochasticDepth(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class ConvNeXtLike(nn.Module):
    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 4, stride=4), LayerNorm2d(16))
        self.stage1 = nn.Sequential(ConvNeXtBlock(16, 0.1), ConvNeXtBlock(16))
        self.down = nn.Sequential(LayerNorm2d(16), nn.Conv2d(16, 32, 2, stride=2))
        self.stage2 = nn.Sequential(ConvNeXtBlock(32, 0.1), ConvNeXtBlock(32))
        self.norm = nn.LayerNorm(32, eps=1e-6)
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(self.norm(x.mean([-2, -1])))


# ------------------------------------------------------------------ DenseNet-like


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm1, self.relu1 = _bn(cin), nn.ReLU()
        self.conv1 = nn.Conv2d(cin, 2 * growth, 1, bias=False)
        self.norm2, self.relu2 = _bn(2 * growth), nn.ReLU()
        self.conv2 = nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(feats, 1)
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class DenseBlock(nn.Module):
    def __init__(self, cin: int, growth: int, n: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth) for i in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for layer in self.layers:
            feats.append(layer(feats))
        return torch.cat(feats, 1)


class Inception(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.b1 = conv_bn(cin, 8, 1)
        self.b2 = nn.Sequential(conv_bn(cin, 8, 1), conv_bn(8, 12, 3))
        self.b3 = nn.Sequential(conv_bn(cin, 4, 1), conv_bn(4, 8, 3), conv_bn(8, 8, 3))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(cin, 8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class DenseNetLike(nn.Module):
    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2)
        self.block1 = DenseBlock(16, 8, 3)  # 16 + 3 * 8 = 40
        self.transition = nn.Sequential(_bn(40), nn.ReLU(), nn.Conv2d(40, 24, 1, bias=False), nn.AvgPool2d(2))
        self.inception = Inception(24)  # 8 + 12 + 8 + 8 = 36
        self.norm = _bn(36)
        self.fc = nn.Linear(36, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inception(self.transition(self.block1(self.stem(x))))
        return self.fc(torch.relu(self.norm(x)).mean([2, 3]))


FAMILIES: dict[str, type[nn.Module]] = {
    "mobilenetv3": MobileNetV3Like,
    "shufflenetv2": ShuffleNetV2Like,
    "regnet": RegNetLike,
    "convnext": ConvNeXtLike,
    "densenet": DenseNetLike,
}
#: modules that normalise over channels: cutting a channel changes the others' statistics,
#: so a cut touching one is valid but not equal to zeroing that channel
CHANNEL_NORMS = (nn.LayerNorm, nn.GroupNorm, LayerNorm2d)


def build(name: str, seed: int = 0) -> nn.Module:
    """A family member with seeded random weights and randomised BN statistics, in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FAMILIES[name]()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                nn.init.uniform_(m.weight, 0.5, 1.5)
                nn.init.uniform_(m.bias, -0.2, 0.2)
            elif isinstance(m, LayerNorm2d):
                nn.init.uniform_(m.weight, 0.5, 1.5)
                nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.eval()


def example_input(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*INPUT_SHAPE, generator=g)
