"""Thread and affinity settings: given per backend, applied by the on-device runner, and
recorded with every result (``env.threads``, ``env.affinity``, ``env.runtime_settings``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edgeprune.bench.bundle import BenchJob, write_manifest
from edgeprune.bench.executor import LocalExecutor
from edgeprune.bench.io import save_arrays
from edgeprune.compile.backends import get_backend

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")


@pytest.fixture(scope="module")
def built(tmp_path_factory, host_target):
    """One tiny model built by every backend, with the target asking for core 0 only."""
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((8, 3, 3, 3)) / 5).astype(np.float32)
    g = helper.make_graph([helper.make_node("Conv", ["input", "w"], ["output"], pads=[1, 1, 1, 1])], "c",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8, 16, 16])],
                          [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    root = tmp_path_factory.mktemp("threads")
    save(m, str(root / "m.onnx"))
    pinned = host_target.model_copy(update={"backend_options": {
        "onnxruntime": {"graph_optimization_level": "all", "cpu_affinity": [0]},
        "openvino": {"performance_hint": "LATENCY", "cpu_affinity": [0]},
        "tvm": {"cpu_affinity": [0], "tuning": "off"},
    }})
    bundle = root / "bundle"
    arts = {n: get_backend(n).build(root / "m.onnx", pinned, bundle / n, threads=1)
            for n in ("onnxruntime", "openvino", "tvm")}
    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    save_arrays(bundle / "data" / "in.npz", "in", [x])
    return bundle, arts


def run(bundle: Path, jobs: list[BenchJob]):
    write_manifest(bundle, jobs)
    return {r.id: r for r in LocalExecutor().run_bundle(bundle, timeout_s=600)}


def job(bundle: Path, name: str, art, threads: int, **extra) -> BenchJob:
    return BenchJob(id=f"{name}-{threads}", backend=name, artifact=str(art.path.relative_to(bundle)),
                    inputs="data/in.npz", threads=threads, options={**art.options, **extra}, warmup=1, min_runs=3,
                    min_time_s=0.0, max_time_s=5.0)


def test_threads_and_affinity_are_applied_and_recorded_per_backend(built):
    bundle, arts = built
    assert arts["onnxruntime"].options["cpu_affinity"] == [0]
    assert arts["openvino"].options["CPU_AFFINITY"] == [0]
    assert arts["tvm"].options["cpu_affinity"] == [0]
    res = run(bundle, [job(bundle, n, a, 1) for n, a in arts.items()])
    for name in arts:
        r = res[f"{name}-1"]
        assert r.ok, r.error
        assert r.threads == 1 and r.env["threads"] == 1
        assert r.env["affinity"] == [0], name
    assert res["onnxruntime-1"].env["runtime_settings"]["intra_op_num_threads"] == 1
    assert res["onnxruntime-1"].env["runtime_settings"]["graph_optimization_level"] == "ORT_ENABLE_ALL"
    assert res["openvino-1"].env["runtime_settings"]["INFERENCE_NUM_THREADS"] == "1"
    assert res["openvino-1"].env["runtime_settings"]["PERFORMANCE_HINT"] == "LATENCY"
    assert res["tvm-1"].env["runtime_settings"]["TVM_NUM_THREADS"] == "1"


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores")
def test_thread_count_changes_take_effect_and_unpinned_jobs_use_every_core(built):
    bundle, arts = built
    jobs = [job(bundle, "onnxruntime", arts["onnxruntime"], 2, cpu_affinity=None),
            job(bundle, "tvm", arts["tvm"], 2, cpu_affinity="0-1")]
    res = run(bundle, jobs)
    ort, tvm = res["onnxruntime-2"], res["tvm-2"]
    assert ort.ok and tvm.ok
    assert ort.env["runtime_settings"]["intra_op_num_threads"] == 2
    assert ort.env["affinity"] == sorted(os.sched_getaffinity(0))
    assert tvm.env["runtime_settings"]["TVM_NUM_THREADS"] == "2" and tvm.env["affinity"] == [0, 1]
