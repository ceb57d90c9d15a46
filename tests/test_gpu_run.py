"""This machine's NVIDIA GPU as a target (``host-cuda``): detected, built for, run and verified.

Two kinds of test:

* everywhere: the GPU is read from ``nvidia-smi`` output (captured lines fed to the real
  parser), a machine without a GPU gets one clear line (``get_target``, the CLI, the
  runner, ``scripts/gpu-check.sh``), a GPU target whose TVM cannot run CUDA is refused at
  preflight, and ONNX Runtime without CUDA says it ran on the CPU;
* ``gpu``-marked: on a machine with an NVIDIA GPU and a CUDA-capable TVM, a small CNN is
  built for the GPU found, run on it, checked against the CPU reference and timed. They
  run by default and skip elsewhere with the reason ("no NVIDIA GPU (nvidia-smi not
  found)"); ``scripts/gpu-check.sh`` runs them with ``-m gpu``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from edgeprune.bench.io import save_arrays
from edgeprune.config.gpu import NvidiaGpu, detect_gpu, gpu_from_row, visible_row
from edgeprune.errors import BackendError, ConfigError
from edgeprune.runner.probe import NVIDIA_SMI_QUERY, nvidia_gpus, parse_nvidia_smi

REPO = Path(__file__).resolve().parents[1]
HOST_CUDA = REPO / "edgeprune" / "targets" / "host-cuda.yaml"

#: published nvidia-smi output (an H100 machine's `--query-gpu=index,name,memory.total --format=csv`)
H100_CAPTURE = "index, name, memory.total [MiB]\n0, NVIDIA H100 80GB HBM3, 81559 MiB\n"
#: this query's header, and the H200 this workplace lends as its nvidia-smi and PyTorch reported it
#: (.library/device/KINDS.md: "NVIDIA H200", 143771 MiB, driver 580.159.03, SM clock 1980 MHz, 132 SMs)
QUERY_HEADER = "index, name, compute_cap, memory.total [MiB], clocks.max.sm [MHz], driver_version"
H200_LINE = "0, NVIDIA H200, 9.0, 143771 MiB, 1980 MHz, 580.159.03"


def gpu_skip_reason() -> str | None:
    """Why the ``gpu`` tests cannot run here, or None."""
    _rows, why = nvidia_gpus()
    if why:
        return f"no NVIDIA GPU ({why})"
    from edgeprune.compile.backends.tvm.cuda import build_problem, cuda_problem

    problem = cuda_problem() or build_problem()
    return f"TVM cannot build and run CUDA here: {problem}" if problem else None


def no_gpu_path(tmp_path: Path) -> str:
    """A PATH without nvidia-smi (an empty folder): 'no GPU' on any machine."""
    d = tmp_path / "no-gpu-bin"
    d.mkdir(exist_ok=True)
    return str(d)


def small_cnn(path: Path) -> Path:
    """Conv-BN-ReLU x2, global pooling and a linear head as ONNX (the zoo CNNs' operators)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.randn(1, 3, 32, 32),), str(path), input_names=["input"],
                          output_names=["logits"], opset_version=17, dynamo=False)
    return path


