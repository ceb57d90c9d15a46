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
- attention: the core ``softmax(q k^T / sqrt(d)) v`` on q, k, v of ``[rows, seq_len,
  channels]`` (the outputs of the q/k/v projections, which are separate ``linear``
  layers with ``rows = batch x tokens``), with the head split and merge a model runs
  around it: ``Reshape [B, T, H, d]``, ``Transpose`` to ``[B, H, T, d]`` (k to ``[B, H,
  d, T]``), ``MatMul``, ``Mul`` by ``1/sqrt(d)``, ``Softmax``, ``MatMul``, ``Transpose``
  and ``Reshape`` back to ``[B, T, channels]``: the nodes torch exports for
  hand-written attention and ``nn.MultiheadAttention`` (heads = channels // head_dim,
  so a pruned head count is a smaller H at the same d). Kernel timing sums all of them.

Grouped convs with a fixed group width (``PrunableLayer.group_width``) are built with
``groups = cin // group_width`` at the width measured, as the pruned model runs them.
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
    if layer.kind == "attention":
        return [(rows, max(1, layer.seq_len), cin)] * 3
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
    shapes = input_shapes(layer, cin)
    in_shape = shapes[0]
    in_names = ["x"] if len(shapes) == 1 else ["q", "k", "v"]
    inits: list = []
    nodes: list = []

    def init(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(arr, name))
        return name

    if layer.kind == "conv":
        kh, kw = layer.kernel
        groups = cin if layer.depthwise else layer.groups_at(cin)
        if layer.depthwise and cin != cout:
            raise ValueError(f"depthwise layer '{layer.name}' needs cin == cout, got {cin}->{cout}")
        if layer.group_width > 0 and not layer.depthwise and cin % layer.group_width:
            raise ValueError(f"grouped conv '{layer.name}' (group width {layer.group_width}) needs cin to be a "
                             f"multiple of it, got {cin}")
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
    elif layer.kind == "attention":
        nodes += _attention_nodes(layer, cin, cout, in_shape, init)
        out_shape = in_shape
    else:  # pragma: no cover - LayerKind is a Literal
        raise ValueError(f"unsupported layer kind '{layer.kind}'")

    graph = helper.make_graph(
        nodes, f"{layer.kind}_{cin}_{cout}",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(sh)) for n, sh in zip(in_names, shapes)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgeprune-lut")
    model.ir_version = min(model.ir_version, 8)  # readable by every backend we ship
    onnx.checker.check_model(model)
    return model


def _attention_nodes(layer: PrunableLayer, cin: int, cout: int, in_shape: tuple[int, ...], init) -> list:
    """The attention core's nodes on graph inputs q, k, v (see the module docstring)."""
    from onnx import helper

    d = int(layer.head_dim)
    if d < 1 or cin != cout or cin % d:
        raise ValueError(f"attention layer '{layer.name}' needs head_dim >= 1 and channels a multiple of it "
                         f"(cin == cout), got {cin}->{cout} with head_dim {d}")
    b, t, _ = in_shape
    split = init("split", np.array([b, t, cin // d, d], dtype=np.int64))
    merge = init("merge", np.array([b, t, cin], dtype=np.int64))
    scale = init("scale", np.array(1.0 / np.sqrt(d), dtype=np.float32))
    nodes = []
    for n in ("q", "k", "v"):
        nodes.append(helper.make_node("Reshape", [n, split], [f"{n}4"]))
        perm = [0, 2, 3, 1] if n == "k" else [0, 2, 1, 3]  # k straight to [B, H, d, T]
        nodes.append(helper.make_node("Transpose", [f"{n}4"], [f"{n}h"], perm=perm))
    return nodes + [
        helper.make_node("MatMul", ["qh", "kh"], ["s"]),
        helper.make_node("Mul", ["s", scale], ["ss"]),
        helper.make_node("Softmax", ["ss"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "vh"], ["o"]),
        helper.make_node("Transpose", ["o"], ["o4"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["o4", merge], ["y"]),
    ]


def write_layer_onnx(layer: PrunableLayer, cin: int, cout: int, path: Path, seed: int = 0) -> Path:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(layer_model(layer, cin, cout, seed), str(path))
    return path
