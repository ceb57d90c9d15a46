"""Output that says what to do (issue 18 item 5): every hint appears in the CLI table,
report.md and summary.json when its condition holds, and not otherwise. Real ONNX
Runtime, OpenVINO and (where it is the point) TVM, through ``compile_model`` and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgeprune.bench.settings import BenchSettings
from edgeprune.bench.stats import LatencyStats
from edgeprune.cli import cli
from edgeprune.compile.auto import auto_backends, tune_command
from edgeprune.compile.hints import NOISY_SPREAD, choice_hint, noise_hint, spread, tag
from edgeprune.compile.summarize import ms
from edgeprune.compile.summary import BackendResult
from edgeprune.compile.synthetic import findings
from edgeprune.config.devices import LOCAL
from edgeprune.config.targets import get_target
from edgeprune.flows.compile import CompileOptions, compile_model
from edgeprune.models.spec import load_model

FAST = BenchSettings(min_runs=5, min_time_s=0.05, warmup=1)
FAST_ARGS = ["--min-runs", "5", "--min-time", "0.05", "--warmup", "1"]


def quiet(_msg: str) -> None:
    pass


def save(path: Path, nodes, inits, inp, out) -> Path:
    g = helper.make_graph(nodes, path.stem, [inp], [out], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def conv_model(path: Path, layers: int = 2, seed: int = 0) -> Path:
    """Conv layers on 1x3x32x32, outputs in a normal range on N(0,1) inputs."""
    rng = np.random.default_rng(seed)
    nodes, inits, x, c = [], [], "input", 3
    for i in range(layers):
        inits.append(numpy_helper.from_array((rng.standard_normal((16, c, 3, 3)) / 6).astype(np.float32), f"w{i}"))
        y = f"y{i}" if i < layers - 1 else "output"
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [y], pads=[1, 1, 1, 1]))
        x, c = f"y{i}", 16
    return save(path, nodes, inits, helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32]),
                helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 16, 32, 32]))


def softmax_model(path: Path, scale: float, seed: int = 0) -> Path:
    """MatMul -> Softmax on 1x64. ``scale`` 100: logits in the thousands on N(0,1) inputs,
    so one class takes probability 1.0 (the SqueezeNet case); 0.01: a soft softmax."""
    w = (np.random.default_rng(seed).standard_normal((64, 10)) * scale).astype(np.float32)
    return save(path, [helper.make_node("MatMul", ["input", "w"], ["logits"]),
                       helper.make_node("Softmax", ["logits"], ["prob"], axis=-1)],
                [numpy_helper.from_array(w, "w")], helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 64]),
                helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 10]))


def overflow_model(path: Path) -> Path:
    """x * 1e30 * 1e30: Inf on any input that is not zero."""
    big = numpy_helper.from_array(np.full((1,), 1e30, np.float32), "big")
    nodes = [helper.make_node("Mul", ["input", "big"], ["a"]), helper.make_node("Mul", ["a", "big"], ["out"])]
    return save(path, nodes, [big], helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8]),
                helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8]))


def flat(text: str) -> str:
    """``text`` with every run of whitespace as one space (the console wraps long lines)."""
    return " ".join(text.split())


def compile_cli(*args: str):
    return CliRunner().invoke(cli, ["compile", *args, "--db", "none", *FAST_ARGS], catch_exceptions=False)


def outputs(out: Path) -> tuple[dict, str]:
    return json.loads((out / "summary.json").read_text()), (out / "report.md").read_text()


@pytest.fixture(scope="module")
def auto_onnx(tmp_path_factory):
    """`edgeprune compile --model m.onnx` (auto, on host): (model path, CLI result, summary.json, report.md)."""
    tmp = tmp_path_factory.mktemp("auto")
    model = conv_model(tmp / "m.onnx")
    res = compile_cli("--model", str(model), "--out", str(tmp / "o"))
    assert res.exit_code == 0, res.output
    return (model, res, *outputs(tmp / "o"))


# ---- auto on a CPU target: no untuned TVM ---------------------------------------------------
def test_auto_on_host_skips_untuned_tvm_and_says_so(auto_onnx):
    model, res, s, report = auto_onnx
    assert [b["name"] for b in s["backends"]] == ["onnxruntime", "openvino"]
    cmd = tune_command(str(model), get_target("host"))
    note = next(n for n in s["notes"] if n.startswith("tvm skipped: no tuning records"))
    assert cmd in note and "--backend tvm" in note
    assert "note: tvm skipped: no tuning records" in res.output and "tvm skipped: no tuning records" in report
    assert "hint (" not in res.output or "untuned:" not in res.output  # nothing untuned was built, nothing to tune
    assert not any(tag(h) == "untuned" for b in s["backends"] for h in b["hints"])


def test_backend_tvm_builds_it_untuned_with_the_real_tune_command(tmp_path):
    model = conv_model(tmp_path / "m.onnx", layers=1)
    res = compile_cli("--model", str(model), "--backend", "tvm", "--out", str(tmp_path / "o"))
    assert res.exit_code == 0, res.output
    s, report = outputs(tmp_path / "o")
    (tvm,) = s["backends"]
    assert tvm["name"] == "tvm" and tvm["latency_ms"] is not None
    cmd = f"`{tune_command(str(model), get_target('host'))}`"
    assert cmd == f"`edgeprune tune --model {model} --target host --time-budget 30m`"
    hint = next(h for h in tvm["hints"] if tag(h) == "untuned")
    assert cmd in hint
    assert flat(f"hint (tvm): {hint}") in flat(res.output)
    assert f"**tvm** — {hint}" in report
    assert not any(n.startswith("tvm skipped") for n in s["notes"])  # asked for by name: built, no skip note

    # the same .so handed to bench: not built here, so whether it was tuned is unknown: no hint
    res = CliRunner().invoke(cli, ["bench", "--model", str(model), "--backend", "tvm", "--artifact", tvm["artifact"],
                                   "--out", str(tmp_path / "b"), "--db", "none", *FAST_ARGS], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    (pre,) = outputs(tmp_path / "b")[0]["backends"]
    assert pre["latency_ms"] is not None and not any(tag(h) == "untuned" for h in pre["hints"])


@pytest.mark.slow  # a real (4-trial) MetaSchedule tune: minutes on a 2-core host
def test_auto_builds_tvm_once_records_exist_and_says_how_far_they_reach(tmp_path, monkeypatch):
    from edgeprune.compile.backends.tvm import TuneSettings, tune_model

    monkeypatch.setenv("EDGEPRUNE_TUNING_DIR", str(tmp_path / "tuning"))
    monkeypatch.delenv("EDGEPRUNE_TVM_TUNING", raising=False)
    host = get_target("host")
    one = conv_model(tmp_path / "one.onnx", layers=1)
    assert "tvm" not in auto_backends(host)[0]
    tune_model(one, host, TuneSettings(trials=4, population=32, trials_per_iter=4), log=quiet)
    names, notes = auto_backends(host)
    assert names == list(host.backends) and notes == []

    # two layers, the first of the tuned shape: records for 1 of the 2 kernels
    two = load_model(str(conv_model(tmp_path / "two.onnx", layers=2)), log=quiet)
    s = compile_model(two, host, LOCAL, tmp_path / "o", CompileOptions(bench=FAST), log=quiet)
    by = {b.name: b for b in s.backends}
    assert "tvm" in by and by["tvm"].artifact is not None
    assert not any(n.startswith("tvm skipped") for n in s.notes)
    hint = next(h for h in by["tvm"].hints if tag(h) == "partly tuned")
    assert "records for 1 of 2 kernels" in hint and "edgeprune tune" in hint
    assert not any(tag(h) in ("untuned", "partly tuned") for b in s.backends if b.name != "tvm" for h in b.hints)


def test_auto_keeps_tvm_where_it_is_preferred_or_the_only_gpu_path(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEPRUNE_TUNING_DIR", str(tmp_path / "empty"))
    for name in ("rpi4", "jetson-orin-nano", "mali-g610"):  # tvm first, or an accelerator target
        t = get_target(name)
        assert auto_backends(t) == (list(t.backends), []), name
    for name in ("host", "x86-avx2"):  # CPU targets that prefer another backend
        names, notes = auto_backends(get_target(name))
        assert "tvm" not in names and len(notes) == 1 and notes[0].startswith("tvm skipped")


# ---- parity against itself is the reference -----------------------------------------------------
def test_onnx_input_labels_onnxruntime_as_the_reference_everywhere(auto_onnx):
    _, res, s, report = auto_onnx
    by = {b["name"]: b for b in s["backends"]}
    assert by["onnxruntime"]["parity"] == "reference" and by["onnxruntime"]["verified"] is True
    assert by["openvino"]["parity"] == "pass"
    row = next(line for line in res.output.splitlines() if "onnxruntime" in line and "│" in line)
    assert "reference" in row and "pass (" not in row
    assert "| reference |" in report and "0 by construction" in report


def test_a_torch_model_checks_onnxruntime_against_pytorch(tmp_path):
    s = compile_model(load_model("fixtures_models:tiny_cnn", log=quiet), get_target("host"), LOCAL, tmp_path / "o",
                      CompileOptions(backends=("onnxruntime",), bench=FAST), log=quiet)
    (ort,) = s.backends
    assert ort.parity_label() == "pass" and not ort.parity_reference
    assert "| reference |" not in (tmp_path / "o" / "report.md").read_text()


def test_a_prebuilt_onnxruntime_artifact_is_a_real_check(tmp_path):
    other = conv_model(tmp_path / "other.onnx", seed=1)
    model = load_model(str(conv_model(tmp_path / "m.onnx")), log=quiet)
    s = compile_model(model, get_target("host"), LOCAL, tmp_path / "o",
                      CompileOptions(backends=("onnxruntime",), bench=FAST, prebuilt=(("onnxruntime", str(other)),)),
                      log=quiet)
    assert s.backends[0].parity_label() == "fail"


# ---- synthetic inputs that saturate or overflow the model --------------------------------------
def test_a_saturating_model_gets_the_synthetic_input_note_and_hint(tmp_path):
    res = compile_cli("--model", str(softmax_model(tmp_path / "sat.onnx", scale=100.0)), "--out", str(tmp_path / "o"))
    assert res.exit_code == 0, res.output
    s, report = outputs(tmp_path / "o")
    note = next(n for n in s["notes"] if n.startswith("synthetic inputs saturated the model"))
    assert "softmax output 'prob'" in note
    (hint,) = [h for h in s["hints"] if tag(h) == "inputs"]
    assert "parity on them is not meaningful" in hint and "--data" in hint
    assert flat(f"hint: {hint}") in flat(res.output) and hint in report and note in report


def test_a_disagreement_on_saturated_outputs_is_explained(tmp_path):
    """openvino is handed another saturating net: it fails parity, and the hint says why
    that failure means nothing (issue 18: SqueezeNet, OpenVINO off by 0.124)."""
    model = load_model(str(softmax_model(tmp_path / "sat.onnx", scale=100.0)), log=quiet)
    other = softmax_model(tmp_path / "other.onnx", scale=100.0, seed=7)
    s = compile_model(model, get_target("host"), LOCAL, tmp_path / "o",
                      CompileOptions(backends=("onnxruntime", "openvino"), bench=FAST,
                                     prebuilt=(("openvino", str(other)),)), log=quiet)
    by = {b.name: b for b in s.backends}
    assert by["openvino"].verified is False
    hint = next(h for h in by["openvino"].hints if tag(h) == "parity not meaningful")
    assert "synthetic inputs saturated" in hint and "--data" in hint
    assert not any(tag(h) == "parity not meaningful" for h in by["onnxruntime"].hints)
    assert hint in (tmp_path / "o" / "report.md").read_text()


def test_overflowing_outputs_are_reported_as_overflow(tmp_path):
    model = load_model(str(overflow_model(tmp_path / "inf.onnx")), log=quiet)
    s = compile_model(model, get_target("host"), LOCAL, tmp_path / "o",
                      CompileOptions(backends=("onnxruntime",), bench=FAST), log=quiet)
    assert any(n.startswith("synthetic inputs overflowed the model") and "NaN or Inf" in n for n in s.notes)
    assert any(h.startswith("inputs: the synthetic N(0,1) inputs overflowed") for h in s.hints)


@pytest.mark.parametrize("with_data", [False, True])
def test_no_synthetic_note_on_a_sound_model_or_with_data(tmp_path, with_data):
    if with_data:  # the saturating net, but verified on the user's samples: nothing synthetic to warn about
        rng = np.random.default_rng(0)
        npz = tmp_path / "d.npz"
        np.savez(npz, x_train=rng.standard_normal((16, 64)).astype(np.float32), y_train=rng.integers(0, 10, 16),
                 x_val=rng.standard_normal((8, 64)).astype(np.float32), y_val=rng.integers(0, 10, 8))
        model = load_model(str(softmax_model(tmp_path / "sat.onnx", scale=100.0)), data=npz, log=quiet)
    else:
        model = load_model(str(softmax_model(tmp_path / "soft.onnx", scale=0.01)), log=quiet)
    s = compile_model(model, get_target("host"), LOCAL, tmp_path / "o",
                      CompileOptions(backends=("onnxruntime",), bench=FAST), log=quiet)
    assert not any(n.startswith("synthetic inputs") for n in s.notes) and s.hints == []


def test_findings_name_each_kind_and_pass_normal_outputs():
    rng = np.random.default_rng(0)
    normal = [[rng.standard_normal((2, 5)).astype(np.float32)] for _ in range(3)]
    assert findings(normal, ["y"]) is None
    uniform = [[np.full((1, 4), 0.25, np.float32)] for _ in range(3)]  # a softmax, not saturated, but constant
    assert findings(uniform, ["y"]).kind == "constant"
    one_hot = [[np.eye(4, dtype=np.float32)[[k % 4]]] for k in range(3)]  # varies, but always probability 1.0
    assert findings(one_hot, ["y"]).kind == "saturated"
    assert findings(normal + [[np.array([[np.nan, 0, 0, 0, 0]], np.float32)]], ["y"]).kind == "non-finite"
    assert findings([[np.full((1, 3), 7.0, np.float32)]], ["y"]) is None  # one draw cannot show constancy


# ---- noise and the choice -----------------------------------------------------------------------
def test_the_noise_hint_follows_the_spread_threshold(auto_onnx):
    from edgeprune.bench.stats import LatencyStats

    _, res, s, report = auto_onnx
    for b in s["backends"]:
        noisy = [h for h in b["hints"] if tag(h) == "noisy"]
        lat = LatencyStats(**b["latency_ms"])
        assert bool(noisy) == (spread(lat) > NOISY_SPREAD), b  # this host is noisy or not: the hint follows
        row = next(line for line in res.output.splitlines() if f" {b['name']} " in line and "│" in line)
        assert ("noisy" in row) == bool(noisy)  # the tag in the table's hint column
        for h in noisy:
            assert "--steady-gate" in h and f"**{b['name']}** — {h}" in report
            assert flat(f"hint ({b['name']}): {h}") in flat(res.output)


def test_a_faster_wrong_artifact_is_explained_on_its_row(tmp_path):
    """openvino gets a prebuilt 1-layer net (far cheaper than the 8-layer model): the lowest
    median, but wrong, so the choice line names onnxruntime and openvino's row says why."""
    model = load_model(str(conv_model(tmp_path / "m.onnx", layers=8)), log=quiet)
    wrong = conv_model(tmp_path / "wrong.onnx", layers=1, seed=1)
    s = compile_model(model, get_target("host"), LOCAL, tmp_path / "o",
                      CompileOptions(backends=("onnxruntime", "openvino"), bench=FAST,
                                     prebuilt=(("openvino", str(wrong)),)), log=quiet)
    by = {b.name: b for b in s.backends}
    assert s.backend == "onnxruntime" and by["openvino"].verified is False
    lower = by["openvino"].latency_ms.median < by["onnxruntime"].latency_ms.median
    hints = [h for h in by["openvino"].hints if tag(h) == "not chosen"]
    assert bool(hints) == lower  # the condition is the device's to decide; the hint must follow it
    for h in hints:
        assert "openvino has the lower median" in h and "openvino failed parity" in h
    assert not any(tag(h) == "not chosen" for h in by["onnxruntime"].hints)


