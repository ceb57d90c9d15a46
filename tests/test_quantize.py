"""INT8 post-training static quantization (``--quantize int8``).

Stated tolerance: on the digits validation split (360 real images) the INT8 model's top-1
accuracy is within ``INT8_ACCURACY_TOLERANCE`` = 1.0 point of the fp32 model's, and its
logits stay within the loose INT8 output bound (quantize.INT8_OUTPUT_REL_TOL x max |fp32|).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgeprune.cli import cli
from edgeprune.compile.export import export_onnx
from edgeprune.compile.quantize import INT8_OUTPUT_REL_TOL, calibration_batches, quantize_int8

INT8_ACCURACY_TOLERANCE = 1.0  # points of top-1 accuracy on digits
FAST = ["--min-runs", "5", "--min-time", "0.05", "--warmup", "1"]


@pytest.fixture(scope="module")
def digits():
    from edgeprune.models.spec import load_model

    return load_model("zoo:digits-cnn", log=lambda _m: None)


@pytest.fixture(scope="module")
def digits_int8(digits, tmp_path_factory):
    d = tmp_path_factory.mktemp("int8")
    exp = export_onnx(digits, d / "model.onnx")
    q = quantize_int8(digits, exp.path, d / "model.int8.onnx", samples=256)
    return exp.path, q


def convs(path: Path) -> None:
    """Two 3x3 convolutions on 1x3x16x16, as an ONNX file (a model without data)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((16, 3, 3, 3)) / 5).astype(np.float32)
    w2 = (rng.standard_normal((16, 16, 3, 3)) / 12).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Conv", ["input", "w1"], ["a"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a"], ["b"]),
         helper.make_node("Conv", ["b", "w2"], ["output"], pads=[1, 1, 1, 1])], "convs",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 16, 16, 16])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))


def ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])


def test_calibration_uses_real_training_samples(digits):
    batches, synthetic, source = calibration_batches(digits, 64)
    assert not synthetic and "training split" in source and "digits" in source
    assert len(batches) == 64 and batches[0][0].shape == digits.example_inputs[0].shape
    train = digits.data.train.inputs[0]
    b = batches[5][0][0]
    assert any(np.array_equal(b, t) for t in train)  # a real training image, not noise
    val = digits.data.val.inputs[0]
    assert not any(np.array_equal(b, v) for v in val)  # calibration never sees held-out data


def test_int8_model_is_qdq_per_channel(digits_int8):
    _fp32, q = digits_int8
    assert q.quantized_nodes > 0 and q.per_channel and not q.synthetic_calibration and q.calibration_samples == 256
    model = onnx.load(str(q.path))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    inits = {i.name: i for i in model.graph.initializer}
    conv_w = [n.input[1] for n in model.graph.node if n.op_type == "Conv"]
    weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] in conv_w]
    assert weight_dq, "conv weights are not quantized"
    for dq in weight_dq:  # one scale per output channel, int8 weights
        scale = onnx.numpy_helper.to_array(inits[dq.input[1]])
        w = onnx.numpy_helper.to_array(inits[dq.input[0]])
        assert w.dtype == np.int8 and scale.ndim == 1 and scale.shape[0] == w.shape[0] > 1
    assert "INT8" in q.describe() and "real samples" in q.describe()


def test_int8_accuracy_on_digits_within_tolerance_of_fp32(digits, digits_int8):
    fp32, q = digits_int8
    x, y = digits.data.val.inputs[0], digits.data.val.labels
    ref = ort_logits(fp32, x)
    got = ort_logits(q.path, x)
    acc32 = 100 * float(np.mean(ref.argmax(1) == y))
    acc8 = 100 * float(np.mean(got.argmax(1) == y))
    assert acc32 > 95
    assert acc8 >= acc32 - INT8_ACCURACY_TOLERANCE, (acc8, acc32)
    assert np.abs(got - ref).max() <= INT8_OUTPUT_REL_TOL * np.abs(ref).max()
    assert np.abs(got - ref).max() > 1e-4  # really int8: it does not meet the fp32 parity rule


def test_compile_quantize_int8_benchmarks_int8_beside_fp32(tmp_path):
    out = tmp_path / "c"
    res = CliRunner().invoke(cli, ["compile", "--model", "zoo:digits-cnn", "--backend", "onnxruntime", "--quantize",
                                   "int8", "--out", str(out), "--json", *FAST], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    by = {b["name"]: b for b in s["backends"]}
    assert set(by) == {"onnxruntime", "onnxruntime-int8"}
    fp32, int8 = by["onnxruntime"], by["onnxruntime-int8"]
    assert fp32["precision"] == "fp32" and int8["precision"] == "int8"
    assert fp32["verified"] and int8["verified"]
    assert int8["tolerance"] > 100 * fp32["tolerance"]  # the INT8 rule, not the fp32 one
    assert int8["accuracy"] >= s["original"]["accuracy"] - INT8_ACCURACY_TOLERANCE
    assert fp32["latency_ms"]["median"] > 0 and int8["latency_ms"]["median"] > 0
    assert s["backend"] in by
    assert any("INT8 artifacts are not held to the fp32 tolerance" in n for n in s["notes"])
    assert (out / "model.int8.onnx").exists()
    assert "onnxruntime-int8" in (out / "report.md").read_text()


def test_int8_without_labelled_data_is_never_chosen(tmp_path):
    """An ONNX file has no data: calibration is synthetic and auto must not pick INT8 on faith."""
    from edgeprune.bench.settings import BenchSettings
    from edgeprune.flows.compile import CompileOptions, compile_model
    from edgeprune.config.devices import LOCAL
    from edgeprune.config.targets import get_target
    from edgeprune.models.spec import load_model

    path = tmp_path / "m.onnx"
    convs(path)
    model = load_model(str(path), log=lambda _m: None)
    s = compile_model(model, get_target("host"), LOCAL, tmp_path / "out",
                      CompileOptions(backends=("onnxruntime",), quantize="int8",
                                     bench=BenchSettings(min_runs=5, min_time_s=0.05, warmup=1)),
                      log=lambda _m: None)
    assert s.backend == "onnxruntime"
    assert "onnxruntime-int8 accuracy unverified" in s.choice_reason
    assert any("SYNTHETIC" in n for n in s.notes)
