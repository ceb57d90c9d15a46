"""The zoo's network definitions, written out here because torchvision cannot be
installed beside the pinned CPU torch.

Sizes follow DESIGN.md "Demo models must be compute-bound": each demo model does tens of
MFLOPs (or a few million MACs per request, times a batch of requests) per inference, so
its latency is dominated by the layers pruning changes, not by per-call runtime overhead.
Layer names are plain and stable (``features.3``, ``layer2.0.conv1``, ``mlp.0``) because
latency tables and pruning plans refer to them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class DigitsCNN(nn.Module):
    """Plain VGG-style body for 1x32x32 digits, 10 classes: conv-BN-ReLU stages separated
    by max-pools, global average pool, linear head.

    ``width`` is the channel count of the first stage; each later stage doubles it, and
    ``depth`` gives the convs per stage. The default (width 32, depth (2, 3, 3): channels
    32/64/128, power-of-two counts so pruning can show the latency staircase) is about
    57 M MACs: ~0.5 ms in ONNX Runtime on 2 idle cores of the dev host (~1 ms on one),
    and trains to >99% validation accuracy in about a minute.
    """

    example_input_shape = (1, 1, 32, 32)

    def __init__(
        self, width: int = 32, depth: Sequence[int] = (2, 3, 3), num_classes: int = 10, in_channels: int = 1
    ) -> None:
        super().__init__()
        self.config = {"width": width, "depth": list(depth), "num_classes": num_classes, "in_channels": in_channels}
        layers: list[nn.Module] = []
        c = in_channels
        for stage, n in enumerate(depth):
            if stage > 0:
                layers.append(nn.MaxPool2d(2))
            c_out = width * 2**stage
            for _ in range(n):
                layers += _conv_bn_relu(c, c_out)
                c = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs and a residual add (1x1 projection when the
    shape changes). The add ties the channels of ``conv2`` to the block's input, which
    is exactly the dependency structured pruning has to respect."""

    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def _init_resnet_like(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class SmallResNet(nn.Module):
    """A three-stage ResNet for 1x32x32 digits (about 50 M MACs at ``width=32``).

    Used for pruning benchmarks of residual structure: every stage ends in adds whose
    channels must be pruned together.
    """

    example_input_shape = (1, 1, 32, 32)

    def __init__(
        self, width: int = 32, blocks: Sequence[int] = (1, 1, 1), num_classes: int = 10, in_channels: int = 1
    ) -> None:
        super().__init__()
        self.config = {"width": width, "blocks": list(blocks), "num_classes": num_classes, "in_channels": in_channels}
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        layers, c = [], width
        for i, n in enumerate(blocks):
            c_out = width * 2**i
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(c, c_out, stride)] + [BasicBlock(c_out, c_out) for _ in range(n - 1)]
            layers.append(nn.Sequential(*stage))
            c = c_out
        self.layer1, self.layer2, self.layer3 = layers  # fixed names for pruning plans
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        _init_resnet_like(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ResNet18(nn.Module):
    """Standard ResNet-18 (BasicBlock, [2, 2, 2, 2]) for 3x224x224 ImageNet-shaped input.

    Random weights only: no pretrained weights can be downloaded on these machines, so
    the zoo uses it for latency work (profiling, compiling, benchmarking), not accuracy.
    """

    example_input_shape = (1, 3, 224, 224)

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.config = {"num_classes": num_classes}
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        c = 64
        stages = []
        for i, c_out in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(c, c_out, stride), BasicBlock(c_out, c_out)))
            c = c_out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        _init_resnet_like(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Channel rounding used by the reference MobileNetV2 (keeps counts SIMD-friendly)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> 3x3 depthwise -> 1x1 linear projection, with a
    residual add when stride is 1 and the channel count is unchanged."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(c_in * expand_ratio))
        self.use_res_connect = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """Standard MobileNetV2 (width 1.0) for 3x224x224 input; random weights, latency
    work only (no pretrained weights offline)."""

    example_input_shape = (1, 3, 224, 224)

    # t (expansion), c (channels), n (repeats), s (first stride)
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0) -> None:
        super().__init__()
        self.config = {"num_classes": num_classes, "width_mult": width_mult}
        c_in = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(3, c_in, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_in), nn.ReLU6(inplace=True))
        ]
        for t, c, n, s in self.SETTINGS:
            c_out = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(c_in, c_out, s if i == 0 else 1, t))
                c_in = c_out
        features.append(
            nn.Sequential(nn.Conv2d(c_in, self.last_channel, 1, bias=False), nn.BatchNorm2d(self.last_channel), nn.ReLU6(inplace=True))
        )
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.last_channel, num_classes))
        _init_resnet_like(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


class _RNNDigits(nn.Module):
    """Shared body of the recurrent digit classifiers: one batch_first recurrent layer
    reads the image row by row (32 steps of 32 pixels); a linear head classifies the
    last hidden state."""

    rnn_type: type[nn.RNNBase] = nn.LSTM
    example_input_shape = (1, 32, 32)

    def __init__(self, hidden: int = 256, input_size: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.config = {"hidden": hidden, "input_size": input_size, "num_classes": num_classes}
        self.rnn = self.rnn_type(input_size, hidden, num_layers=1, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1, :])


class LSTMDigits(_RNNDigits):
    """LSTM over the 32 rows of an upsampled digit (hidden 256: ~9.4 M MACs per image)."""

    rnn_type = nn.LSTM


class GRUDigits(_RNNDigits):
    """GRU twin of :class:`LSTMDigits` (three gates instead of four), for GRU pruning."""

    rnn_type = nn.GRU


class RecsysMLP(nn.Module):
    """NCF-style recommender: user and item embeddings concatenated, then an MLP, one
    logit ("liked") per request; forward takes int64 ``(user_ids, item_ids)``. Served in batches of 256 requests, where the MLP
    (about 0.2 M MACs per request at the default sizes, ~50 M per batch) dominates."""

    example_input_shape = None  # two int64 inputs; see the zoo entry

    def __init__(self, n_users: int, n_items: int, emb_dim: int = 32, hidden: Sequence[int] = (512, 256, 128)) -> None:
        super().__init__()
        self.config = {"n_users": n_users, "n_items": n_items, "emb_dim": emb_dim, "hidden": list(hidden)}
        self.user_emb = nn.Embedding(n_users, emb_dim)
        self.item_emb = nn.Embedding(n_items, emb_dim)
        layers: list[nn.Module] = []
        c = 2 * emb_dim
        for h in hidden:
            layers += [nn.Linear(c, h), nn.ReLU(inplace=True)]
            c = h
        self.mlp = nn.Sequential(*layers)
        self.out = nn.Linear(c, 1)
        nn.init.normal_(self.user_emb.weight, 0, 0.1)
        nn.init.normal_(self.item_emb.weight, 0, 0.1)

    def forward(self, user_ids: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.user_emb(user_ids), self.item_emb(item_ids)], dim=-1)
        return self.out(self.mlp(x))  # [B, 1]


