"""ONNX Runtime: an InferenceSession with the job's threads, sequential execution and
graph optimisation level; kernel timing from ORT's own profiler (a chrome trace).

ONNX Runtime runs the graph's own types: an fp32 ONNX file runs in fp32, a QDQ file in
int8 (fused QLinear kernels). A job asking it for bf16 / fp16 is refused instead of
being timed in fp32 under another name (:mod:`.precision`)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from ..timing import ort_kernel_times
from ..errors import JobError
from .base import Model, import_runtime
from .precision import job_precision

ORT_LEVELS = {
    "disable": "ORT_DISABLE_ALL", "none": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED", "layout": "ORT_ENABLE_LAYOUT", "all": "ORT_ENABLE_ALL",
}
#: what a job may ask of ONNX Runtime: the types of the ONNX file it is given
ORT_PRECISIONS = ("fp32", "int8")
ORT_TYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


class OrtModel(Model):
    def __init__(self, path, options, threads, kernel=False):
        precision = job_precision(options)
        if precision not in ORT_PRECISIONS:
            raise JobError("onnxruntime runs the ONNX file's own types (%s), not %s; time %s with openvino"
                           % (", ".join(ORT_PRECISIONS), precision, precision))
        ort = import_runtime("onnxruntime")
        self.runtime_version = ort.__version__
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        level = str(options.get("graph_optimization_level", "all")).lower()
        level_name = ORT_LEVELS.get(level, level if level.startswith("ORT_") else "ORT_ENABLE_ALL")
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level_name,
                                              ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        so.log_severity_level = 3
        self.profile_dir = None
        if kernel:  # per-node timings, written as a chrome trace when profiling ends
            self.profile_dir = tempfile.mkdtemp(prefix="ort-profile-")
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(self.profile_dir, "ort")
        providers = options.get("providers") or ["CPUExecutionProvider"]
        self.sess = ort.InferenceSession(path, so, providers=providers)
        self.settings = {"intra_op_num_threads": so.intra_op_num_threads, "inter_op_num_threads": 1,
                         "execution_mode": "sequential", "graph_optimization_level": level_name,
                         "providers": self.sess.get_providers(), "precision": precision}
        self.names = [i.name for i in self.sess.get_inputs()]
        self.input_specs = [
            (i.name, [d if isinstance(d, int) else None for d in i.shape], ORT_TYPES.get(i.type))
            for i in self.sess.get_inputs()
        ]

    def prepare(self, arrays):
        return dict(zip(self.names, arrays))

    def run(self, prepared):
        self.sess.run(None, prepared)

    def outputs(self, prepared):
        return list(self.sess.run(None, prepared))

    def kernel_times(self, n):
        if self.profile_dir is None:
            return Model.kernel_times(self, n)
        path = self.sess.end_profiling()
        try:
            with open(path) as f:
                events = json.load(f)
        finally:
            shutil.rmtree(self.profile_dir, ignore_errors=True)
            self.profile_dir = None
        return ort_kernel_times(events, n)

    def close(self):
        self.sess = None
        if self.profile_dir is not None:
            shutil.rmtree(self.profile_dir, ignore_errors=True)
