"""Embedded GPU targets: TVM builds CUDA (Jetson Orin Nano, sm_87) and OpenCL (Mali-G610)
artifacts on this x86 host, cross-linked for the boards' aarch64 CPUs.

No such GPU is attached here, so these artifacts are compile-verified only; what is
checked is what can be checked without the board: an aarch64 ELF that embeds device
code, one kernel per fused operator, every kernel bound to GPU threads, and the
convolutions/matmuls tiled through on-chip (shared / local) memory by dlight's GPU rules
rather than the one-thread-per-output fallback.
"""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import pytest

from edgeprune.compile.backends import get_backend
from edgeprune.config.targets import get_target

pytestmark = pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None,
                                reason="needs the aarch64 cross compiler (apt-get install g++-aarch64-linux-gnu)")

ELF_MACHINE_AARCH64 = 183


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory) -> Path:
    """Conv-BN-ReLU x2, global pooling and a linear head: the operators of the zoo CNNs."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()
    path = tmp_path_factory.mktemp("gpu") / "cnn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.randn(1, 3, 32, 32),), str(path), input_names=["input"], output_names=["logits"],
                          opset_version=17, dynamo=False)
    return path


def kernels(source: str, kind: str) -> dict[str, str]:
    """Kernel name -> body, from CUDA or OpenCL source."""
    head = (r'extern "C" __global__ void (?:__launch_bounds__\((\d+)\) )?(\w+)\(' if kind == "cuda"
            else r"__kernel void (\w+)\(")
    out = {}
    for m in re.finditer(head + r"[^;{]*\{", source):
        name = m.group(2) if kind == "cuda" else m.group(1)
        depth, i = 1, m.end()
        while depth and i < len(source):
            depth += {"{": 1, "}": -1}.get(source[i], 0)
            i += 1
        out[name] = source[m.start():i]
    return out


def build(onnx_path: Path, target_name: str, out: Path):
    target = get_target(target_name)
    art = get_backend("tvm").build(onnx_path, target, out)
    return target, art


def aarch64_elf(path: Path) -> bool:
    head = path.read_bytes()[:20]
    return head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == ELF_MACHINE_AARCH64


def test_cuda_sm87_artifact_has_scheduled_kernels(cnn_onnx, tmp_path):
    target, art = build(cnn_onnx, "jetson-orin-nano", tmp_path / "cuda")
    assert target.cuda_arch == "sm_87"
    assert art.path.name == "model.so" and aarch64_elf(art.path)
    assert art.options["device"] == "cuda" and art.options["target"]["arch"] == "sm_87"
    assert any("compile-verified only" in n for n in art.notes)

    src = (tmp_path / "cuda" / "kernels.cu").read_text()
    ks = kernels(src, "cuda")
    convs = [k for k in ks if "conv2d" in k]
    assert len(convs) == 2 and any("matmul" in k for k in ks), sorted(ks)
    assert b"__global__" in art.path.read_bytes()  # the source travels inside the .so
    for name, body in ks.items():
        bound = re.search(r"__launch_bounds__\((\d+)\)", body)
        assert bound and int(bound.group(1)) >= 32, f"{name} is not bound to a block of threads"
        assert "threadIdx.x" in body, name
    for name in convs:  # dlight's Matmul rule: implicit GEMM tiled through shared memory, register accumulators
        assert "blockIdx" in ks[name], f"{name} runs in a single block"
        assert "__shared__" in ks[name] and "__syncthreads()" in ks[name], f"{name} is not tiled"


def test_opencl_mali_artifact_has_scheduled_kernels(cnn_onnx, tmp_path):
    target, art = build(cnn_onnx, "mali-g610", tmp_path / "ocl")
    assert target.accelerator == "opencl"
    assert aarch64_elf(art.path)
    assert art.options["device"] == "opencl" and art.options["target"]["device"] == "mali"
    assert any("compile-verified only" in n for n in art.notes)

    src = (tmp_path / "ocl" / "kernels.cl").read_text()
    ks = kernels(src, "opencl")
    convs = [k for k in ks if "conv2d" in k]
    assert len(convs) == 2, sorted(ks)
    for name, body in ks.items():
        assert "get_local_id(0)" in body, f"{name} is not bound to work-items"
    for name in convs:
        assert "get_group_id(0)" in ks[name], f"{name} runs in a single work-group"
        assert "__local" in ks[name] and "barrier(CLK_LOCAL_MEM_FENCE)" in ks[name], f"{name} is not tiled"


def test_compile_for_gpu_target_without_device_says_compile_verified(cnn_onnx, tmp_path):
    """The whole pipeline on a GPU target with only this host: built, not benchmarked, and said so."""
    from edgeprune.flows.compile import CompileOptions, compile_model
    from edgeprune.config.devices import LOCAL
    from edgeprune.models.spec import load_model

    model = load_model(str(cnn_onnx), log=lambda _m: None)
    summary = compile_model(model, get_target("mali-g610"), LOCAL, tmp_path / "out",
                            CompileOptions(backends=("tvm",)), log=lambda _m: None)
    tvm = summary.chosen()
    assert summary.backend == "tvm" and tvm is not None and tvm.artifact
    assert tvm.latency_ms is None and "no device" in summary.choice_reason
    assert any("compile-verified only" in n for n in summary.notes)
    assert "compile-verified only" in (tmp_path / "out" / "report.md").read_text()
