"""Backends build real artifacts (ONNX Runtime, OpenVINO IR, TVM .so) and the runner runs them."""

from __future__ import annotations

import shutil
import struct
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeprune.bench.bundle import BenchJob, write_manifest
from edgeprune.bench.executor import LocalExecutor
from edgeprune.bench.io import save_arrays
from edgeprune.compile.backends import BACKENDS, Artifact, get_backend
from edgeprune.config.targets import Target, get_target
from edgeprune.errors import BackendError

ALL = ["onnxruntime", "openvino", "tvm"]


@pytest.fixture(scope="session")
def target(host_target) -> Target:
    return host_target


@pytest.fixture(scope="session")
def conv_model(tmp_path_factory):
    """A tiny conv net exported by torch, with an input and ONNX Runtime's outputs."""
    import onnxruntime as ort
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = torch.relu(self.bn(self.c1(x)))
            x = torch.relu(self.c2(x))
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(0)
    m = Tiny().eval()
    x = torch.randn(1, 3, 16, 16)
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(m, (x,), str(path), input_names=["input"], output_names=["logits"], opset_version=17,
                          dynamo=False)
    xn = x.numpy()
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": xn})
    return path, xn, ref


def make_bundle(bundle: Path, artifacts: dict[str, Artifact], x: np.ndarray, ref: list[np.ndarray]) -> None:
    save_arrays(bundle / "data" / "inputs.npz", "in", [x])
    save_arrays(bundle / "data" / "expected.npz", "out", ref)
    jobs = [
        BenchJob(id=name, backend=name, artifact=str(a.path.relative_to(bundle)), inputs="data/inputs.npz",
                 expected="data/expected.npz", tolerance=1e-4, threads=1, options=a.options,
                 warmup=2, min_runs=5, min_time_s=0.0, max_time_s=10.0)
        for name, a in artifacts.items()
    ]
    write_manifest(bundle, jobs)


@pytest.mark.parametrize("name", ALL)
def test_backend_builds_for_host_and_runner_matches_ort(name, conv_model, target, tmp_path):
    path, x, ref = conv_model
    backend = get_backend(name)
    assert backend.version()
    assert backend.supports(target) == (True, "")
    art = backend.build(path, target, tmp_path / name, threads=1)
    assert art.backend == name and art.target == target.name
    assert art.path.is_file() and all(f.is_file() for f in art.files) and art.path in art.files
    assert art.build_seconds > 0
    assert art.to_dict()["path"] == str(art.path)
    if name == "openvino":
        assert {f.suffix for f in art.files} == {".xml", ".bin"}
        assert art.options["INFERENCE_NUM_THREADS"] == 1
    if name == "onnxruntime":
        assert art.options["intra_op_num_threads"] == 1 and art.options["graph_optimization_level"] == "all"

    make_bundle(tmp_path, {name: art}, x, ref)
    [r] = LocalExecutor().run_bundle(tmp_path, timeout_s=300)
    assert r.ok, r.error
    assert r.verified is True and r.max_abs_diff is not None and r.max_abs_diff <= 1e-4
    assert len(r.times_ms) >= 5 and all(t > 0 for t in r.times_ms)
    assert r.threads == 1 and r.runtime_version
    assert r.env["machine"] and r.env["runtime"] == name


def test_unknown_backend_lists_the_choices():
    with pytest.raises(BackendError, match=r"unknown backend 'tensorrt'.*Choose from: onnxruntime, openvino, tvm"):
        get_backend("tensorrt")
    assert BACKENDS.names() == ALL


def test_supports_reflects_the_target():
    assert get_backend("openvino").supports(get_target("jetson-orin-nano"))[0] is False
    assert get_backend("openvino").supports(get_target("rpi4")) == (True, "")
    assert get_backend("onnxruntime").supports(get_target("rpi4")) == (True, "")
    assert get_backend("tvm").supports(get_target("mali-g610")) == (True, "")


def test_portable_artifacts_build_for_a_foreign_target(conv_model, tmp_path):
    path, _, _ = conv_model
    rpi4 = get_target("rpi4")
    ort_art = get_backend("onnxruntime").build(path, rpi4, tmp_path / "ort")
    assert ort_art.options["intra_op_num_threads"] == 4  # the board's cores, not this host's
    ov_art = get_backend("openvino").build(path, rpi4, tmp_path / "ov")
    assert ov_art.options["INFERENCE_NUM_THREADS"] == 4 and ov_art.options["PERFORMANCE_HINT"] == "LATENCY"


def _elf_machine(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF"
    return head[4], struct.unpack("<H", head[18:20])[0]  # (class: 2 = 64-bit, e_machine)


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None,
                    reason="aarch64-linux-gnu-g++ not installed (apt-get install g++-aarch64-linux-gnu)")
def test_tvm_cross_compiles_an_aarch64_shared_object(conv_model, tmp_path):
    path, _, _ = conv_model
    art = get_backend("tvm").build(path, get_target("rpi4"), tmp_path)
    assert _elf_machine(art.path) == (2, 183)  # ELFCLASS64, EM_AARCH64
    assert art.options["target"]["mtriple"] == "aarch64-linux-gnu"
    assert art.options["target"]["mattr"] == ["+neon"]
    assert any("aarch64-linux-gnu-g++" in n for n in art.notes)


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None,
                    reason="aarch64-linux-gnu-g++ not installed (apt-get install g++-aarch64-linux-gnu)")
@pytest.mark.parametrize("tname,device", [("jetson-orin-nano", "cuda"), ("mali-g610", "opencl")])
def test_tvm_compiles_for_embedded_gpus(conv_model, tmp_path, tname, device):
    path, _, _ = conv_model
    art = get_backend("tvm").build(path, get_target(tname), tmp_path)
    assert _elf_machine(art.path) == (2, 183)
    assert art.options["device"] == device and art.options["target"]["kind"] == device
    assert any("compile-verified only" in n for n in art.notes)


def test_tvm_missing_cross_compiler_says_what_to_install(conv_model, tmp_path):
    path, _, _ = conv_model
    t = get_target("rpi4")
    t = t.model_copy(update={"backend_options": {"tvm": {"cross_compiler": "aarch64-nowhere-linux-gnu-g++"}}})
    with pytest.raises(BackendError, match=r"cross compiler 'aarch64-nowhere-linux-gnu-g\+\+'.*apt-get install"):
        get_backend("tvm").build(path, t, tmp_path)


def test_tvm_rejects_dynamic_shapes_in_one_line(tmp_path, target):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    p = tmp_path / "dyn.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(p))
    with pytest.raises(BackendError, match=r"dynamic dimension 0 \('batch'\).*static shapes"):
        get_backend("tvm").build(p, target, tmp_path / "out")


@pytest.mark.parametrize("name", ALL)
def test_build_failure_is_one_clear_line(name, tmp_path, target):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not an onnx file")
    with pytest.raises(BackendError) as ei:
        get_backend(name).build(bad, target, tmp_path / "out")
    msg = str(ei.value)
    assert msg.startswith(f"{name} build for target {target.name} failed: ") and "\n" not in msg
