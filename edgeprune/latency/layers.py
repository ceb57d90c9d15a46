"""One prunable layer as a standalone ONNX graph, at a given (input, output) width.

The latency table times exactly what the backend will run for that layer inside the
model: the same op (Conv / Gemm / LSTM / GRU), attributes, weights as initializers (so
backends can pre-pack them, as they do in the full model) and the real input shape.
Activations, BatchNorm and residual adds are *not* included: backends fuse them into the
conv's epilogue, and whatever they cost is part of the model's measured remainder (see
:mod:`edgeprune.latency.predictor`).

Shapes:

- conv: input ``[rows, cin, H, W]`` (``rows`` is the batch; 1 for the zoo CNNs),
  weight ``[cout, cin/groups, kh, kw]``; depthwise convs have ``groups = cin = cout``,
  grouped convs ``PrunableLayer.groups`` (cin and cout multiples of it).
- linear: ``Gemm`` on ``[rows, cin]`` with ``transB=1`` (what torch exports for
  ``nn.Linear`` on a flattened input).
- lstm / gru: ``X [seq_len, rows, cin]``, one direction, torch gate semantics
  (GRU ``linear_before_reset=1``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeprune.prune.space import PrunableLayer

OPSET = 17


def input_shapes(layer: PrunableLayer, cin: int) -> list[tuple[int, ...]]:
    """Shapes of the standalone graph's inputs at ``cin`` input channels."""
    rows = max(1, int(layer.rows))
    if layer.kind == "conv":
        if layer.input_hw is None:
            raise ValueError(f"conv layer '{layer.name}' has no input_hw: cannot build it standalone")
        h, w = layer.input_hw
        return [(rows, cin, h, w)]
    if layer.kind == "linear":
        return [(rows, cin)]
    return [(max(1, layer.seq_len), rows, cin)]


def make_inputs(layer: PrunableLayer, cin: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in input_shapes(layer, cin)]


def _weights(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    # He-scaled normal values: realistic magnitudes, no denormals, no all-zero pages.
    return (rng.standard_normal(shape) * np.sqrt(2.0 / max(1, fan_in))).astype(np.float32)


def layer_model(layer: PrunableLayer, cin: int, cout: int, seed: int = 0):
    """The ``onnx.ModelProto`` of ``layer`` at ``cin`` -> ``cout`` channels."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if cin < 1 or cout < 1:
        raise ValueError(f"layer '{layer.name}': widths must be >= 1, got {cin}->{cout}")
    rng = np.random.default_rng(seed)
    (in_shape,) = input_shapes(layer, cin)
    inits: list = []
    nodes: list = []

    def init(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(arr, name))
        return name

    if layer.kind == "conv":
        kh, kw = layer.kernel
        groups = cin if layer.depthwise else max(1, int(layer.groups))
        if layer.depthwise and cin != cout:
            raise ValueError(f"depthwise layer '{layer.name}' needs cin == cout, got {cin}->{cout}")
        if groups > 1 and not layer.depthwise and (cin % groups or cout % groups):
            raise ValueError(f"grouped conv '{layer.name}' (groups={groups}) needs cin and cout to be multiples of "
                             f"{groups}, got {cin}->{cout}")
        w = init("W", _weights(rng, (cout, cin // groups, kh, kw), cin // groups * kh * kw))
        ins = ["x", w] + ([init("B", (rng.standard_normal(cout) * 0.1).astype(np.float32))] if layer.bias else [])
        nodes.append(helper.make_node(
            "Conv", ins, ["y"], kernel_shape=[kh, kw], strides=list(layer.stride),
            pads=[layer.padding[0], layer.padding[1], layer.padding[0], layer.padding[1]],
            dilations=list(layer.dilation), group=groups,
        ))
        h, wd = layer.input_hw  # type: ignore[misc]
        oh = (h + 2 * layer.padding[0] - layer.dilation[0] * (kh - 1) - 1) // layer.stride[0] + 1
        ow = (wd + 2 * layer.padding[1] - layer.dilation[1] * (kw - 1) - 1) // layer.stride[1] + 1
        out_shape: tuple[int, ...] = (in_shape[0], cout, oh, ow)
    elif layer.kind == "linear":
        w = init("W", _weights(rng, (cout, cin), cin))
        ins = ["x", w] + ([init("B", (rng.standard_normal(cout) * 0.1).astype(np.float32))] if layer.bias else [])
        nodes.append(helper.make_node("Gemm", ins, ["y"], transB=1))
        out_shape = (in_shape[0], cout)
    elif layer.kind in ("lstm", "gru"):
        gates = 4 if layer.kind == "lstm" else 3
        hidden = cout
        w = init("W", _weights(rng, (1, gates * hidden, cin), cin))
        r = init("R", _weights(rng, (1, gates * hidden, hidden), hidden))
        ins = ["x", w, r]
        if layer.bias:
            ins.append(init("B", (rng.standard_normal((1, 2 * gates * hidden)) * 0.1).astype(np.float32)))
        attrs = {"hidden_size": hidden}
        if layer.kind == "gru":
            attrs["linear_before_reset"] = 1
        nodes.append(helper.make_node(layer.kind.upper(), ins, ["y"], **attrs))
        out_shape = (in_shape[0], 1, in_shape[1], hidden)
    else:  # pragma: no cover - LayerKind is a Literal
        raise ValueError(f"unsupported layer kind '{layer.kind}'")

    graph = helper.make_graph(
        nodes, f"{layer.kind}_{cin}_{cout}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgeprune-lut")
    model.ir_version = min(model.ir_version, 8)  # readable by every backend we ship
    onnx.checker.check_model(model)
    return model


def write_layer_onnx(layer: PrunableLayer, cin: int, cout: int, path: Path, seed: int = 0) -> Path:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(layer_model(layer, cin, cout, seed), str(path))
    return path
