"""Tiny models for the latency-table tests (loaded as ``tests.lut_models:tiny_cnn``)."""

from __future__ import annotations

from torch import nn


class TinyCNN(nn.Module):
    """conv 3->16 -> conv 16->16 -> pool -> linear 16->4, on 1x3x12x12: tiny on purpose, so
    a real profile (every point built and timed through the bundle runner) takes seconds."""

    example_input_shape = (1, 3, 12, 12)

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


def tiny_cnn() -> nn.Module:
    return TinyCNN().eval()


class SmallCNN(nn.Module):
    """Three 3x3 convs at 16x16 (3->32->32->32) + linear: small enough to profile in
    seconds, compute-bound enough that pruning its convs moves its latency (the tiny CNN
    above is per-call overhead almost entirely: pruning it to its narrowest saves ~10 %)."""

    example_input_shape = (1, 3, 16, 16)

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 32, 3, padding=1)
        self.c3 = nn.Conv2d(32, 32, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        x = self.act(self.c3(self.act(self.c2(self.act(self.c1(x))))))
        return self.fc(self.pool(x).flatten(1))


def small_cnn() -> nn.Module:
    return SmallCNN().eval()
