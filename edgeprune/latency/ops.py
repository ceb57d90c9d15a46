"""One non-prunable op (:class:`~edgeprune.latency.opshape.OpShape`) as a standalone
ONNX graph, and the :class:`~edgeprune.latency.layer_bundle.Job` that times it.

Why standalone graphs of cheap ops: a model pays for its residual adds, pooling,
squeeze-excitation gates, activations a backend does not fuse, concat and attention's
matmul + softmax, and a device model that predicts only convs and linears leaves all
of that to a per-model remainder. Timed the way layer points are (same runner, same
bundles, same reference unit), these points let the device model predict that
remainder for a model it has never seen.

Graphs are built like :mod:`edgeprune.latency.layers` (opset 17, IR <= 8, checked by
``onnx.checker``): every tensor operand is a graph input (activations are what these
ops read in a model), the inputs are random normal floats. What each op is:

- add / mul: ``x + y`` / ``x * y`` of two inputs of ``shape`` (a residual add, a gate);
- relu / sigmoid / hardswish: the activation on ``shape``;
- softmax: over the last axis;
- gap: ``GlobalAveragePool`` of ``[N, C, H, W]`` -> ``[N, C, 1, 1]``;
- mulgate: ``x * sigmoid(g)`` with ``g`` of ``[N, C, 1, 1]`` (squeeze-excitation's scale);
- maxpool / avgpool: ``k x k`` window, stride ``st``, padding ``p``;
- concat: ``n`` inputs of ``shape`` on axis 1;
- attention: ``softmax(Q K^T / sqrt(d)) V`` on ``[B, heads, tokens, dim]`` Q, K, V;
- transpose: the last two axes swapped;
- reshape: everything after axis 0 flattened.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from edgeprune.latency.layer_bundle import Job
from edgeprune.latency.layers import OPSET
from edgeprune.latency.opshape import OpShape

#: the cost estimate of an op point in MAC-equivalents per element read or written: cheap
#: ops are bound by memory, not arithmetic, so their flops alone would estimate them ~10x
#: too fast (the estimate only sizes bundles and the ETA; measured chunks correct it)
MACS_PER_ELEMENT = 8


def input_shapes(op: OpShape) -> list[tuple[int, ...]]:
    """The shapes of the op graph's inputs, in order."""
    s = op.shape
    if op.name in ("add", "mul"):
        return [s, s]
    if op.name == "concat":
        return [s] * op.param("n")
    if op.name == "mulgate":
        return [s, (s[0], s[1], 1, 1)]
    if op.name == "attention":
        return [s, s, s]
    return [s]


def output_shape(op: OpShape) -> tuple[int, ...]:
    s = op.shape
    if op.name == "gap":
        return (s[0], s[1], 1, 1)
    if op.name in ("maxpool", "avgpool"):
        k, st, p = op.param("k"), op.param("st"), op.param("p")
        return (s[0], s[1], (s[2] + 2 * p - k) // st + 1, (s[3] + 2 * p - k) // st + 1)
    if op.name == "concat":
        return (s[0], s[1] * op.param("n"), *s[2:])
    if op.name == "transpose":
        return (*s[:-2], s[-1], s[-2])
    if op.name == "reshape":
        return (s[0], math.prod(s[1:]))
    return s


def make_inputs(op: OpShape, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in input_shapes(op)]


def op_macs(op: OpShape) -> float:
    """The op's cost estimate in MAC-equivalents (see :data:`MACS_PER_ELEMENT`)."""
    return float(max(op.flops / 2, MACS_PER_ELEMENT * (op.elements_in + op.elements_out)))


def op_model(op: OpShape):
    """The ``onnx.ModelProto`` of ``op``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if op.name in ("maxpool", "avgpool") and min(output_shape(op)[2:]) < 1:
        raise ValueError(f"op {op.signature()}: the pool window does not fit the input")
    ins = [f"x{i}" for i in range(len(input_shapes(op)))]
    nodes: list = []
    inits: list = []
    name = op.name
    if name in ("add", "mul"):
        nodes.append(helper.make_node(name.capitalize(), ins, ["y"]))
    elif name in ("relu", "sigmoid"):
        nodes.append(helper.make_node(name.capitalize(), ins, ["y"]))
    elif name == "hardswish":
        nodes.append(helper.make_node("HardSwish", ins, ["y"]))
    elif name == "softmax":
        nodes.append(helper.make_node("Softmax", ins, ["y"], axis=-1))
    elif name == "gap":
        nodes.append(helper.make_node("GlobalAveragePool", ins, ["y"]))
    elif name == "mulgate":
        nodes += [helper.make_node("Sigmoid", [ins[1]], ["g"]), helper.make_node("Mul", [ins[0], "g"], ["y"])]
    elif name in ("maxpool", "avgpool"):
        k, st, p = op.param("k"), op.param("st"), op.param("p")
        nodes.append(helper.make_node("MaxPool" if name == "maxpool" else "AveragePool", ins, ["y"],
                                      kernel_shape=[k, k], strides=[st, st], pads=[p, p, p, p]))
    elif name == "concat":
        nodes.append(helper.make_node("Concat", ins, ["y"], axis=1))
    elif name == "attention":
        d = op.shape[-1]
        inits.append(numpy_helper.from_array(np.array(1.0 / math.sqrt(d), dtype=np.float32), "scale"))
        nodes += [helper.make_node("Transpose", [ins[1]], ["kt"], perm=[0, 1, 3, 2]),
                  helper.make_node("MatMul", [ins[0], "kt"], ["s"]),
                  helper.make_node("Mul", ["s", "scale"], ["ss"]),
                  helper.make_node("Softmax", ["ss"], ["p"], axis=-1),
                  helper.make_node("MatMul", ["p", ins[2]], ["y"])]
    elif name == "transpose":
        r = len(op.shape)
        nodes.append(helper.make_node("Transpose", ins, ["y"], perm=[*range(r - 2), r - 1, r - 2]))
    elif name == "reshape":
        inits.append(numpy_helper.from_array(np.array(output_shape(op), dtype=np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", [ins[0], "shape"], ["y"]))
    else:  # pragma: no cover - OpShape refuses unknown names
        raise ValueError(f"no graph for op {name!r}")
    graph = helper.make_graph(
        nodes, f"op_{name}",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in zip(ins, input_shapes(op))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(output_shape(op)))],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgeprune-lut")
    model.ir_version = min(model.ir_version, 8)  # readable by every backend we ship
    onnx.checker.check_model(model)
    return model


def write_op_onnx(op: OpShape, path: Path) -> Path:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(op_model(op), str(path))
    return path


def op_job(op: OpShape, timing: str) -> Job:
    """``op`` standalone, keyed by its signature (like
    :func:`~edgeprune.latency.layer_bundle.layer_job` for a layer point); ``timing`` is
    the table's layer timing mode."""
    return Job(key=op.signature(), write_onnx=lambda dst: write_op_onnx(op, dst), inputs=lambda: make_inputs(op),
               input_key=str(input_shapes(op)), macs=op_macs(op), timing=timing)
