"""Two "user-style" networks for benchmarks/time_to_first_prune.py, given to edgeprune the
way a user gives their own model: ``--model benchmarks.user_models:FACTORY`` from the
repository root (a plain torch ``nn.Module`` factory; edgeprune is not imported here).

Why these two: the issue asks whether a device model built once predicts models it has
never seen. The zoo's resnet18 / mobilenetv2 / digits-cnn use plain convs, ReLU(6) and
224x224 or 32x32 inputs; these add what real user models have and the zoo lacks, at
input sizes no table was measured for:

* :func:`mobilenetv3_like` (3x120x120): MobileNetV3-Large's block list - inverted
  residuals with 3x3 and 5x5 depthwise convs, squeeze-excitation (avg-pool, 1x1 reduce,
  ReLU, 1x1 expand, hardsigmoid, multiply), hardswish, BatchNorm momentum 0.01 (as in
  torchvision's MobileNetV3), a hardswish 1280-wide head.
* :func:`regnet_like` (3x80x80): RegNetX-400MF's stages (depths 1/2/7/12, widths
  32/64/160/384) of X blocks - 1x1, 3x3 *grouped* conv with a fixed group width of 16,
  1x1, residual add with a strided 1x1 projection where the shape changes.

The input sizes are chosen off the device model's calibration suite, which times convs at
the spatial sizes of 224-, 96- and 64-pixel inputs (edgeprune/latency/suite.py ``HW``):
120 gives 60/30/15/8/4 and 80 gives 40/20/10/5/3, so the device model has to predict
shapes it never measured, as it would for a user's model.

Weights are random (seeded): latency does not depend on them. Because a randomly
initialised net in eval mode can shrink or blow up its activations (running mean 0,
var 1), each factory sets the BatchNorm statistics from two seeded random batches, so the
exported ONNX matches torch (edgeprune checks output parity). BN momentum 0.01 would
move the statistics only 1 % per pass, so the calibration uses a cumulative average
(``momentum=None``) and puts 0.01 back afterwards.
"""

from __future__ import annotations

import torch
from torch import nn

#: benchmark name -> (module:factory spec, input shape); the benchmark passes the shape
#: as --input-shape too, though each module also declares ``example_input_shape``
USER_MODELS: dict[str, tuple[str, tuple[int, ...]]] = {
    "mobilenetv3-like": ("benchmarks.user_models:mobilenetv3_like", (1, 3, 120, 120)),
    "regnet-like": ("benchmarks.user_models:regnet_like", (1, 3, 80, 80)),
}
BN_MOMENTUM = 0.01
SEED = 0
#: BatchNorm scale of the last BN in a RegNet residual branch: with 1.0, 22 random blocks
#: sum to outputs of std ~13, where ONNX Runtime's float error (2e-4) fails edgeprune's
#: 1e-4 output-parity check; trained RegNets start their branches near zero for the same
#: reason (timm's ``zero_init_last``)
BRANCH_GAMMA = 0.25


def _divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, momentum=BN_MOMENTUM)