class DLRM(nn.Module):
    """DLRM-like click model (Naumov et al. 2019): one embedding bag per sparse feature,
    a bottom MLP over the dense features whose output width is the embedding dim, the
    pairwise dot products of those F = sparse + 1 vectors (upper triangle of
    ``Z @ Z^T``, F (F - 1) / 2 numbers), concatenated with the bottom output into a top
    MLP with one logit. Forward takes float32 ``dense [B, n_dense]`` and int64
    ``sparse [B, n_sparse, bag]`` (``bag`` ids per feature, summed).

    Bags are ``nn.Embedding`` + sum by default: ONNX Gather + ReduceSum, which every
    backend runs as it is. ``embedding_bag=True`` uses ``nn.EmbeddingBag(mode="sum")``
    (the same numbers), which torch exports as an ONNX ``Loop`` over bags.

    Pruning: the embeddings and the bottom MLP's last layer stay whole (their width is
    the embedding dim every dot product of the interaction is taken over); the bottom's
    hidden layers and the top MLP shrink. Served in batches of 256 requests; the top MLP
    dominates (about 0.2 M MACs per request at the default sizes).
    """

    example_input_shape = None  # two inputs (float32 dense, int64 sparse); see the zoo entry

    def __init__(self, n_dense: int = 13, vocab_sizes: Sequence[int] = (100,) * 8, emb_dim: int = 32,
                 bottom: Sequence[int] = (128, 64), top: Sequence[int] = (512, 256), embedding_bag: bool = False) -> None:
        super().__init__()
        self.config = {"n_dense": n_dense, "vocab_sizes": list(vocab_sizes), "emb_dim": emb_dim,
                       "bottom": list(bottom), "top": list(top), "embedding_bag": embedding_bag}
        self.embedding_bag = embedding_bag
        make = (lambda n: nn.EmbeddingBag(n, emb_dim, mode="sum")) if embedding_bag else (lambda n: nn.Embedding(n, emb_dim))
        self.emb = nn.ModuleList(make(n) for n in vocab_sizes)
        for e in self.emb:
            nn.init.normal_(e.weight, 0, 0.1)
        self.bottom = _mlp(n_dense, [*bottom, emb_dim], last_relu=True)
        f = len(vocab_sizes) + 1
        li, lj = torch.triu_indices(f, f, offset=1)
        self.register_buffer("li", li, persistent=False)
        self.register_buffer("lj", lj, persistent=False)
        self.top = _mlp(emb_dim + f * (f - 1) // 2, [*top, 1], last_relu=False)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        b = self.bottom(dense)
        if self.embedding_bag:
            embs = [e(sparse[:, k]) for k, e in enumerate(self.emb)]
        else:
            embs = [e(sparse[:, k]).sum(1) for k, e in enumerate(self.emb)]
        z = torch.stack([b, *embs], 1)  # [B, F, D]
        inter = torch.bmm(z, z.transpose(1, 2))[:, self.li, self.lj]  # [B, F(F-1)/2]
        return self.top(torch.cat([b, inter], 1))  # [B, 1]


def _mlp(c_in: int, widths: Sequence[int], last_relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k, w in enumerate(widths):
        layers.append(nn.Linear(c_in, w))
        if last_relu or k < len(widths) - 1:
            layers.append(nn.ReLU(inplace=True))
        c_in = w
    return nn.Sequential(*layers)