# ------------------------------------------------------------------ detection (everywhere)
def test_nvidia_smi_csv_is_read_by_column_name():
    """The header names the columns, units are stripped, numbers become ints."""
    assert parse_nvidia_smi(H100_CAPTURE) == [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory.total": 81559}]
    rows = parse_nvidia_smi(QUERY_HEADER + "\n" + H200_LINE + "\n")
    assert rows == [{"index": 0, "name": "NVIDIA H200", "compute_cap": "9.0", "memory.total": 143771,
                     "clocks.max.sm": 1980, "driver_version": "580.159.03"}]
    assert [h.split(" [")[0] for h in QUERY_HEADER.split(", ")] == list(NVIDIA_SMI_QUERY)  # what is asked
    assert parse_nvidia_smi("") == []


def test_the_gpu_found_gives_arch_and_fp32_peak():
    gpu = gpu_from_row(parse_nvidia_smi(QUERY_HEADER + "\n" + H200_LINE)[0], sms=132)
    assert (gpu.name, gpu.arch, gpu.memory_mib, gpu.driver) == ("NVIDIA H200", "sm_90", 143771, "580.159.03")
    assert gpu.peak_gflops() == pytest.approx(132 * 128 * 1.98 * 2)  # NVIDIA publishes 67 TFLOP/s fp32
    assert gpu.peak_description().startswith("132 SMs x 128 fp32 lanes x 1.98 GHz max SM clock x 2 = 66908 GFLOP/s")
    assert gpu.describe() == "NVIDIA H200 (sm_90, 143771 MiB, driver 580.159.03)"


def test_missing_facts_are_said_not_guessed():
    """A GPU that does not report its clock ([N/A], as under some vGPU / MIG setups) has
    no peak, and says which factor is missing; a driver without compute_cap is refused."""
    row = parse_nvidia_smi(QUERY_HEADER + "\n0, NVIDIA A100-SXM4-80GB, 8.0, 81920 MiB, [N/A], 535.129.03")[0]
    assert row["clocks.max.sm"] is None
    gpu = gpu_from_row(row, sms=108)
    assert gpu.arch == "sm_80" and gpu.peak_gflops() is None
    assert "max SM clock (nvidia-smi)" in gpu.peak_description()
    with pytest.raises(ValueError, match="compute capability.*driver >= 510"):
        gpu_from_row(parse_nvidia_smi(H100_CAPTURE)[0])


def test_cuda_device_0_is_the_first_gpu_cuda_visible_devices_names(monkeypatch):
    text = QUERY_HEADER + "\n" + H200_LINE + "\n1, NVIDIA H100 80GB HBM3, 9.0, 81559 MiB, 1980 MHz, 580.159.03\n"
    rows = parse_nvidia_smi(text)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_row(rows)["name"] == "NVIDIA H200"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    assert visible_row(rows)["name"] == "NVIDIA H100 80GB HBM3"


def test_host_cuda_target_takes_the_gpu_found():
    from edgeprune.compile.backends.tvm.targets import target_dict
    from edgeprune.config.targets import load_target_file

    gpu = gpu_from_row(parse_nvidia_smi(QUERY_HEADER + "\n" + H200_LINE)[0], sms=132)
    t = load_target_file(HOST_CUDA, gpu=(gpu, None))
    assert t.cuda_arch == "sm_90" and t.gpu == gpu and t.unavailable is None
    assert t.is_native and t.accelerator == "cuda"
    assert t.peak_gflops() == pytest.approx(gpu.peak_gflops())
    assert "NVIDIA H200" in t.peak_description() and "NVIDIA H200" in (t.detected or "")
    d = target_dict(t)
    assert d["kind"] == "cuda" and d["arch"] == "sm_90" and d["host"]["kind"] == "llvm"


def test_without_a_gpu_the_target_is_refused_in_one_line(monkeypatch, tmp_path):
    from edgeprune.config.targets import get_target, list_targets

    monkeypatch.setenv("PATH", no_gpu_path(tmp_path))
    assert detect_gpu() == (None, "nvidia-smi not found")
    with pytest.raises(ConfigError) as e:
        get_target("host-cuda")
    assert str(e.value) == ("target host-cuda: no NVIDIA GPU found (nvidia-smi not found): use --target host, "
                            "or run on a machine with one")
    assert e.value.exit_code == 3
    listed = {t.name: t for t in list_targets()}  # still listed, marked, with no made-up peak
    assert listed["host-cuda"].unavailable and listed["host-cuda"].peak_gflops() == 0.0
    assert not listed["host-cuda"].is_native


def test_compile_for_host_cuda_without_a_gpu_exits_3_before_any_work(tmp_path):
    env = dict(os.environ, PATH=no_gpu_path(tmp_path), EDGEPRUNE_DB="none")
    p = subprocess.run([sys.executable, "-m", "edgeprune.cli", "compile", "--model", "zoo:digits-cnn", "--target",
                        "host-cuda", "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env,
                       cwd=REPO, timeout=300)
    assert p.returncode == 3, p.stderr
    assert "no NVIDIA GPU found (nvidia-smi not found): use --target host" in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ preflight and runner (everywhere)
def test_a_gpu_target_whose_tvm_cannot_run_cuda_is_refused_at_preflight():
    """With --backends tvm: one line saying why (here: TVM's CUDA runtime needs the NVIDIA
    driver's libcuda.so.1), before any export; with auto, ONNX Runtime still runs."""
    from edgeprune.compile.backends.tvm.cuda import cuda_problem
    from edgeprune.config.targets import load_target_file
    from edgeprune.flows.preflight import check_backends

    problem = cuda_problem()
    if problem is None:
        pytest.skip("TVM builds and runs CUDA on this machine: there is nothing to refuse")
    gpu = gpu_from_row(parse_nvidia_smi(QUERY_HEADER + "\n" + H200_LINE)[0], sms=132)
    target = load_target_file(HOST_CUDA, gpu=(gpu, None))
    with pytest.raises(BackendError) as e:
        check_backends(("tvm",), target)
    assert str(e.value).startswith(f"backend 'tvm' cannot build for target host-cuda: {problem}")
    assert "\n" not in str(e.value) and e.value.exit_code == 5
    assert check_backends((), target) == ["onnxruntime"]


def _run_one_job(bundle: Path, backend: str, artifact: str, options: dict) -> dict:
    from edgeprune.runner.job import run_job
    from edgeprune.runner.manifest import JOB_DEFAULTS

    job = dict(JOB_DEFAULTS, id=backend, backend=backend, artifact=artifact, inputs="data/inputs.npz",
               expected="data/expected.npz", tolerance=1e-4, threads=1, warmup=1, min_runs=3, min_time_s=0.0,
               options=options)
    return run_job(job, str(bundle), {})


@pytest.fixture(scope="module")
def cnn_bundle(tmp_path_factory) -> Path:
    """A bundle folder with the small CNN, its input and its CPU reference output."""
    import onnxruntime as ort

    b = tmp_path_factory.mktemp("gpu-bundle")
    onnx_path = small_cnn(b / "model.onnx")
    x = np.random.RandomState(0).randn(1, 3, 32, 32).astype(np.float32)
    ref = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    save_arrays(b / "data" / "inputs.npz", "in", [x])
    save_arrays(b / "data" / "expected.npz", "out", ref)
    return b


def test_onnxruntime_without_cuda_runs_on_the_cpu_and_says_so(cnn_bundle):
    import onnxruntime as ort

    from edgeprune.config.targets import load_target_file

    gpu = gpu_from_row(parse_nvidia_smi(QUERY_HEADER + "\n" + H200_LINE)[0])
    options = load_target_file(HOST_CUDA, gpu=(gpu, None)).options_for("onnxruntime")
    r = _run_one_job(cnn_bundle, "onnxruntime", "model.onnx", options)
    assert r["ok"] and r["verified"], r
    settings = r["env"]["runtime_settings"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert settings["providers"][0] == "CUDAExecutionProvider" and "note" not in settings
        return
    assert settings["providers"] == ["CPUExecutionProvider"]
    assert settings["note"] == ("CUDAExecutionProvider is not available in this onnxruntime (not built with CUDA: "
                                "install onnxruntime-gpu); ran on CPUExecutionProvider, so the CPU result is the "
                                "reference")


def test_a_cuda_artifact_on_a_machine_tvm_cannot_run_it_fails_in_one_line(cnn_bundle, tmp_path):
    """Built here for a GPU this machine lacks (a board target), then run by the runner."""
    import yaml

    from edgeprune.compile.backends import get_backend
    from edgeprune.config.targets import load_target_file
    from edgeprune.runner.adapters.tvm import cuda_unavailable

    import tvm

    why = cuda_unavailable(tvm)
    if why is None:
        pytest.skip("TVM runs CUDA on this machine")
    board = tmp_path / "x86-sm90.yaml"
    board.write_text(yaml.safe_dump({"name": "x86-sm90", "arch": "x86_64", "triple": "x86_64-linux-gnu",
                                     "cpu": "x86-64", "cores": 1, "accelerator": "cuda", "cuda_arch": "sm_90",
                                     "clock_ghz": 2.0, "backends": ["tvm"]}))
    target = load_target_file(board)
    art = get_backend("tvm").build(cnn_bundle / "model.onnx", target, cnn_bundle / "tvm-cuda")
    assert art.options["device"] == "cuda"
    assert any(n.startswith("compile-verified only") and "CUDA C source" in n for n in art.notes), art.notes
    r = _run_one_job(cnn_bundle, "tvm", "tvm-cuda/model.so", dict(art.options, precision="fp32"))
    assert not r["ok"] and r["error"] == f"cannot run this CUDA artifact here: {why}"


def test_a_cubin_runs_only_on_its_own_gpu_generation():
    from edgeprune.runner.adapters.tvm import arch_mismatch

    assert arch_mismatch("sm_80", "8.6") is None and arch_mismatch("sm_90a", "9.0") is None
    assert "built for sm_90 but this GPU is sm_80" in arch_mismatch("sm_90", "8.0")
    assert arch_mismatch("sm_90", "10.0") is not None
    assert arch_mismatch(None, "9.0") is None


def test_gpu_check_script_without_a_gpu_exits_non_zero_with_one_clear_line(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), NVIDIA_SMI=str(tmp_path / "no-nvidia-smi"))
    p = subprocess.run(["bash", str(REPO / "scripts" / "gpu-check.sh")], capture_output=True, text=True, env=env,
                       cwd=REPO, timeout=120)
    assert p.returncode != 0
    assert "gpu-check: FAILED: no NVIDIA GPU found (nvidia-smi not found" in p.stdout + p.stderr
    assert "Traceback" not in p.stdout + p.stderr


# ------------------------------------------------------------------ on a GPU (marked gpu)
@pytest.fixture(scope="module")
def gpu_here():
    why = gpu_skip_reason()
    if why:
        pytest.skip(why)
    gpu, why = detect_gpu()
    assert gpu is not None, why
    return gpu


@pytest.mark.gpu
def test_small_cnn_built_for_the_gpu_found_runs_there_and_matches_the_cpu(gpu_here: NvidiaGpu, tmp_path):
    from edgeprune.bench.settings import BenchSettings
    from edgeprune.config.devices import LOCAL
    from edgeprune.config.targets import get_target
    from edgeprune.flows.compile import CompileOptions, compile_model
    from edgeprune.models.spec import load_model

    target = get_target("host-cuda")
    assert target.cuda_arch == gpu_here.arch and target.is_native
    model = load_model(str(small_cnn(tmp_path / "cnn.onnx")), log=lambda _m: None)
    summary = compile_model(model, target, LOCAL, tmp_path / "out",
                            CompileOptions(backends=("tvm", "onnxruntime"),
                                           bench=BenchSettings(min_runs=20, min_time_s=0.2, warmup=5, rounds=1)),
                            log=lambda _m: None)
    res = {b.name: b for b in summary.backends}
    tvm = res["tvm"]
    assert tvm.ok, tvm.error
    assert tvm.verified and tvm.max_abs_diff is not None and tvm.max_abs_diff <= tvm.tolerance
    assert tvm.latency_ms is not None and tvm.latency_ms.median > 0 and tvm.runs >= 20
    settings = tvm.env["runtime_settings"]
    assert settings["device"] == "cuda" and settings["gpu"]["compute_version"] == gpu_here.compute_cap
    assert any(f"embeds a cubin for {gpu_here.arch}" in n for n in tvm.notes), tvm.notes
    ort = res["onnxruntime"]
    assert ort.ok and ort.verified, ort.error
    assert not any("compile-verified only" in n for n in summary.notes)
    assert gpu_here.name in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.gpu
def test_digits_cnn_keeps_its_accuracy_on_the_gpu(gpu_here: NvidiaGpu, tmp_path):
    from edgeprune.bench.settings import BenchSettings
    from edgeprune.config.devices import LOCAL
    from edgeprune.config.targets import get_target
    from edgeprune.flows.compile import CompileOptions, compile_model
    from edgeprune.models.spec import load_model

    model = load_model("zoo:digits-cnn", log=lambda _m: None)
    summary = compile_model(model, get_target("host-cuda"), LOCAL, tmp_path / "out",
                            CompileOptions(backends=("tvm",), bench=BenchSettings(min_runs=10, min_time_s=0.1,
                                                                                   warmup=3, rounds=1)),
                            log=lambda _m: None)
    tvm = summary.chosen()
    assert tvm is not None and tvm.ok and tvm.verified, summary.choice_reason
    assert tvm.accuracy is not None and summary.original.accuracy is not None
    assert abs(tvm.accuracy - summary.original.accuracy) <= 0.5
