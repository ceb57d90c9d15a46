"""The on-device runner, the local executor and latency statistics, with real ONNX Runtime."""

from __future__ import annotations

import ast
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeprune.bench.bundle import BenchJob, read_results, write_manifest
from edgeprune.bench.executor import LocalExecutor
from edgeprune.bench.io import save_arrays
from edgeprune.bench.stats import LatencyStats
from edgeprune.errors import BenchError
from edgeprune.runner import gate as G
from edgeprune.runner import probe as P
from edgeprune.runner.manifest import JOB_DEFAULTS
from edgeprune.runner.ship import RUNNER_FILE, zipapp_bytes
from edgeprune.runner.timing import ort_kernel_times, time_runs

RUNNER_PACKAGE = Path(P.__file__).parent

BATCH, IN, OUT = 2, 16, 4


def linear_onnx(path: Path, out_dim: int = OUT, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """y = x @ W + b as an ONNX file; returns (W, b)."""
    rng = np.random.RandomState(seed)
    w = rng.randn(IN, out_dim).astype(np.float32)
    b = rng.randn(out_dim).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, out_dim])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return w, b


@pytest.fixture
def bundle(tmp_path) -> Path:
    """A bundle dir with a linear model, its input and its exact expected output."""
    b = tmp_path / "bundle"
    w, bias = linear_onnx(b / "m" / "model.onnx")
    x = np.random.RandomState(1).randn(BATCH, IN).astype(np.float32)
    save_arrays(b / "data" / "inputs.npz", "in", [x])
    save_arrays(b / "data" / "expected.npz", "out", [x @ w + bias])
    save_arrays(b / "data" / "wrong.npz", "out", [x @ w + bias + 1.0])
    return b


def job(id: str, **kw) -> BenchJob:
    base = dict(backend="onnxruntime", artifact="m/model.onnx", inputs="data/inputs.npz",
                expected="data/expected.npz", tolerance=1e-5, threads=1, warmup=1, min_runs=5,
                min_time_s=0.0, max_time_s=10.0)
    base.update(kw)
    return BenchJob(id=id, **base)


def run_runner(bundle: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(bundle / RUNNER_FILE), str(bundle), *args],
                          capture_output=True, text=True, timeout=timeout)


def shadow_module(tmp_path: Path, name: str, body: str) -> Path:
    """A directory that, put first on PYTHONPATH, replaces package ``name`` on the device."""
    d = tmp_path / f"shadow-{name}"
    (d / name).mkdir(parents=True)
    (d / name / "__init__.py").write_text(body)
    return d


# ---- the timing loop (unit level, deterministic fake runs) ----------------------------------
def _busy(seconds: float):
    def run():
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
    return run


def _job(**kw):
    d = dict(JOB_DEFAULTS)
    d.update(warmup=0, min_runs=1, min_time_s=0.0, max_time_s=30.0)
    d.update(kw)
    return d


def test_timing_stops_when_min_runs_reached_and_counts_warmup_apart():
    calls = []
    times, info = time_runs(lambda: calls.append(1), _job(warmup=3, min_runs=40))
    assert len(times) == 40 and len(calls) == 43 and info["warmup_runs"] == 3
    assert info["stopped_by_max_time"] is False


def test_timing_runs_at_least_min_time():
    times, info = time_runs(_busy(0.001), _job(min_runs=3, min_time_s=0.2))
    assert info["measure_s"] >= 0.2 and len(times) >= 10
    assert sum(times) >= 100  # ms actually spent inside timed runs (the rest is loop overhead/preemption)


def test_max_time_stops_early_and_keeps_what_it_has():
    t0 = time.perf_counter()
    times, info = time_runs(_busy(0.001), _job(min_runs=10**9, min_time_s=100, max_time_s=0.2, warmup=10**9))
    assert time.perf_counter() - t0 < 2
    assert info["stopped_by_max_time"] is True and len(times) >= 2