def result(name: str, median: float, rounds: list[float]) -> BackendResult:
    return BackendResult(name=name, artifact=name, latency_ms=LatencyStats.from_times([median] * 5), verified=True,
                         round_medians_ms=rounds)


def test_a_lower_pooled_median_beaten_in_the_fast_state_is_a_tie_and_says_so():
    a = result("onnxruntime", 1.00, [0.90, 1.20, 1.25])  # fast state 0.90
    b = result("openvino", 0.98, [0.95, 0.97, 0.99])  # lower pooled median, slower fast state
    low, why = choice_hint([a, b], "onnxruntime", {}, ms)
    assert low == "openvino"
    assert why.startswith("not chosen: openvino has the lower median 0.980 ms vs 1.000 ms")
    assert "fast state (0.900 ms vs 0.970 ms over 3 interleaved rounds)" in why
    assert "openvino won 2 of 3 rounds: a tie" in why
    assert choice_hint([a, b], "openvino", {}, ms) == (None, None)  # chosen = lowest median: nothing to explain


# ---- a second run is not a "first run" ----------------------------------------------------------
def test_a_second_run_in_the_same_out_is_not_labelled_first_run(tmp_path):
    model, db = str(softmax_model(tmp_path / "soft.onnx", scale=0.01)), str(tmp_path / "r.sqlite")
    for _ in range(2):
        res = CliRunner().invoke(cli, ["compile", "--model", model, "--backend", "onnxruntime", "--out",
                                       str(tmp_path / "o"), "--db", db, *FAST_ARGS], catch_exceptions=False)
        assert res.exit_code == 0, res.output
    html = tmp_path / "r.html"
    rep = CliRunner().invoke(cli, ["report", "--db", db, "-o", str(html)], catch_exceptions=False)
    assert rep.exit_code == 0, rep.output
    text = html.read_text()
    assert "onnxruntime" in text and "first run" not in text.lower() and "no baseline yet" in text


def test_rare_spikes_are_not_noise_but_a_slow_tenth_is():
    """A few scheduler stalls lift the CV past 100 % on a quiet VM: no hint. A device busy
    a fifth of the time moves the p90: the hint, with the figure that tripped it."""
    from edgeprune.bench.stats import LatencyStats
    from edgeprune.compile.summary import BackendResult

    quiet = [0.30 + 0.001 * (i % 7) for i in range(500)] + [5.0, 6.0, 7.0]
    busy = [0.30] * 400 + [0.60] * 100
    q = BackendResult(name="onnxruntime", artifact="m.onnx", latency_ms=LatencyStats.from_times(quiet))
    b = BackendResult(name="onnxruntime", artifact="m.onnx", latency_ms=LatencyStats.from_times(busy))
    assert q.latency_ms.cv > 1.0 and noise_hint(q) is None
    h = noise_hint(b)
    assert h is not None and h.startswith("noisy: p90 +100% above the median") and "--steady-gate" in h
