"""Small real models and synthetic history for the results / nightly tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeprune.results import fingerprint
from edgeprune.results.records import Measurement

FAST_BENCH = {"warmup": 3, "min_runs": 20, "min_time_s": 0.2, "threads": 1}  # 1 thread: steadier on a busy 2-core box


def conv_onnx(path: Path, channels: int = 16, hw: int = 32, seed: int = 0) -> Path:
    """A two-conv classifier as an ONNX file; more channels = a real, larger slowdown."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    init = [
        numpy_helper.from_array((rng.standard_normal((channels, 3, 3, 3)) * 0.2).astype(np.float32), "w1"),
        numpy_helper.from_array((rng.standard_normal((channels, channels, 3, 3)) * 0.1).astype(np.float32), "w2"),
        numpy_helper.from_array((rng.standard_normal((10, channels)) * 0.1).astype(np.float32), "wf"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Conv", ["b", "w2"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["d"]),
        helper.make_node("GlobalAveragePool", ["d"], ["e"]),
        helper.make_node("Flatten", ["e"], ["f"]),
        helper.make_node("Gemm", ["f", "wf"], ["y"], transB=1),
    ]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, hw, hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def times(rng: np.random.Generator, level: float = 1.0, n: int = 200, run_sd: float = 0.005) -> list[float]:
    t = level * np.exp(rng.normal(0, run_sd)) * (1 + np.abs(rng.standard_t(4, n)) * 0.01)
    return [float(x) for x in t]


def measurement(rng: np.random.Generator, level: float = 1.0, model: str = "zoo:digits-cnn",
                backend: str = "onnxruntime", device: str = "local", accuracy: float | None = 97.0,
                verified: bool | None = True, env: dict | None = None, version: str = "1.32.0",
                variant: str = "", pruned: bool = False, variant_info: dict | None = None, ok: bool = True) -> Measurement:
    env = dict(env or fingerprint.collect())
    return Measurement(
        model=model, backend=backend, target="host", device=device, ok=ok, error=None if ok else "build failed",
        times_ms=times(rng, level) if ok else [], accuracy=accuracy if ok else None, verified=verified if ok else None,
        parity_max_diff=2e-6 if ok else None, parity_tolerance=1e-4, threads=2, backend_version=version, env=env,
        series=fingerprint.series_key(env, backend, version, 2), variant=variant, pruned=pruned,
        variant_info=variant_info or {}, model_hash="m" * 64, artifact_hash="a" * 64,
    )