def test_inject_slowdown_is_counted_in_the_time():
    # every run lasts >= 2 ms; with factor 3 each recorded time is >= 3x that (lower bounds
    # hold however busy the machine is)
    slow, info = time_runs(lambda: time.sleep(0.002), _job(min_runs=10, inject_slowdown=3.0))
    assert info["inject_slowdown"] == 3.0 and len(slow) == 10
    assert min(slow) >= 6.0
    base, info = time_runs(lambda: time.sleep(0.002), _job(min_runs=10))
    assert "inject_slowdown" not in info and min(base) >= 2.0


# ---- the runner end to end ----------------------------------------------------------------
def test_runner_times_verifies_and_records_env(bundle):
    write_manifest(bundle, [job("ort", min_runs=25), job("wrong", expected="data/wrong.npz")])
    cp = run_runner(bundle)
    assert cp.returncode == 0, cp.stderr
    ok, wrong = read_results(bundle)
    assert ok.ok and ok.verified is True and ok.max_abs_diff < 1e-5 and len(ok.times_ms) == 25
    assert ok.threads == 1 and ok.runtime_version and ok.load_s is not None
    for key in ("python", "machine", "cpu", "cores", "runtime_version", "threads", "governor"):
        assert key in ok.env
    assert ok.env["machine"] == platform.machine()
    # wrong expected outputs: it ran (ok) but is not verified
    assert wrong.ok and wrong.verified is False and abs(wrong.max_abs_diff - 1.0) < 1e-4
    assert "[2/2] wrong" in cp.stdout and "NOT VERIFIED" in cp.stdout


def _eval_file(bundle: Path, name: str, w: np.ndarray, b: np.ndarray, binary: bool, flip: list[int]):
    rng = np.random.RandomState(2)
    xs = rng.randn(4, BATCH, IN).astype(np.float32)
    logits = xs @ w + b
    labels = (logits[..., 0] > 0).astype(np.int64) if binary else logits.argmax(-1)
    for c in flip:  # make these chunks wrong
        labels[c] = 1 - labels[c] if binary else (labels[c] + 1) % logits.shape[-1]
    np.savez(bundle / "data" / name, in0=xs, labels=labels)


def test_runner_computes_accuracy_for_classification_and_binary(bundle):
    w, b = linear_onnx(bundle / "m" / "model.onnx")
    _eval_file(bundle, "cls.npz", w, b, binary=False, flip=[1, 3])
    w1, b1 = linear_onnx(bundle / "bin" / "model.onnx", out_dim=1, seed=5)
    _eval_file(bundle, "bin.npz", w1, b1, binary=True, flip=[0])
    write_manifest(bundle, [
        job("cls", eval="data/cls.npz", task="classification"),
        job("bin", artifact="bin/model.onnx", expected=None, eval="data/bin.npz", task="binary"),
    ])
    cls, bin_ = LocalExecutor().run_bundle(bundle, timeout_s=120)
    assert cls.ok and cls.accuracy == pytest.approx(50.0) and cls.eval_samples == 8
    assert bin_.ok and bin_.accuracy == pytest.approx(75.0) and bin_.eval_samples == 8 and bin_.verified is None


def test_a_failing_job_fails_alone(bundle, tmp_path, monkeypatch):
    (bundle / "corrupt.onnx").write_bytes(b"\x00garbage, not a model")
    xml = bundle / "ov" / "model.xml"
    xml.parent.mkdir()
    xml.write_text("<net/>")
    save_arrays(bundle / "data" / "badin.npz", "in", [np.zeros((BATCH, 4), np.float32)])
    monkeypatch.setenv("PYTHONPATH", str(shadow_module(
        tmp_path, "openvino", "raise ModuleNotFoundError(\"No module named 'openvino'\", name='openvino')\n")))
    write_manifest(bundle, [
        job("first"),
        job("corrupt", artifact="corrupt.onnx"),
        job("absent", artifact="nowhere/model.onnx"),
        job("no-runtime", backend="openvino", artifact="ov/model.xml"),
        job("badshape", inputs="data/badin.npz"),
        job("unknown", backend="tensorrt"),
        job("last"),
    ])
    cp = run_runner(bundle)
    assert cp.returncode == 1
    res = {r.id: r for r in read_results(bundle)}
    assert list(res) == ["first", "corrupt", "absent", "no-runtime", "badshape", "unknown", "last"]
    assert res["first"].ok and res["last"].ok and res["last"].verified
    assert res["corrupt"].error.startswith("cannot load corrupt.onnx with onnxruntime:")
    assert "missing from the bundle" in res["absent"].error
    assert res["no-runtime"].error == "openvino is not installed on this device (pip install openvino)"
    assert res["badshape"].error == "input 'x' has shape [2, 4] but the artifact expects [2, 16]"
    assert "unknown backend 'tensorrt'" in res["unknown"].error
    for r in res.values():
        assert r.ok or ("\n" not in r.error and r.times_ms == [])


