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


def tiny_matmul_onnx(path):
    """Write a small MatMul-Add-Relu ONNX model (batch 4, 64 -> 32) to ``path``; returns it."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["a"]),
         helper.make_node("Relu", ["a"], ["y"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32])], [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path
