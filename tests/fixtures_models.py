"""Tiny models for the model-spec tests: a factory the tests name as
``fixtures_models:tiny_cnn``, and a class that is pickled whole to test the refusal."""

from __future__ import annotations

import torch
from torch import nn


class TinyCNN(nn.Module):
    """8x8 single-channel input, 10 classes; small enough to build in microseconds."""

    example_input_shape = (1, 1, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.mean(dim=(2, 3)))


class NoShape(nn.Module):
    """Same as TinyCNN but does not declare its input shape."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN()


def no_shape() -> nn.Module:
    return NoShape()


def not_a_module() -> str:
    return "surprise"