def test_a_crashing_runtime_fails_only_its_job(bundle, tmp_path, monkeypatch):
    (bundle / "ov").mkdir()
    (bundle / "ov" / "model.xml").write_text("<net/>")
    monkeypatch.setenv("PYTHONPATH", str(shadow_module(
        tmp_path, "openvino", "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")))
    write_manifest(bundle, [job("before"), job("segv", backend="openvino", artifact="ov/model.xml"), job("after")])
    results = LocalExecutor().run_bundle(bundle, timeout_s=120)
    assert [r.id for r in results] == ["before", "segv", "after"]
    assert results[0].ok and results[2].ok
    assert not results[1].ok and "crashed (killed by SIGSEGV)" in results[1].error


def test_results_survive_a_killed_runner(bundle):
    write_manifest(bundle, [job("quick"), job("slow", min_runs=10**9, min_time_s=600, max_time_s=600), job("late")])
    proc = subprocess.Popen([sys.executable, str(bundle / RUNNER_FILE), str(bundle)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not read_results(bundle):
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert [(r.id, r.ok) for r in read_results(bundle)] == [("quick", True)]
    # a run killed in the middle of a line must not corrupt later appends
    with (bundle / "results.jsonl").open("a") as f:
        f.write('{"id": "slow", "ok": tr')
    res = LocalExecutor().run_bundle(bundle, timeout_s=60, only=["late"])
    assert [(r.id, r.ok) for r in res] == [("late", True)]
    assert [r.id for r in read_results(bundle)] == ["quick", "late"]


def test_local_executor_timeout_keeps_finished_results(bundle):
    write_manifest(bundle, [job("quick"), job("slow", min_runs=10**9, min_time_s=600, max_time_s=600), job("late")])
    t0 = time.time()
    res = LocalExecutor().run_bundle(bundle, timeout_s=8)
    assert time.time() - t0 < 20
    assert [(r.id, r.ok) for r in res] == [("quick", True), ("slow", False), ("late", False)]
    assert res[1].error == "timed out after 8s" and res[2].error == "timed out after 8s"
    assert len(res[0].times_ms) == 5


def test_local_executor_timeout_with_nothing_measured_raises(bundle):
    write_manifest(bundle, [job("slow", min_runs=10**9, min_time_s=600, max_time_s=600)])
    with pytest.raises(BenchError, match="produced no results: timed out after 3s"):
        LocalExecutor().run_bundle(bundle, timeout_s=3)


def test_bad_manifest_exits_2(bundle):
    write_manifest(bundle, [job("a")])
    cp = run_runner(bundle, "--only", "nope")
    assert cp.returncode == 2 and "unknown job id(s) nope" in cp.stderr
    (bundle / "manifest.json").write_text(json.dumps({"format": "something-else", "jobs": []}))
    cp = run_runner(bundle)
    assert cp.returncode == 2 and "bad manifest" in cp.stderr
    with pytest.raises(BenchError, match="runner rejected the bundle: .*bad manifest"):
        LocalExecutor().run_bundle(bundle, timeout_s=60)


def test_probe_describes_this_device():
    import onnxruntime

    info = LocalExecutor().probe()
    assert info["arch"] == platform.machine() and info["cores"] == os.cpu_count()
    assert info["python"] == platform.python_version() and info["numpy"] == np.__version__
    assert info["runtimes"]["onnxruntime"] == onnxruntime.__version__
    assert set(info["runtimes"]) == {"onnxruntime", "openvino", "tvm"}


def test_runner_imports_only_stdlib_numpy_and_runtimes():
    """Every module of the runner package (it is shipped whole, as a zipapp, to boards that
    have numpy and a runtime only): no edgeprune, relative imports within the package,
    and the probe (sent alone on stdin over SSH) imports nothing but the standard library."""
    roots = set()
    modules = sorted(RUNNER_PACKAGE.rglob("*.py"))
    assert len(modules) > 10
    for path in modules:
        depth = len(path.relative_to(RUNNER_PACKAGE).parts) - 1  # 0 for edgeprune/runner/x.py
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    assert node.level <= depth + 1, f"{path.name} imports from outside the runner package"
                    assert path.name != "probe.py", "the probe must stand alone"
                elif node.module:
                    roots.add(node.module.split(".")[0])
    third_party = roots - set(sys.stdlib_module_names)
    assert third_party <= {"numpy", "tvm"}, third_party  # onnxruntime/openvino come via __import__
    assert "edgeprune" not in roots


def test_the_runner_ships_as_one_deterministic_zipapp(bundle, tmp_path):
    """runner.pyz holds every device module (not the host-side ship.py), is byte-identical
    when built twice, and runs from a copy of the bundle anywhere, as on a board."""
    import io
    import shutil
    import zipfile

    data = zipapp_bytes()
    assert data == zipapp_bytes() and data.startswith(b"#!/usr/bin/env python3\n")
    names = set(zipfile.ZipFile(io.BytesIO(data)).namelist())
    device = {p.relative_to(RUNNER_PACKAGE).as_posix() for p in RUNNER_PACKAGE.rglob("*.py")} - {"ship.py"}
    assert names == {"__main__.py"} | {"edgeprune_runner/" + n for n in device}
    write_manifest(bundle, [job("a"), job("b", threads=2)])  # two worker processes
    moved = tmp_path / "elsewhere" / "bundle"
    shutil.copytree(bundle, moved)
    no_edgeprune = shadow_module(tmp_path, "edgeprune", "raise ImportError('the runner imported edgeprune')\n")
    cp = subprocess.run([sys.executable, str(moved / RUNNER_FILE), str(moved)], capture_output=True, text=True,
                        timeout=120, cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": str(no_edgeprune)})
    assert cp.returncode == 0, cp.stderr
    assert [(r.id, r.ok, r.verified) for r in read_results(moved)] == [("a", True, True), ("b", True, True)]


def test_the_runner_package_runs_with_python_m_too(bundle):
    """``python -m edgeprune.runner`` (debugging without a bundle rebuild) starts its
    workers from the package, not from a zipapp."""
    write_manifest(bundle, [job("a")])
    cp = subprocess.run([sys.executable, "-m", "edgeprune.runner", str(bundle)], capture_output=True, text=True,
                        timeout=120, cwd=str(bundle))
    assert cp.returncode == 0, cp.stderr
    (r,) = read_results(bundle)
    assert r.ok and r.verified


def test_probe_reads_cpu_name_and_flags_of_x86_and_arm():
    x86 = "processor\t: 0\nmodel name\t: Intel Xeon\nflags\t\t: fpu avx2 avx512f amx_tile\n\nprocessor\t: 1\n"
    assert P.cpu_model(x86) == "Intel Xeon" and P.cpu_flags(x86) == {"fpu", "avx2", "avx512f", "amx_tile"}
    arm = ("processor\t: 0\nFeatures\t: fp asimd asimddp\nCPU part\t: 0xd0b\n"
           "processor\t: 4\nFeatures\t: fp asimd asimddp\nCPU part\t: 0xd05\nModel\t: Rock 5B\n")
    assert P.cpu_model(arm) == "Rock 5B (Cortex-A76 + Cortex-A55)" and P.cpu_flags(arm) == {"fp", "asimd", "asimddp"}
    assert P.cpu_flags("") == set()
    assert set(LocalExecutor().probe()["cpu_flags"]) == P.cpu_flags()


# ---- statistics -----------------------------------------------------------------------------
def test_latency_stats():
    t = [1.0, 2.0, 3.0, 4.0, 100.0]
    s = LatencyStats.from_times(t)
    assert (s.median, s.min, s.max, s.runs) == (3.0, 1.0, 100.0, 5)
    assert s.mean == pytest.approx(22.0)
    assert s.p90 == pytest.approx(61.6) and s.p99 == pytest.approx(96.16)  # linear interpolation
    assert s.std == pytest.approx(np.std(t, ddof=1)) and s.cv == pytest.approx(s.std / s.mean)
    assert LatencyStats.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert LatencyStats.from_times([2.5]).std == 0.0
    with pytest.raises(ValueError):
        LatencyStats.from_times([])


# ---- the steady gate ------------------------------------------------------------------------
def _scripted_probe(monkeypatch, values):
    seq = list(values)
    seen = []

    def probe(np_, n=None, calls=None):
        v = seq.pop(0) if len(seq) > 1 else seq[0]
        seen.append(v)
        return v
    monkeypatch.setattr(G, "gate_probe_ms", probe)
    return seen


def test_steady_gate_waits_for_the_steady_state_and_retimes_a_series_it_saw_end_unsteady(tmp_path, monkeypatch):
    # calibration sees 1.0 ms (its last probe serves as the first before-probe) -> series -> slow after:
    # re-time; slow (wait 0.5 s), steady -> series -> steady after: kept
    _scripted_probe(monkeypatch, [1.0] * G.GATE_LOWS + [1.5, 1.4, 1.0, 1.0])
    calls = []
    cfg = {"calibrate_s": 0, "settle_s": 0, "max_wait_s": 30}
    times, info = G.gated_time_runs(np, lambda: calls.append(1), _job(min_runs=5, gate=cfg), str(tmp_path))
    g = info["gate"]
    assert g["state"] == "steady" and g["retries"] == 1 and g["fast_ms"] == 1.0 and g["probe_ms"] == [1.0, 1.0]
    assert len(times) == 5 and len(calls) == 10  # the first series was timed, then thrown away
    assert json.loads((tmp_path / G.GATE_FILE).read_text())["fast_ms"] == 1.0  # for the next worker


def test_steady_gate_keeps_a_series_marked_unsteady_when_the_device_never_settles(tmp_path, monkeypatch):
    _scripted_probe(monkeypatch, [1.0] * G.GATE_LOWS + [2.0])  # calibrated at 1.0, then slow for good
    t0 = time.monotonic()
    times, info = G.gated_time_runs(np, lambda: None, _job(min_runs=3, gate={"calibrate_s": 0, "settle_s": 0,
                                                                             "max_wait_s": 1.0}), str(tmp_path))
    assert time.monotonic() - t0 < 10
    assert info["gate"]["state"] == "unsteady" and len(times) == 3 and info["gate"]["wait_s"] >= 0.9


def test_steady_gate_uses_the_hosts_level_hint_instead_of_calibrating(tmp_path, monkeypatch):
    seen = _scripted_probe(monkeypatch, [0.9])
    G._GATES.pop(str(tmp_path), None)
    _, info = G.gated_time_runs(np, lambda: None, _job(gate={"fast_ms": 1.0, "settle_s": 0}), str(tmp_path))
    assert info["gate"]["state"] == "steady" and "calibrated_s" not in info["gate"] and len(seen) == 2


def test_runner_times_inside_the_steady_gate_end_to_end(bundle):
    gate = {"calibrate_s": 0.3, "max_wait_s": 5}
    write_manifest(bundle, [job("a", gate=gate), job("b", gate={}), job("plain")])  # {}: the gate, defaults
    cp = run_runner(bundle)
    assert cp.returncode == 0, cp.stderr
    a, b, plain = read_results(bundle)
    assert a.env["timing"]["gate"]["state"] in ("steady", "unsteady") and "calibrated_s" in a.env["timing"]["gate"]
    assert "calibrated_s" not in b.env["timing"]["gate"]  # one calibration per bundle
    assert "gate" not in plain.env["timing"]
    assert json.loads((bundle / G.GATE_FILE).read_text())["fast_ms"] > 0


def test_steady_gate_spends_at_most_its_budget_on_a_device_that_never_settles(tmp_path, monkeypatch):
    _scripted_probe(monkeypatch, [1.0] * G.GATE_LOWS + [2.0])
    cfg = {"calibrate_s": 0, "settle_s": 0, "max_wait_s": 0.6, "budget": 0.1}
    gate = G.steady_gate(np, str(tmp_path), cfg)  # calibrates now, outside the timed part
    t0 = time.monotonic()
    states = [G.gated_time_runs(np, _busy(0.01), _job(min_time_s=0.2, gate=cfg), str(tmp_path))[1]["gate"]
              for _ in range(8)]
    elapsed = time.monotonic() - t0
    assert all(s["state"] == "unsteady" for s in states)
    since_start = time.time() - gate.t0
    assert elapsed < 8 * 0.2 * 1.1 + 0.6 + 0.1 * since_start + 1.0  # the series, one max_wait, the budget, slack


# ---- kernel timing ----------------------------------------------------------------------------
def test_kernel_timing_reads_the_runtimes_own_node_counters(bundle):
    """`timing: kernel` reports the layers' own work per run from ONNX Runtime's profiler
    and OpenVINO's PERF_COUNT (the wall-clock median is kept next to it); TVM has no such
    counters and says so, and an unknown mode is a clear error."""
    from edgeprune.latency.layers import make_inputs, write_layer_onnx
    from edgeprune.latency.layer_bundle import REFERENCE_LAYER

    write_layer_onnx(REFERENCE_LAYER, 64, 64, bundle / "m" / "conv.onnx")  # a 3x3 conv, 64 channels, 28x28
    save_arrays(bundle / "data" / "conv.npz", "in", make_inputs(REFERENCE_LAYER, 64))
    conv = dict(artifact="m/conv.onnx", inputs="data/conv.npz", expected=None, threads=2, min_runs=20,
                timing="kernel")
    write_manifest(bundle, [
        job("ort", **conv), job("ov", backend="openvino", options={"INFERENCE_PRECISION_HINT": "f32"}, **conv),
        job("tvm", backend="tvm", timing="kernel"), job("cpu", timing="cpu"),
    ])
    cp = run_runner(bundle)
    assert cp.returncode == 1, cp.stderr  # two jobs fail, alone
    ort, ov, tvm, bad = read_results(bundle)
    for r in (ort, ov):
        assert r.ok, r.error
        assert len(r.times_ms) == 20 and all(t >= 0 for t in r.times_ms)
        assert r.env["timing"]["mode"] == "kernel"
    # the conv's own work, without the layout conversions and call overhead the run pays.
    # Not asserted for OpenVINO: its counters are a running average since compile (one slow
    # first run lifts every later reading), which is why profiles time it wall-clock.
    assert 0 < float(np.median(ort.times_ms)) < ort.env["timing"]["wall_median_ms"]
    assert not tvm.ok and "kernel timing is not available for tvm" in tvm.error
    assert not bad.ok and "unknown timing 'cpu'" in bad.error
    assert not list(Path(bundle).rglob("ort_*.json"))  # ONNX Runtime's trace files are removed


def test_ort_kernel_times_sum_each_runs_nodes_without_layout_conversions():
    ev = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
          {"cat": "Node", "name": "ReorderInput_kernel_time", "ts": 1, "dur": 30, "args": {"op_name": "ReorderInput"}},
          {"cat": "Node", "name": "conv_kernel_time", "ts": 40, "dur": 50, "args": {"op_name": "Conv"}},
          {"cat": "Node", "name": "conv_fence_before", "ts": 39, "dur": 1, "args": {"op_name": "Conv"}},
          {"cat": "Session", "name": "model_run", "ts": 200, "dur": 100},
          {"cat": "Node", "name": "conv_kernel_time", "ts": 210, "dur": 70, "args": {"op_name": "Conv"}},
          {"cat": "Node", "name": "ReorderOutput_kernel_time", "ts": 281, "dur": 9, "args": {"op_name": "ReorderOutput"}}]
    assert ort_kernel_times(ev, 2) == [0.05, 0.07]
    assert ort_kernel_times(ev, 1) == [0.07]  # the last n runs: the timed series, not the warm-up
