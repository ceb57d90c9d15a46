"""ONNX Runtime: an InferenceSession with the job's threads, sequential execution and
graph optimisation level; kernel timing from ORT's own profiler (a chrome trace).

ONNX Runtime runs the graph's own types: an fp32 ONNX file runs in fp32, a QDQ file in
int8 (fused QLinear kernels). A job asking it for bf16 / fp16 is refused instead of
being timed in fp32 under another name (:mod:`.precision`).

Execution providers (``providers`` option, names or ``[name, {options}]`` pairs, in order
of preference; default the CPU): a provider this ONNX Runtime does not have
(``CUDAExecutionProvider`` needs onnxruntime-gpu) is left out and the job runs on the
next one, recorded in ``env.runtime_settings`` (``providers``: what the session really
uses) with a ``note`` the report shows, so a CPU run is never reported as a GPU one. On
CUDA the inputs are bound on the GPU once and the outputs stay there (IOBinding), as
TVM's CUDA job keeps them: both time the GPU's work, not host copies."""

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
        providers, note = choose_providers(options.get("providers"), ort.get_available_providers())
        self.sess = ort.InferenceSession(path, so, providers=providers)
        used = self.sess.get_providers()
        wanted = provider_name(providers[0])
        if note is None and used and used[0] != wanted:  # asked for, available, and still not taken
            note = ("onnxruntime could not start %s here and ran on %s (its libraries did not load); the %s result "
                    "is the reference" % (wanted, used[0], used[0].replace("ExecutionProvider", "")))
        self.settings = {"intra_op_num_threads": so.intra_op_num_threads, "inter_op_num_threads": 1,
                         "execution_mode": "sequential", "graph_optimization_level": level_name,
                         "providers": used, "precision": precision}
        if note:
            self.settings["note"] = note
        self.cuda = bool(used) and used[0] == "CUDAExecutionProvider"
        if self.cuda:
            self.settings["io"] = "inputs and outputs on the GPU (IOBinding)"
        self.ort = ort
        self.names = [i.name for i in self.sess.get_inputs()]
        self.input_specs = [
            (i.name, [d if isinstance(d, int) else None for d in i.shape], ORT_TYPES.get(i.type))
            for i in self.sess.get_inputs()
        ]

    def prepare(self, arrays):
        if not self.cuda:
            return dict(zip(self.names, arrays))
        binding = self.sess.io_binding()
        for name, a in zip(self.names, arrays):  # copied to the GPU once, outside the timed loop
            binding.bind_ortvalue_input(name, self.ort.OrtValue.ortvalue_from_numpy(a, "cuda", 0))
        for o in self.sess.get_outputs():
            binding.bind_output(o.name, "cuda", 0)
        binding.synchronize_inputs()
        return binding

    def run(self, prepared):
        if self.cuda:
            self.sess.run_with_iobinding(prepared)
            prepared.synchronize_outputs()  # the time ends when the GPU's work does
            return
        self.sess.run(None, prepared)

    def outputs(self, prepared):
        if self.cuda:
            self.sess.run_with_iobinding(prepared)
            prepared.synchronize_outputs()
            return list(prepared.copy_outputs_to_cpu())
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
        self.ort = None
        if self.profile_dir is not None:
            shutil.rmtree(self.profile_dir, ignore_errors=True)


def provider_name(p) -> str:
    """``"CUDAExecutionProvider"`` from a provider entry: a name or a [name, options] pair."""
    return p if isinstance(p, str) else str(p[0])


def choose_providers(requested, available) -> tuple[list, str | None]:
    """The requested providers this ONNX Runtime has, in order (pairs as ``(name, {str:
    str})`` tuples, as ORT takes them), and a note when the first choice is missing."""
    requested = list(requested or ["CPUExecutionProvider"])
    chosen = []
    for p in requested:
        name = provider_name(p)
        if name not in available:
            continue
        chosen.append(name if isinstance(p, str) else (name, {str(k): str(v) for k, v in dict(p[1]).items()}))
    if not chosen:
        chosen = ["CPUExecutionProvider"]
    first, used = provider_name(requested[0]), provider_name(chosen[0])
    if first == used:
        return chosen, None
    why = " (not built with CUDA: install onnxruntime-gpu)" if first == "CUDAExecutionProvider" else ""
    return chosen, ("%s is not available in this onnxruntime%s; ran on %s, so the %s result is the reference"
                    % (first, why, used, used.replace("ExecutionProvider", "")))
