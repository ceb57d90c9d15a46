"""``--backend auto`` picks the fastest artifact whose outputs and accuracy pass, never one
that failed parity, and says why; on a CPU target it does not build an untuned TVM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgeprune.bench.stats import LatencyStats
from edgeprune.bench.settings import BenchSettings
from edgeprune.compile.summarize import choose_backend
from edgeprune.flows.compile import CompileOptions, compile_model
from edgeprune.compile.summary import BackendResult

FAST = BenchSettings(min_runs=5, min_time_s=0.05, warmup=1)


def result(name: str, ms: float, verified: bool | None = True, diff: float = 0.0, acc: float | None = 99.0,
           precision: str = "fp32", error: str | None = None) -> BackendResult:
    return BackendResult(name=name, artifact=f"{name}/a", latency_ms=LatencyStats.from_times([ms] * 5),
                         verified=verified, max_abs_diff=diff, tolerance=1e-3, accuracy=acc, precision=precision,
                         error=error)


def test_fastest_artifact_that_failed_parity_is_never_chosen():
    chosen, why = choose_backend([result("onnxruntime", 2.0), result("tvm", 0.5, verified=False, diff=0.3),
                                  result("openvino", 1.5)], 99.0, 1.0)
    assert chosen == "openvino"
    assert "lowest median latency (1.500 ms)" in why and "onnxruntime 2.000 ms" in why
    assert "tvm failed parity (max diff 0.3 > 0.001)" in why


@pytest.mark.parametrize("bad,reason", [
    (result("tvm", 0.1, verified=False, diff=float("nan")), "tvm failed parity (max diff nan"),
    (result("tvm", 0.1, acc=90.0), "tvm lost accuracy (90.00% vs 99.00%)"),
    (result("tvm", 0.1, error="runner worker crashed"), "tvm failed (runner worker crashed)"),
    (result("onnxruntime-int8", 0.1, acc=None, precision="int8"), "onnxruntime-int8 accuracy unverified"),
])
def test_each_kind_of_failure_is_rejected_with_its_reason(bad, reason):
    chosen, why = choose_backend([result("onnxruntime", 2.0), bad], 99.0, 1.0)
    assert chosen == "onnxruntime" and reason in why


def test_an_int8_artifact_failing_its_relative_rule_is_rejected_not_a_crash():
    # INT8 parity uses a relative rule and carries no absolute tolerance (found on mobilenetv2)
    bad = result("openvino-int8", 0.1, verified=False, diff=0.7, precision="int8")
    bad.tolerance = None
    chosen, why = choose_backend([result("onnxruntime", 2.0), bad], 99.0, 1.0)
    assert chosen == "onnxruntime" and "openvino-int8 failed parity (max diff 0.7)" in why


def test_nothing_passing_chooses_nothing_and_lists_every_reason():
    chosen, why = choose_backend([result("onnxruntime", 1.0, verified=False, diff=1.0),
                                  result("openvino", 1.0, error="build failed")], None, 1.0)
    assert chosen is None
    assert why.startswith("no artifact passed") and "onnxruntime failed parity" in why and "openvino failed" in why


def conv_model(path: Path, layers: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    nodes, inits, x, c = [], [], "input", 3
    for i in range(layers):
        inits.append(numpy_helper.from_array((rng.standard_normal((16, c, 3, 3)) / 6).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"y{i}" if i < layers - 1 else "output"], pads=[1, 1, 1, 1]))
        x, c = f"y{i}", 16
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 16, 32, 32])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def test_auto_end_to_end_skips_a_faster_wrong_artifact(tmp_path):
    """openvino is handed a prebuilt artifact that is 4x cheaper but computes something else."""
    from edgeprune.config.devices import LOCAL
    from edgeprune.config.targets import get_target
    from edgeprune.models.spec import load_model

    good = conv_model(tmp_path / "model.onnx", layers=4, seed=0)
    wrong = conv_model(tmp_path / "wrong.onnx", layers=1, seed=1)
    model = load_model(str(good), log=lambda _m: None)
    s = compile_model(model, get_target("host"), LOCAL, tmp_path / "out",
                      CompileOptions(backends=("onnxruntime", "openvino"), bench=FAST,
                                     prebuilt=(("openvino", str(wrong)),)), log=lambda _m: None)
    by = {b.name: b for b in s.backends}
    assert by["openvino"].ok and by["openvino"].verified is False
    assert by["onnxruntime"].verified is True
    assert s.backend == "onnxruntime"
    assert "rejected: openvino failed parity" in s.choice_reason
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["backend"] == "onnxruntime" and "failed parity" in summary["choice_reason"]
    assert "openvino failed parity" in (tmp_path / "out" / "report.md").read_text()


def test_cli_auto_prints_the_choice_and_why(tmp_path):
    from edgeprune.cli import cli

    model = conv_model(tmp_path / "m.onnx", layers=2, seed=0)
    res = CliRunner().invoke(cli, ["compile", "--model", str(model), "--backend", "auto", "--out", str(tmp_path / "o"),
                                   "--min-runs", "5", "--min-time", "0.05", "--warmup", "1"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "chosen: " in res.output and "lowest median latency" in res.output
    # auto on a CPU target leaves an untuned TVM out (it never wins there), and says so
    assert "building tvm" not in res.output and "note: tvm skipped: no tuning records" in res.output


def test_a_runner_up_that_won_some_rounds_is_reported_as_a_tie_within_noise():
    a, b = result("onnxruntime", 2.0), result("openvino", 2.0)
    a.round_medians_ms, b.round_medians_ms = [2.00, 2.10, 1.90], [1.95, 2.20, 2.05]
    chosen, why = choose_backend([a, b], 99.0, 1.0)
    # decided on the fast state of the round medians (1.95 vs 2.00), not on one series
    assert chosen == "onnxruntime"
    assert "1.950 ms, fast state of 3 interleaved rounds" in why
    assert "openvino was faster in 1 of 3 interleaved rounds (+2.6%): a tie within this device's noise" in why


def test_a_slow_state_hitting_one_backend_does_not_decide():
    # this host's slow state adds time per thread sync: mobilenetv2 ORT rounds 6.6 / 3.9 ms, OV 6.2 / 3.9 ms
    a, b = result("onnxruntime", 5.0), result("openvino", 5.0)
    a.round_medians_ms, b.round_medians_ms = [6.63, 3.91, 6.64], [3.98, 6.22, 6.20]
    chosen, why = choose_backend([a, b], 99.0, 1.0)
    assert chosen == "onnxruntime" and "3.910 ms" in why and "openvino 3.980 ms" in why


def test_compile_interleaves_backends_in_rounds_and_keeps_one_result_each(tmp_path):
    from edgeprune.config.devices import LOCAL
    from edgeprune.config.targets import get_target
    from edgeprune.models.spec import load_model

    model = load_model(str(conv_model(tmp_path / "model.onnx", layers=2, seed=0)), log=lambda _m: None)
    s = compile_model(model, get_target("host"), LOCAL, tmp_path / "out",
                      CompileOptions(backends=("onnxruntime", "openvino"), bench=FAST), log=lambda _m: None)
    by = {b.name: b for b in s.backends}
    for b in by.values():
        assert b.ok and b.verified is True, b
        assert len(b.round_medians_ms) == FAST.rounds == 3
        assert b.runs >= FAST.rounds  # every round's runs are kept
    assert "interleaved rounds" in s.choice_reason
    ids = [j["id"] for j in json.loads((tmp_path / "out" / "bundle" / "manifest.json").read_text())["jobs"]]
    assert ids == ["onnxruntime", "openvino", "openvino#r2", "onnxruntime#r2", "onnxruntime#r3", "openvino#r3"]
