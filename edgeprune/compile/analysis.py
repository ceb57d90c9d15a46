"""Parameter and MAC counts read off an ONNX graph (after shape inference).

Counting on the ONNX graph rather than the torch module means ONNX-only models get the
same numbers, and the count is of what is actually deployed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

    from edgeprune.models.base import LoadedModel


@dataclass
class GraphCost:
    params: int
    macs: int

    @property
    def flops(self) -> int:
        return 2 * self.macs


def _shape(vi) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]


def model_cost(model: "LoadedModel") -> GraphCost:
    """The cost of a model as it would be deployed: its ONNX export, counted by
    :func:`graph_cost`. ``prune`` and ``compile`` both count this way, so one model
    has one parameter and MAC count wherever it is reported."""
    import onnx

    from edgeprune.compile.export import onnx_proto

    if model.module is None:
        assert model.onnx_path is not None
        return graph_cost(model.onnx_path)
    return graph_cost(onnx.shape_inference.infer_shapes(onnx_proto(model)))


def graph_cost(onnx_model: "Path | onnx.ModelProto") -> GraphCost:
    """Parameters and MACs of an ONNX model (a file, or a shape-inferred ModelProto)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(onnx_model)) if isinstance(onnx_model, (str, Path)) else onnx_model
    g = m.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    shapes: dict[str, list[int]] = {}
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        shapes[vi.name] = _shape(vi)
    for name, arr in inits.items():
        shapes[name] = list(arr.shape)
    params = int(sum(int(np.prod(a.shape)) for a in inits.values() if a.dtype.kind == "f"))
    macs = 0
    for node in g.node:
        if node.op_type == "Conv":
            w = shapes.get(node.input[1])
            out = shapes.get(node.output[0])
            if w and out:
                # out elements x (in_channels/groups x kernel area)
                macs += int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
            out = shapes.get(node.output[0])
            if a and out:
                k = a[-1]
                if node.op_type == "Gemm":
                    trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
                    k = a[0] if trans_a else a[-1]
                macs += int(np.prod(out)) * int(k)
        elif node.op_type in ("LSTM", "GRU", "RNN"):
            x, w, r = shapes.get(node.input[0]), shapes.get(node.input[1]), shapes.get(node.input[2])
            if x and w and r:
                seq, batch = x[0], x[1]
                gates_h = w[1]  # num_directions x (gates*hidden) x input
                macs += seq * batch * w[0] * gates_h * (w[2] + r[2])
    return GraphCost(params=params, macs=int(macs))
