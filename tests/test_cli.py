"""The CLI, used the way the README shows. Real backends, real data, short timings."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeprune.cli import cli

FAST = ["--min-runs", "5", "--min-time", "0.05", "--warmup", "1"]


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_help_is_instant_and_lists_the_verbs():
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgeprune.cli", "--help"], capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    for verb in ("compile", "bench", "targets", "devices", "models"):
        assert verb in proc.stdout
    # no torch / TVM / OpenVINO import on --help (a generous bound; they take seconds)
    assert elapsed < 3.0


def test_targets_and_devices_are_listed():
    res = run("targets", "--json")
    names = {t["name"] for t in json.loads(res.stdout)}
    assert {"host", "x86-avx2", "rpi4", "jetson-orin-nano", "mali-g610"} <= names
    res = run("devices", "--json")
    assert [d["name"] for d in json.loads(res.stdout)] == ["local"]


@pytest.fixture(scope="session")
def digits_compiled(tmp_path_factory):
    """`edgeprune compile --model zoo:digits-cnn --target host` (auto: every backend worth building)."""
    out = tmp_path_factory.mktemp("demo")
    res = CliRunner().invoke(cli, ["compile", "--model", "zoo:digits-cnn", "--target", "host", "--out", str(out), *FAST],
                             catch_exceptions=False)
    return res, out


def test_compile_digits_on_host_builds_benches_and_verifies_every_backend(digits_compiled):
    res, out = digits_compiled
    assert res.exit_code == 0, res.output
    for f in ("model.onnx", "summary.json", "report.md", "bundle/manifest.json", "bundle/runner.pyz"):
        assert (out / f).exists(), f
    s = json.loads((out / "summary.json").read_text())
    assert s["model"] == "zoo:digits-cnn" and s["target"] == "host" and s["device"] == "local"
    assert s["pruned"] is None
    assert s["original"]["params"] > 0 and s["original"]["macs"] > 1e6 and s["original"]["accuracy"] > 90
    by_name = {b["name"]: b for b in s["backends"]}
    # auto on a CPU target leaves out an untuned TVM (no tuning records here), and says so
    assert set(by_name) == {"onnxruntime", "openvino"}
    assert any(n.startswith("tvm skipped: no tuning records") for n in s["notes"])
    for b in by_name.values():
        assert b["verified"] is True, b
        assert b["runs"] >= 5
        assert set(b["latency_ms"]) >= {"median", "p90", "p99", "mean", "std", "min"}
        assert b["max_abs_diff"] <= b["tolerance"]
        assert abs(b["accuracy"] - s["original"]["accuracy"]) < 1.0
        assert Path(b["artifact"]).exists()
    assert Path(by_name["openvino"]["artifact"]).suffix == ".xml"
    assert s["backend"] in by_name and "lowest median latency" in s["choice_reason"]
    assert "median" in res.output and "chosen:" in res.output


def test_bench_times_a_prebuilt_artifact(digits_compiled, tmp_path):
    _, out = digits_compiled
    so = json.loads((out / "summary.json").read_text())
    onnx_art = next(b["artifact"] for b in so["backends"] if b["name"] == "onnxruntime")
    res = run("bench", "--model", "zoo:digits-cnn", "--backend", "onnxruntime", "--artifact", onnx_art,
              "--out", str(tmp_path / "b"), "--json", "--steady-gate", *FAST)
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)  # --json: stdout is machine-readable, progress went to stderr
    assert s["backends"][0]["verified"] is True
    # --steady-gate: the runner timed the series inside its gate and says in which state
    (line,) = (tmp_path / "b" / "bundle" / "results.jsonl").read_text().splitlines()
    assert json.loads(line)["env"]["timing"]["gate"]["state"] in ("steady", "unsteady")


def test_unknown_target_is_one_line_with_choices(tmp_path):
    res = CliRunner().invoke(cli, ["compile", "-m", "zoo:digits-cnn", "-t", "rpi9", "-o", str(tmp_path)])
    assert res.exit_code == 3
    assert "unknown target 'rpi9'" in res.output and "rpi4" in res.output
    assert "Traceback" not in res.output


def test_corrupt_model_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not a protobuf")
    res = CliRunner().invoke(cli, ["compile", "-m", str(bad), "-o", str(tmp_path / "o")])
    assert res.exit_code == 4, res.output
    assert "broken.onnx" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_unknown_backend_lists_choices():
    res = CliRunner().invoke(cli, ["compile", "-m", "zoo:digits-cnn", "-b", "tensorrt"])
    assert res.exit_code == 2 and "onnxruntime" in res.output


def test_bad_yaml_field_names_file_line_and_field(tmp_path):
    t = tmp_path / "board.yaml"
    t.write_text("name: board\narch: aarch64\ntriple: aarch64-linux-gnu\ncpu: cortex-a53\ncores: four\nbackends: [tvm]\n")
    res = CliRunner().invoke(cli, ["compile", "-m", "zoo:digits-cnn", "-t", str(t)])
    assert res.exit_code == 3
    assert "board.yaml:5" in res.output and "cores" in res.output


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None, reason="needs g++-aarch64-linux-gnu (make test installs it)")
def test_cross_target_without_a_device_is_compile_verified_only(tmp_path):
    res = run("compile", "-m", "zoo:digits-cnn", "-t", "rpi4", "-b", "tvm", "-o", str(tmp_path), *FAST)
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "summary.json").read_text())
    tvm = s["backends"][0]
    assert tvm["latency_ms"] is None and tvm["error"] is None
    assert Path(tvm["artifact"]).read_bytes()[:4] == b"\x7fELF"
    assert any("compile-verified only" in n for n in s["notes"])