def _conv_bn_act(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride=stride, padding=(k - 1) // 2, groups=groups,
                                         bias=False), _bn(c_out)]
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """x * hardsigmoid(expand(relu(reduce(avgpool(x))))): a per-channel gate that ties the
    block's expanded channels to the gate's output."""

    def __init__(self, c: int, squeeze: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.gate = nn.Hardsigmoid(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class InvertedResidualSE(nn.Module):
    """MobileNetV3 block: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 linear projection,
    residual add when the shape is unchanged."""

    def __init__(self, c_in: int, k: int, exp: int, c_out: int, se: bool, act: type[nn.Module], stride: int) -> None:
        super().__init__()
        self.use_res = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if exp != c_in:
            layers.append(_conv_bn_act(c_in, exp, 1, act=act))
        layers.append(_conv_bn_act(exp, exp, k, stride=stride, groups=exp, act=act))
        if se:
            layers.append(SqueezeExcite(exp, _divisible(exp // 4)))
        layers.append(_conv_bn_act(exp, c_out, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_res else out


class MobileNetV3Like(nn.Module):
    # kernel, expanded channels, out channels, SE, activation ("RE" relu / "HS" hardswish), stride
    BLOCKS = ((3, 16, 16, False, "RE", 1), (3, 64, 24, False, "RE", 2), (3, 72, 24, False, "RE", 1),
              (5, 72, 40, True, "RE", 2), (5, 120, 40, True, "RE", 1), (5, 120, 40, True, "RE", 1),
              (3, 240, 80, False, "HS", 2), (3, 200, 80, False, "HS", 1), (3, 184, 80, False, "HS", 1),
              (3, 184, 80, False, "HS", 1), (3, 480, 112, True, "HS", 1), (3, 672, 112, True, "HS", 1),
              (5, 672, 160, True, "HS", 2), (5, 960, 160, True, "HS", 1), (5, 960, 160, True, "HS", 1))

    example_input_shape = USER_MODELS["mobilenetv3-like"][1]

    def __init__(self, num_classes: int = 100) -> None:
        super().__init__()
        acts = {"RE": nn.ReLU, "HS": nn.Hardswish}
        layers: list[nn.Module] = [_conv_bn_act(3, 16, 3, stride=2, act=nn.Hardswish)]
        c = 16
        for k, exp, c_out, se, act, stride in self.BLOCKS:
            layers.append(InvertedResidualSE(c, k, exp, c_out, se, acts[act], stride))
            c = c_out
        layers.append(_conv_bn_act(c, 960, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(960, 1280), nn.Hardswish(inplace=True), nn.Dropout(0.2),
                                        nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class XBlock(nn.Module):
    """RegNetX block: 1x1 -> 3x3 grouped (fixed group width) -> 1x1, residual add; a strided
    1x1 projection on the shortcut when the width or the resolution changes."""

    def __init__(self, c_in: int, c_out: int, stride: int, group_width: int) -> None:
        super().__init__()
        self.a = _conv_bn_act(c_in, c_out, 1)
        self.b = _conv_bn_act(c_out, c_out, 3, stride=stride, groups=c_out // group_width)
        self.c = _conv_bn_act(c_out, c_out, 1, act=None)
        self.proj = _conv_bn_act(c_in, c_out, 1, stride=stride, act=None) if stride != 1 or c_in != c_out else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        short = x if self.proj is None else self.proj(x)
        return self.relu(short + self.c(self.b(self.a(x))))


class RegNetLike(nn.Module):
    DEPTHS = (1, 2, 7, 12)
    WIDTHS = (32, 64, 160, 384)
    GROUP_WIDTH = 16

    example_input_shape = USER_MODELS["regnet-like"][1]

    def __init__(self, num_classes: int = 100) -> None:
        super().__init__()
        self.stem = _conv_bn_act(3, 32, 3, stride=2)
        stages: list[nn.Module] = []
        c = 32
        for depth, width in zip(self.DEPTHS, self.WIDTHS):
            blocks = [XBlock(c if i == 0 else width, width, 2 if i == 0 else 1, self.GROUP_WIDTH) for i in range(depth)]
            stages.append(nn.Sequential(*blocks))
            c = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    for m in module.modules():  # residual branches start small (timm's zero_init_last, but not zero)
        if isinstance(m, XBlock):
            nn.init.constant_(m.c[1].weight, BRANCH_GAMMA)


def _ready(module: nn.Module) -> nn.Module:
    """Seeded init, BatchNorm statistics from two seeded random batches (cumulative
    average, then momentum 0.01 again), eval mode. The caller's RNG is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        _init(module)
        bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        module.train()
        with torch.no_grad():
            module(torch.randn(2, *module.example_input_shape[1:]))
        for bn in bns:
            bn.momentum = BN_MOMENTUM
    return module.eval()


def mobilenetv3_like() -> nn.Module:
    """MobileNetV3-Large-like network for 3x120x120 input, 100 classes, random weights."""
    return _ready(MobileNetV3Like())


def regnet_like() -> nn.Module:
    """RegNetX-400MF-like network for 3x80x80 input, 100 classes, random weights."""
    return _ready(RegNetLike())
