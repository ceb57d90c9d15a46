"""One precision policy: every path runs the precision it says, and bf16 / fp16 are
variants built on request where the CPU has them (issue 18, item 9).

Real OpenVINO and ONNX Runtime throughout. What this host's CPU can do is read from its
flags (``edgeprune.host``), never assumed: the bf16 build test runs only on a CPU with
AMX-BF16 / AVX512-BF16 and the early-failure test only on one without.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeprune.cli import cli
from edgeprune.errors import BackendError
from edgeprune.host import host_cpu
from edgeprune.runner.adapters.precision import job_precision, missing_support, ov_type_name
from edgeprune.runner.errors import JobError

FAST = ["--min-runs", "5", "--min-time", "0.05", "--warmup", "1", "--rounds", "1", "--db", "none"]
CPU = host_cpu()
NO_BF16 = missing_support("bf16", CPU.flags, CPU.arch)  # None when this CPU runs bf16 natively


@pytest.fixture(scope="module")
def digits():
    from edgeprune.models.spec import load_model

    return load_model("zoo:digits-cnn", log=lambda _m: None)


@pytest.fixture(scope="module")
def ir(digits, tmp_path_factory) -> Path:
    """digits-cnn as an OpenVINO IR built by the backend (what a user passes to --artifact)."""
    from edgeprune.compile.backends import get_backend
    from edgeprune.compile.export import export_onnx
    from edgeprune.config.targets import get_target

    d = tmp_path_factory.mktemp("ir")
    exp = export_onnx(digits, d / "model.onnx")
    art = get_backend("openvino").build(exp.path, get_target("host"), d / "ov")
    return art.path


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_bench_prebuilt_ir_runs_fp32_and_passes_parity(ir, tmp_path):
    """``bench --artifact model.xml`` used to run OpenVINO's default precision (bf16 on an
    AMX host: parity failed, 3x faster than the same IR under ``compile``)."""
    out = tmp_path / "b"
    res = invoke("bench", "--model", "zoo:digits-cnn", "--backend", "openvino", "--artifact", str(ir),
                 "--out", str(out), "--json", *FAST)
    assert res.exit_code == 0, res.output
    (b,) = json.loads(res.stdout)["backends"]
    assert b["precision"] == "fp32" and b["verified"] is True, b
    ran = b["env"]["runtime_settings"]
    assert ran["INFERENCE_PRECISION_HINT"] == "f32" and ran["precision"] == "fp32"
    (job,) = json.loads((out / "bundle" / "manifest.json").read_text())["jobs"]
    assert job["options"]["precision"] == "fp32"  # the job says it, so every re-run sets it too
    assert job["options"]["INFERENCE_NUM_THREADS"] == b["threads"]


def test_recorded_precision_is_read_back_from_the_compiled_model(ir):
    from edgeprune.runner.adapters.openvino import OvModel

    for options in ({"precision": "fp32"}, {}):  # {}: a job from before precision was recorded
        m = OvModel(str(ir), options, 1)
        try:
            compiled = ov_type_name(m.compiled.get_property("INFERENCE_PRECISION_HINT"))
            assert compiled == m.settings["INFERENCE_PRECISION_HINT"] == "f32"
            assert m.settings["precision"] == "fp32"
        finally:
            m.close()


def test_compile_records_per_backend_the_precision_the_runner_ran(tmp_path):
    res = invoke("compile", "--model", "zoo:digits-cnn", "--backend", "openvino", "--quantize", "int8",
                 "--calibration-samples", "64", "--out", str(tmp_path / "c"), "--json", *FAST)
    assert res.exit_code == 0, res.output
    by = {b["name"]: b for b in json.loads(res.stdout)["backends"]}
    assert set(by) == {"openvino", "openvino-int8"}
    for name, want in (("openvino", "fp32"), ("openvino-int8", "int8")):
        b = by[name]
        assert b["precision"] == want == b["env"]["runtime_settings"]["precision"], b
        # int8 QDQ keeps f32 for the layers it does not quantize, never the plugin's bf16 default
        assert b["env"]["runtime_settings"]["INFERENCE_PRECISION_HINT"] == "f32"


@pytest.mark.skipif(NO_BF16 is None, reason="this CPU runs bf16 natively: the early refusal cannot happen here")
def test_bf16_without_the_instructions_fails_before_export(tmp_path):
    out = tmp_path / "c"
    res = CliRunner().invoke(cli, ["compile", "--model", "zoo:digits-cnn", "--precision", "bf16", "--out", str(out),
                                   *FAST])
    assert res.exit_code == BackendError.exit_code == 5, res.output
    line = res.output.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "amx_bf16" in line and "avx512_bf16" in line and "drop --precision bf16" in line
    assert not (out / "model.onnx").exists()  # refused before the export


@pytest.mark.skipif(NO_BF16 is not None, reason=f"no native bf16 on this CPU ({CPU.model}): {NO_BF16}")
def test_bf16_on_a_cpu_with_it_is_built_verified_by_accuracy_and_reported(tmp_path):
    res = invoke("compile", "--model", "zoo:digits-cnn", "--backend", "openvino", "--precision", "bf16",
                 "--out", str(tmp_path / "c"), "--json", *FAST)
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    by = {b["name"]: b for b in s["backends"]}
    fp32, bf16 = by["openvino"], by["openvino-bf16"]
    assert bf16["precision"] == "bf16" and bf16["env"]["runtime_settings"]["INFERENCE_PRECISION_HINT"] == "bf16"
    assert fp32["env"]["runtime_settings"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert bf16["tolerance"] > 100 * fp32["tolerance"] and bf16["verified"]  # the accuracy rule, as INT8
    assert bf16["accuracy"] >= s["original"]["accuracy"] - 1.0
    assert any("bf16/fp16 artifacts" in n for n in s["notes"])


@pytest.mark.skipif(NO_BF16 is None, reason="this CPU runs bf16 natively: the device-side refusal cannot happen")
def test_a_bf16_job_on_a_device_without_it_fails_on_the_device_and_is_reported_as_bf16(digits, tmp_path):
    """Where the host cannot know the board's CPU, the runner refuses the job there
    instead of letting OpenVINO compile f32 under the name bf16."""
    from edgeprune.bench.measure import measure_on
    from edgeprune.bench.settings import BenchSettings
    from edgeprune.compile.prepare import PrepareOptions, Variant, prepare
    from edgeprune.compile.summarize import backend_results
    from edgeprune.config.devices import LOCAL
    from edgeprune.config.targets import get_target

    p = prepare([Variant(model=digits)], get_target("host"), tmp_path, PrepareOptions(
        backends=("openvino",), precisions=("bf16",), bench=BenchSettings(min_runs=5, min_time_s=0.05, warmup=1)),
        log=lambda _m: None)
    v = p.deployed
    assert v.reduced_names == ["openvino-bf16"] and v.precision_of("openvino-bf16") == "bf16"
    assert v.tolerance_of("openvino-bf16") == v.int8_tolerance > v.tolerance_of("openvino")
    jobs = {j.id: j for j in p.bundle.jobs}
    assert jobs["openvino-bf16"].artifact == jobs["openvino"].artifact  # the same IR, run at bf16
    assert jobs["openvino-bf16"].options["precision"] == "bf16" and jobs["openvino"].options["precision"] == "fp32"
    by = {b.name: b for b in backend_results(p, measure_on(LOCAL, p.bundle), True)}
    assert by["openvino"].ok and by["openvino"].precision == "fp32"
    bad = by["openvino-bf16"]
    assert not bad.ok and bad.precision == "bf16"
    assert "bf16 needs" in bad.error and "lacks" in bad.error, bad.error


def test_runtimes_that_cannot_convert_refuse_a_reduced_precision(ir):
    from edgeprune.runner.adapters.ort import OrtModel
    from edgeprune.runner.adapters.tvm import TvmModel

    onnx_path = str(Path(ir).parent.parent / "model.onnx")
    with pytest.raises(JobError, match="onnxruntime runs the ONNX file's own types"):
        OrtModel(onnx_path, {"precision": "bf16"}, 1)
    with pytest.raises(JobError, match="fp32 only"):
        TvmModel("unused.so", {"precision": "fp16"}, 1)
    with pytest.raises(JobError, match="unknown precision 'fp8'"):
        job_precision({"precision": "fp8"})
    assert job_precision({"INFERENCE_PRECISION_HINT": "f32"}) == "fp32"  # a job written before this policy


def test_precision_check_reads_the_devices_flags():
    """The table is what other CPUs' /proc/cpuinfo flags say (Sapphire Rapids, an AVX2-only
    EPYC, an ARMv8.2 board): names, not guesses about this machine."""
    from edgeprune.compile.precision import check_precisions
    from edgeprune.config.targets import get_target

    t = get_target("host")
    spr = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16"}
    check_precisions(("bf16", "fp16"), ["openvino"], t, spr, "x86_64")
    with pytest.raises(BackendError, match=r"AMX-BF16 \(flag amx_bf16\) or AVX512-BF16") as e:
        check_precisions(("bf16",), ["openvino"], t, {"avx2", "fma"}, "x86_64")
    assert e.value.exit_code == 5
    with pytest.raises(BackendError, match="avx512_fp16"):  # AVX-512 without FP16 (OpenVINO would emulate)
        check_precisions(("fp16",), ["openvino"], t, {"avx512f", "avx512_bf16"}, "x86_64")
    check_precisions(("fp16",), ["openvino"], t, {"asimd", "asimdhp"}, "aarch64")
    with pytest.raises(BackendError, match="not supported on aarch64"):
        check_precisions(("bf16",), ["openvino"], t, {"asimd", "bf16"}, "aarch64")
    with pytest.raises(BackendError, match="needs one of these backends: openvino"):
        check_precisions(("bf16",), ["onnxruntime", "tvm"], t, spr, "x86_64")
    check_precisions(("bf16",), ["openvino"], t, None)  # flags unknown here: the runner checks on the device
