#!/usr/bin/env python3
"""edgeprune on-device benchmark runner (self-contained; copied into every deploy bundle).

Needs only Python >= 3.8, numpy and the runtime of each job (onnxruntime, openvino or
apache-tvm). It must never import edgeprune: it runs with a plain python on a board.

Usage::

    python runner.py BUNDLE_DIR [--only JOB_ID ...] [--in-process]
    python runner.py --probe            # JSON about this device, for `devices check`

For every job in BUNDLE_DIR/manifest.json the runner loads the artifact, converts the
inputs once, warms up, then times single synchronous inferences with
``time.perf_counter_ns`` until BOTH ``min_runs`` runs and ``min_time_s`` seconds are
reached (``max_time_s`` stops early and keeps what was measured; it also bounds the
warm-up). It then compares the outputs with ``expected`` (max abs diff <= tolerance)
and, if the job has ``eval`` data, scores accuracy (percent) per ``task``.

``load_s`` is the artifact load/compile time on the device, excluding the one-time
runtime import (recorded as ``env.import_s``; ``import tvm`` takes seconds). ``env`` also
records the timing settings actually used (``env.timing``: warm-up runs, measured
seconds, whether ``max_time_s`` cut the run short).

Each finished job is appended to BUNDLE_DIR/results.jsonl as one JSON line and the
file is flushed and fsync'ed, so a killed runner keeps every job that finished. A job
that fails (runtime missing, corrupt artifact, shape mismatch, crash) is recorded with
``ok: false`` and a one-line ``error``; the runner carries on with the next job.

Isolation: jobs run in worker processes (one per run of consecutive jobs with the same
backend and thread count), so thread settings such as TVM_NUM_THREADS are set before
the runtime is imported, one runtime's thread pool cannot disturb another's timing, and
a segfaulting runtime only fails its own job. ``--in-process`` runs everything in this
process instead (debugging).

``inject_slowdown`` (a job field, default 1.0) is a TEST/BENCHMARK HOOK ONLY: after each
timed run the runner busy-waits an extra (factor - 1) x the run's duration and counts
it in the time, to exercise regression detection. Real measurements leave it at 1.0.

``gate`` (a job field, default None) times the job inside the *steady gate*: a short
probe (numpy matrix products on all cores) before and after the series says whether the
device was in its steady state; if not, the runner waits (up to ``max_wait_s``) and times
the series again (up to ``retries``), then keeps it marked ``unsteady``. The probe's fast
level is calibrated once per bundle (BUNDLE/gate.json) or given by the host
(``fast_ms``). ``env.timing.gate`` records the state, the probes and the time waited.
See :class:`SteadyGate` for why.

Exit code: 0 if every job ran, 1 if any job failed, 2 on a bad manifest or usage.
"""

from __future__ import annotations

import argparse
import bisect
import gc
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

RUNNER_VERSION = 1
BUNDLE_FORMAT = "edgeprune-bundle"
BUNDLE_VERSION = 1
RESULTS_FILE = "results.jsonl"
KNOWN_BACKENDS = ("onnxruntime", "openvino", "tvm")
#: backend -> (module to import, pip package that provides it, distributions to ask for a version)
RUNTIMES = {
    "onnxruntime": ("onnxruntime", "onnxruntime", ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino")),
    "openvino": ("openvino", "openvino", ("openvino",)),
    "tvm": ("tvm", "apache-tvm", ("apache-tvm", "tvm")),
}
JOB_DEFAULTS = {
    "expected": None,
    "eval": None,
    "task": None,
    "tolerance": 1e-3,
    "threads": None,
    "options": {},
    "warmup": 10,
    "min_runs": 50,
    "min_time_s": 1.0,
    "max_time_s": 30.0,
    "inject_slowdown": 1.0,
    "gate": None,
    "timing": "wall",
}
#: "wall": each run's wall-clock time (what a user of the model waits); "kernel": the
#: layers' own work from the runtime's per-node counters (latency tables, see Model.kernel_times)
TIMING_MODES = ("wall", "kernel")
REQUIRED_FIELDS = ("id", "backend", "artifact", "inputs")


class ManifestError(Exception):
    """The bundle cannot be used at all (exit code 2)."""


class JobError(Exception):
    """One job failed; the message is the one-line error recorded in its result."""


# --------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------
def one_line(exc):
    """First informative line of an exception, prefixed with its type."""
    if isinstance(exc, JobError):
        return str(exc)
    name = type(exc).__name__
    for line in str(exc).splitlines():
        s = line.strip()
        if s and not s.startswith(("Traceback", "File ", "^", "---")):
            return s if s.startswith(name) else "%s: %s" % (name, s)
    return name


def log(msg):
    print("edgeprune-runner: " + msg, flush=True)


def read_text(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


ARM_PARTS = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd40": "Neoverse-V1", "0xd41": "Cortex-A78",
    "0xd42": "Cortex-A78AE", "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710",
    "0xd48": "Cortex-X2", "0xd49": "Neoverse-N2", "0xd4b": "Cortex-A78C", "0xd4f": "Neoverse-V2",
}


def cpu_model():
    """A human-readable CPU name from /proc/cpuinfo (x86 'model name'; ARM board model + cores)."""
    info = read_text("/proc/cpuinfo")
    fields = {}
    parts = []
    for line in info.splitlines():
        if ":" not in line:
            continue
        k, v = line.split(":", 1)
        k, v = k.strip(), v.strip()
        if k == "CPU part":
            name = ARM_PARTS.get(v.lower(), "ARM part " + v)
            if name not in parts:
                parts.append(name)
        elif k not in fields and v:
            fields[k] = v
    for key in ("model name", "cpu model", "Model", "Hardware", "Processor"):
        if key in fields:
            name = fields[key]
            if parts and key != "model name":
                name += " (" + " + ".join(parts) + ")"
            return name
    if parts:
        return " + ".join(parts)
    return platform.processor() or platform.machine()


def governor():
    g = read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").strip()
    return g or None


def dist_version(dists):
    try:
        from importlib import metadata
    except ImportError:  # Python < 3.8
        return None
    for d in dists:
        try:
            return metadata.version(d)
        except Exception:  # noqa: BLE001 - PackageNotFoundError and broken metadata alike
            continue
    return None


def runtime_installed_version(backend):
    """Version of a runtime without importing it (TVM takes seconds to import)."""
    import importlib.util

    module, _pip, dists = RUNTIMES[backend]
    v = dist_version(dists)
    if v:
        return v
    try:
        if importlib.util.find_spec(module) is not None:
            return "unknown (importable)"
    except (ImportError, ValueError):
        pass
    return None


def base_env():
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "governor": governor(),
        "runner_version": RUNNER_VERSION,
    }


def probe():
    try:
        import numpy

        numpy_version = numpy.__version__
    except ImportError:
        numpy_version = None
    out = {
        "arch": platform.machine(),
        "system": platform.system(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "numpy": numpy_version,
        "runtimes": {b: runtime_installed_version(b) for b in KNOWN_BACKENDS},
        "governor": governor(),
        "runner_version": RUNNER_VERSION,
    }
    return out


def import_runtime(backend):
    module, pip_name, _ = RUNTIMES[backend]
    try:
        return __import__(module)
    except ImportError as exc:
        missing = getattr(exc, "name", None)
        if isinstance(exc, ModuleNotFoundError) and missing and missing.split(".")[0] == module:
            raise JobError("%s is not installed on this device (pip install %s)" % (module, pip_name))
        raise JobError("%s is installed but failed to import on this device: %s" % (module, one_line(exc)))


# --------------------------------------------------------------------------------------
# manifest
# --------------------------------------------------------------------------------------
def load_manifest(bundle):
    path = os.path.join(bundle, "manifest.json")
    if not os.path.isfile(path):
        raise ManifestError("no manifest.json in %s" % bundle)
    try:
        with open(path) as f:
            m = json.load(f)
    except (OSError, ValueError) as exc:
        raise ManifestError("cannot read %s: %s" % (path, one_line(exc)))
    if not isinstance(m, dict) or m.get("format") != BUNDLE_FORMAT:
        raise ManifestError("%s is not an edgeprune bundle manifest (format must be '%s')" % (path, BUNDLE_FORMAT))
    version = m.get("version")
    if not isinstance(version, int) or version > BUNDLE_VERSION:
        raise ManifestError("bundle version %r is not supported by this runner (max %d); rebuild the bundle"
                            % (version, BUNDLE_VERSION))
    jobs = m.get("jobs")
    if not isinstance(jobs, list):
        raise ManifestError("%s: 'jobs' must be a list" % path)
    out, seen = [], set()
    for i, j in enumerate(jobs):
        if not isinstance(j, dict):
            raise ManifestError("%s: job %d is not an object" % (path, i))
        missing = [k for k in REQUIRED_FIELDS if not j.get(k)]
        if missing:
            raise ManifestError("%s: job %d lacks field(s) %s" % (path, i, ", ".join(missing)))
        if j["id"] in seen:
            raise ManifestError("%s: duplicate job id '%s'" % (path, j["id"]))
        seen.add(j["id"])
        job = dict(JOB_DEFAULTS)
        job.update(j)
        if job["options"] is None:
            job["options"] = {}
        out.append(job)
    return out


def select_jobs(jobs, only):
    if not only:
        return jobs
    ids = [j["id"] for j in jobs]
    unknown = [o for o in only if o not in ids]
    if unknown:
        raise ManifestError("unknown job id(s) %s; the manifest has: %s" % (", ".join(unknown), ", ".join(ids)))
    wanted = set(only)
    return [j for j in jobs if j["id"] in wanted]


def job_threads(job):
    if job.get("threads"):
        return int(job["threads"])
    opts = job.get("options") or {}
    for k in ("intra_op_num_threads", "INFERENCE_NUM_THREADS", "threads"):
        if opts.get(k):
            return int(opts[k])
    return os.cpu_count() or 1


# --------------------------------------------------------------------------------------
# runtimes: load an artifact, prepare inputs once, run, fetch outputs
# --------------------------------------------------------------------------------------
class Model(object):
    """Common interface of the per-runtime loaders."""

    runtime_version = None
    #: [(name, shape-or-None, numpy dtype-or-None)] when the runtime can tell
    input_specs = None
    #: thread/affinity settings the runtime actually runs with (recorded in env.runtime_settings)
    settings = None

    def prepare(self, arrays):
        raise NotImplementedError

    def run(self, prepared):
        """One synchronous inference (the timed call)."""
        raise NotImplementedError

    def outputs(self, prepared):
        """Run and return every output as a numpy array."""
        raise NotImplementedError

    def close(self):
        pass

    def kernel_times(self, n):
        """ms of the layers' own work in each of the last ``n`` runs, from the runtime's
        per-node profiling counters (jobs with ``timing: kernel``)."""
        raise JobError("kernel timing is not available for this runtime; use timing 'wall'")


#: per-node counters that are graph boundaries or layout/precision conversions, not the
#: work of the layers: a standalone layer graph pays them (its NCHW float input and output
#: are converted to and from the runtime's blocked layout), a whole model pays them once.
#: Measured on this host (benchmarks/kernel_timing.py, mobilenetv2, OpenVINO): standalone
#: layers' wall times summed to 1.79x the model's, their kernel times to 0.81x the model's
#: kernels (which also count its adds, pooling and fused activations).
OV_BOUNDARY_NODES = ("Reorder", "Convert", "Parameter", "Result", "Input", "Output", "Constant")
ORT_BOUNDARY_OPS = ("ReorderInput", "ReorderOutput")


def ort_kernel_times(events, n):
    """Per-run ms of ONNX Runtime's node kernels (less ORT_BOUNDARY_OPS) for the last
    ``n`` ``model_run`` events of a profile (chrome-trace events, times in us)."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")[-n:]
    nodes = sorted((e["ts"], e["dur"]) for e in events
                   if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")
                   and (e.get("args") or {}).get("op_name") not in ORT_BOUNDARY_OPS)
    starts = [t for t, _ in nodes]
    out = []
    for a, b in runs:
        i = bisect.bisect_left(starts, a)
        total = 0
        while i < len(nodes) and nodes[i][0] <= b:
            total += nodes[i][1]
            i += 1
        out.append(total / 1e3)
    return out


ORT_LEVELS = {
    "disable": "ORT_DISABLE_ALL", "none": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED", "layout": "ORT_ENABLE_LAYOUT", "all": "ORT_ENABLE_ALL",
}
ORT_TYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


class OrtModel(Model):
    def __init__(self, path, options, threads, kernel=False):
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
                         "providers": self.sess.get_providers()}
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


class OvModel(Model):
    def __init__(self, path, options, threads, kernel=False):
        ov = import_runtime("openvino")
        self.runtime_version = ov.__version__ if hasattr(ov, "__version__") else ov.get_version()
        core = ov.Core()
        device = str(options.get("device", "CPU"))
        config = {}
        for k, v in options.items():
            if k == "device" or k.upper() == "CPU_AFFINITY":  # affinity is applied to the process, not OV
                continue
            config[k.upper()] = str(v)
        config["INFERENCE_NUM_THREADS"] = str(threads)
        config.setdefault("PERFORMANCE_HINT", "LATENCY")
        self.kernel = [] if kernel else None
        if kernel:
            config["PERF_COUNT"] = "YES"
        self.compiled = core.compile_model(path, device, config)
        self.settings = {}
        for key in ("INFERENCE_NUM_THREADS", "PERFORMANCE_HINT", "NUM_STREAMS", "ENABLE_CPU_PINNING",
                    "ENABLE_HYPER_THREADING", "SCHEDULING_CORE_TYPE", "INFERENCE_PRECISION_HINT"):
            try:
                self.settings[key] = str(self.compiled.get_property(key))
            except Exception:  # noqa: BLE001 - not every plugin/version has every property
                pass
        self.request = self.compiled.create_infer_request()
        self.n_out = len(self.compiled.outputs)
        specs = []
        for p in self.compiled.inputs:
            ps = p.get_partial_shape()
            shape = [int(d) for d in ps.to_shape()] if ps.is_static else None
            try:
                dtype = p.get_element_type().to_dtype().name
            except Exception:  # noqa: BLE001
                dtype = None
            specs.append((p.get_any_name(), shape, dtype))
        self.input_specs = specs

    def prepare(self, arrays):
        return {i: a for i, a in enumerate(arrays)}

    def run(self, prepared):
        self.request.infer(prepared, share_inputs=True)
        if self.kernel is not None:  # the counters hold the last inference only
            self.kernel.append(sum(p.real_time.total_seconds() for p in self.request.profiling_info
                                   if p.node_type not in OV_BOUNDARY_NODES) * 1e3)

    def outputs(self, prepared):
        self.request.infer(prepared, share_inputs=True)
        return [self.request.get_output_tensor(i).data.copy() for i in range(self.n_out)]

    def kernel_times(self, n):
        if self.kernel is None:
            return Model.kernel_times(self, n)
        return self.kernel[-n:]

    def close(self):
        self.request = None
        self.compiled = None


class TvmModel(Model):
    def __init__(self, path, options, threads, kernel=False):
        if kernel:
            raise JobError("kernel timing is not available for tvm (no per-node counters in the Relax VM); "
                           "use timing 'wall'")
        if "tvm" not in sys.modules:
            os.environ["TVM_NUM_THREADS"] = str(threads)  # read when TVM's thread pool starts
        tvm = import_runtime("tvm")
        from tvm import relax

        self.tvm = tvm
        self.runtime_version = tvm.__version__
        device = str(options.get("device", "cpu")).lower()
        makers = {"cpu": tvm.cpu, "llvm": tvm.cpu, "cuda": tvm.cuda, "opencl": tvm.opencl}
        if device not in makers:
            raise JobError("unknown TVM device '%s' (choose cpu, cuda, opencl)" % device)
        self.dev = makers[device](0)
        if device != "cpu" and not self.dev.exist:
            raise JobError("no %s device visible to TVM on this machine" % device)
        self.lib = tvm.runtime.load_module(path)
        self.vm = relax.VirtualMachine(self.lib, self.dev)
        self.main = self.vm["main"]
        self.settings = {"TVM_NUM_THREADS": os.environ.get("TVM_NUM_THREADS"), "device": device,
                         "TVM_BIND_THREADS": os.environ.get("TVM_BIND_THREADS", "1 (default)")}

    def prepare(self, arrays):
        return [self.tvm.runtime.tensor(a, self.dev) for a in arrays]

    def run(self, prepared):
        self.main(*prepared)
        self.dev.sync()

    def outputs(self, prepared):
        out = self.main(*prepared)
        self.dev.sync()
        return flatten_tvm(out)

    def close(self):
        self.main = self.vm = self.lib = None


def flatten_tvm(x):
    if hasattr(x, "numpy"):
        return [x.numpy()]
    out = []
    for item in x:
        out.extend(flatten_tvm(item))
    return out


LOADERS = {"onnxruntime": OrtModel, "openvino": OvModel, "tvm": TvmModel}


# --------------------------------------------------------------------------------------
# one job
# --------------------------------------------------------------------------------------
def load_arrays(np, path, prefix):
    try:
        with np.load(path) as data:
            names = sorted((k for k in data.files if k.startswith(prefix) and k[len(prefix):].isdigit()),
                           key=lambda k: int(k[len(prefix):]))
            return [data[k] for k in names]
    except (OSError, ValueError) as exc:
        raise JobError("cannot read %s: %s" % (os.path.basename(path), one_line(exc)))


def check_inputs(np, model, arrays):
    """Cast to the artifact's input dtypes and fail clearly on count/shape mismatches."""
    specs = model.input_specs
    if specs is None:
        return [np.ascontiguousarray(a) for a in arrays]
    if len(specs) != len(arrays):
        raise JobError("artifact expects %d input(s) %s but the bundle has %d"
                       % (len(specs), [s[0] for s in specs], len(arrays)))
    out = []
    for (name, shape, dtype), a in zip(specs, arrays):
        if shape is not None:
            ok = len(shape) == a.ndim and all(s is None or s == d for s, d in zip(shape, a.shape))
            if not ok:
                raise JobError("input '%s' has shape %s but the artifact expects %s"
                               % (name, list(a.shape), ["?" if s is None else s for s in shape]))
        if dtype is not None and a.dtype != np.dtype(dtype):
            a = a.astype(dtype)
        out.append(np.ascontiguousarray(a))
    return out


def time_runs(run, job):
    """Warm up, then time single runs until min_runs AND min_time_s (or max_time_s)."""
    ns = time.perf_counter_ns
    warmup = max(0, int(job["warmup"]))
    min_runs = max(1, int(job["min_runs"]))
    min_ns = float(job["min_time_s"]) * 1e9
    max_ns = max(float(job["max_time_s"]) * 1e9, 1.0)
    slow = float(job.get("inject_slowdown") or 1.0)
    w0 = ns()
    warm = 0
    while warm < warmup:
        run()
        warm += 1
        if ns() - w0 >= max_ns:
            break
    times = []
    start = ns()
    stopped = False
    while True:
        t0 = ns()
        run()
        t1 = ns()
        if slow > 1.0:  # test hook: busy-wait (factor - 1) x the run, counted in the time
            until = t1 + int((slow - 1.0) * (t1 - t0))
            while ns() < until:
                pass
            t1 = ns()
        times.append((t1 - t0) / 1e6)
        elapsed = t1 - start
        if len(times) >= min_runs and elapsed >= min_ns:
            break
        if elapsed >= max_ns:
            stopped = len(times) < min_runs or elapsed < min_ns
            break
    info = {"warmup_runs": warm, "measure_s": round((ns() - start) / 1e9, 4), "stopped_by_max_time": stopped}
    if slow != 1.0:
        info["inject_slowdown"] = slow
    return times, info


#: the steady gate's probe: small matrix products on numpy's BLAS threads. Each product is
#: one fork/join across the cores, the kind of synchronisation a shared VM's slow state
#: makes dearer (benchmarks/host_noise.py), and it needs nothing but numpy. Workers run
#: with OPENBLAS_THREAD_TIMEOUT=4 (BLAS_ENV): BLAS threads then sleep right after each
#: product, so every product wakes the other core (the cost the slow state raises), and
#: no BLAS thread is left spinning when the series starts. Measured on this VM: with
#: OpenBLAS's default spin a conv timed right after the probe ran 0.57 ms instead of 0.30.
GATE_PROBE = {"n": 128, "calls": 24}
BLAS_ENV = {"OPENBLAS_THREAD_TIMEOUT": "4"}
GATE_DEFAULTS = {"tol": 0.25, "max_wait_s": 20.0, "calibrate_s": 6.0, "retries": 3, "settle_s": 0.0,
                 "reuse_s": 1.0, "budget": 0.3}
GATE_LOWS = 5  # the fast level is the median of the lowest probes seen, not one lucky probe
GATE_FILE = "gate.json"
_GATES = {}  # bundle -> SteadyGate (one per worker process)
_PROBE_INPUTS = {}


def gate_probe_ms(np, n=None, calls=None):
    """Median ms of ``calls`` float32 n x n matrix products (after one warm-up product)."""
    n = n or GATE_PROBE["n"]
    calls = calls or GATE_PROBE["calls"]
    if n not in _PROBE_INPUTS:
        rng = np.random.default_rng(0)
        _PROBE_INPUTS[n] = (rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32))
    a, b = _PROBE_INPUTS[n]
    np.dot(a, b)
    ts = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        np.dot(a, b)
        ts.append(time.perf_counter_ns() - t0)
    ts.sort()
    return ts[len(ts) // 2] / 1e6


class SteadyGate(object):
    """Waits for the device's steady (fast) state before a job is timed.

    Why: on a shared or throttling device, multi-threaded inference switches between a
    fast state and slow episodes of seconds (this 2-core VM: ~28 % of the time, 1.2-1.7x
    slower, benchmarks/host_noise.py). Timing through an episode records the episode, and
    no estimator on the host can undo it for a point whose every round fell in one. The
    gate times a probe before and after each series; a series is kept when both say
    steady (within ``tol`` of the device's fast level: the median of the GATE_LOWS lowest
    probes seen in this bundle, so one lucky probe does not set it),
    otherwise it waits (probing every 0.25 s; a slow probe is confirmed by a second one)
    and times the series again, up to
    ``max_wait_s`` per job, and then keeps the series marked ``unsteady``. Waiting and
    re-timing never take more than ``budget`` x the time since the gate started (plus
    one ``max_wait_s``): a device that is never steady, or a level set by a fluke, costs
    at most that much, and its series are then all marked unsteady. The probe's
    fast level is calibrated once per bundle over ``calibrate_s`` (longer than a typical
    episode) and kept in BUNDLE/gate.json for the next worker process.
    """

    def __init__(self, np, bundle, cfg):
        self.np = np
        self.cfg = dict(GATE_DEFAULTS)
        self.cfg.update(cfg or {})
        self.path = os.path.join(bundle, GATE_FILE)
        self.level = None
        self.lows = []
        self.calibrated_s = 0.0
        self.last = (0.0, None)  # (time, ms) of the last probe
        self.t0 = time.time()
        self.spent = 0.0  # seconds waited or spent on series that were thrown away
        try:
            with open(self.path) as f:
                saved = json.load(f)
            self.level = float(saved["fast_ms"])
            self.lows = sorted(float(v) for v in saved.get("lows", []))[:GATE_LOWS]
        except (OSError, ValueError, KeyError, TypeError):
            if self.cfg.get("fast_ms"):  # the host's hint: this device's level from an earlier bundle
                self.level = float(self.cfg["fast_ms"])
                self.save()
            else:
                self.calibrate()

    def probe(self):
        p = gate_probe_ms(self.np)
        self.last = (time.time(), p)
        if len(self.lows) < GATE_LOWS or p < self.lows[-1]:
            self.lows = sorted(self.lows + [p])[:GATE_LOWS]
            full = len(self.lows) >= GATE_LOWS
            level = self.lows[len(self.lows) // 2] if full else self.lows[0]
            self.level = level if self.level is None or full else min(self.level, level)
            self.save()
        return p

    def confirmed(self):
        """A probe; one that says unsteady is repeated at once and the lower one counts: a
        single probe is ~1 ms and sometimes slow on its own (measured here: ~1 in 6 probes
        taken in the fast state came out > 1.25x), and each false alarm would cost a wait
        and a re-timed series."""
        p = self.probe()
        if not self.steady(p):
            p = min(p, self.probe())
        return p

    def recent_steady(self):
        """The last probe, if it said steady less than ``reuse_s`` ago (it then serves as
        this series' before-probe: back-to-back short jobs need not probe twice)."""
        at, p = self.last
        if p is not None and time.time() - at < float(self.cfg["reuse_s"]) and self.steady(p):
            return p
        return None

    def save(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"fast_ms": self.level, "lows": self.lows, "probe": GATE_PROBE}, f)
        os.replace(tmp, self.path)

    def calibrate(self):
        t0 = time.time()
        while True:
            self.probe()
            if time.time() - t0 >= float(self.cfg["calibrate_s"]) and len(self.lows) >= GATE_LOWS:
                break
            time.sleep(0.25)
        self.calibrated_s = time.time() - t0

    def steady(self, p):
        return p <= self.level * (1.0 + float(self.cfg["tol"]))

    def over_budget(self):
        return self.spent > float(self.cfg["budget"]) * (time.time() - self.t0) + float(self.cfg["max_wait_s"])

    def wait(self, deadline):
        """Probe until steady, ``deadline`` or the budget; (steady, last probe ms)."""
        t0 = time.time()
        try:
            while True:
                p = self.confirmed()
                if self.steady(p) or time.time() >= deadline or self.over_budget():
                    return self.steady(p), p
                time.sleep(0.25)
        finally:
            self.spent += time.time() - t0

    def settle(self):
        # 0 by default: workers run with BLAS_ENV, so no BLAS thread spins after the probe.
        # ``--in-process`` runs have OpenBLAS's default spin (numpy is already loaded):
        # give them settle_s ~0.12 s
        time.sleep(float(self.cfg["settle_s"]))


def steady_gate(np, bundle, cfg):
    if bundle not in _GATES:
        _GATES[bundle] = SteadyGate(np, bundle, cfg)
    return _GATES[bundle]


def gated_time_runs(np, run, job, bundle):
    """``time_runs`` inside the steady gate (see :class:`SteadyGate`)."""
    gate = steady_gate(np, bundle, job.get("gate"))
    t_start = time.time()
    spent0 = gate.spent
    deadline = t_start + float(gate.cfg["max_wait_s"])
    retries = 0
    while True:
        before = gate.recent_steady()
        before_ok = before is not None
        if not before_ok:
            before_ok, before = gate.wait(deadline)
            gate.settle()
        times, info = time_runs(run, job)
        after = gate.confirmed()
        steady = before_ok and gate.steady(after)
        if steady or retries >= int(gate.cfg["retries"]) or time.time() >= deadline or gate.over_budget():
            break
        gate.spent += info["measure_s"]  # this series is thrown away
        retries += 1
    info["gate"] = {"state": "steady" if steady else "unsteady", "probe_ms": [round(before, 5), round(after, 5)],
                    "fast_ms": round(gate.level, 5), "retries": retries,
                    "wait_s": round(gate.spent - spent0, 3)}  # waiting + series thrown away
    if gate.calibrated_s:
        info["gate"]["calibrated_s"] = round(gate.calibrated_s, 2)
        gate.calibrated_s = 0.0
    return times, info


def verify(np, outputs, expected):
    if len(outputs) != len(expected):
        raise JobError("artifact produced %d output(s) but %d were expected" % (len(outputs), len(expected)))
    diff = 0.0
    for i, (o, e) in enumerate(zip(outputs, expected)):
        o = np.asarray(o)
        if o.shape != e.shape:
            raise JobError("output %d has shape %s but the reference has %s" % (i, list(o.shape), list(e.shape)))
        if o.size:
            d = float(np.max(np.abs(o.astype(np.float64) - e.astype(np.float64))))
            if d != d:  # NaN
                return float("nan")
            diff = max(diff, d)
    return diff


def accuracy(np, model, path, task, dtypes):
    try:
        data = np.load(path)
    except (OSError, ValueError) as exc:
        raise JobError("cannot read %s: %s" % (os.path.basename(path), one_line(exc)))
    with data:
        keys = sorted((k for k in data.files if k.startswith("in") and k[2:].isdigit()), key=lambda k: int(k[2:]))
        if "labels" not in data.files or not keys:
            raise JobError("eval data %s needs arrays in0.. and labels" % os.path.basename(path))
        ins = [data[k] for k in keys]
        labels = data["labels"]
    chunks = labels.shape[0]
    correct = total = 0
    for c in range(chunks):
        arrays = [np.ascontiguousarray(x[c].astype(dt) if dt else x[c]) for x, dt in zip(ins, dtypes)]
        logits = np.asarray(model.outputs(model.prepare(arrays))[0])
        lab = np.asarray(labels[c]).reshape(-1)
        b = lab.shape[0]
        flat = logits.reshape(b, -1)
        if task == "binary":
            pred = (flat[:, 0] > 0).astype(np.int64)
        else:
            pred = flat.argmax(axis=1)
        correct += int(np.sum(pred == lab.astype(np.int64)))
        total += b
    if total == 0:
        return None, 0
    return 100.0 * correct / total, total


_ORIGINAL_AFFINITY = []


def parse_cores(spec):
    """[0, 1], "0,1" or "0-3" -> sorted list of core ids."""
    if isinstance(spec, (list, tuple)):
        return sorted(int(c) for c in spec)
    cores = set()
    for part in str(spec).replace(" ", "").split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            cores.update(range(int(lo), int(hi) + 1))
        elif part:
            cores.add(int(part))
    return sorted(cores)


def apply_affinity(options):
    """Pin this worker process to the job's ``cpu_affinity`` cores (option of any backend),
    or restore the original mask; returns the cores it may run on (None where the OS
    cannot tell). Every runtime's threads inherit the process mask."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    if not _ORIGINAL_AFFINITY:
        _ORIGINAL_AFFINITY.append(os.sched_getaffinity(0))
    want = options.get("cpu_affinity", options.get("CPU_AFFINITY"))
    try:
        os.sched_setaffinity(0, parse_cores(want) if want not in (None, "", []) else _ORIGINAL_AFFINITY[0])
    except (OSError, ValueError) as exc:
        raise JobError("cannot pin to cores %r: %s" % (want, one_line(exc)))
    return sorted(os.sched_getaffinity(0))


def run_job(job, bundle, env):
    """Run one job in this process; always returns a result dict (never raises)."""
    result = {
        "id": job["id"], "ok": False, "backend": job.get("backend", ""), "error": None, "times_ms": [],
        "load_s": None, "max_abs_diff": None, "verified": None, "accuracy": None, "eval_samples": None,
        "threads": None, "runtime_version": None, "env": dict(env),
    }
    model = None
    try:
        backend = job["backend"]
        if backend not in LOADERS:
            raise JobError("unknown backend '%s' (this runner knows %s)" % (backend, ", ".join(KNOWN_BACKENDS)))
        threads = job_threads(job)
        result["threads"] = threads
        result["env"]["runtime"] = backend
        result["env"]["threads"] = threads
        try:
            import numpy as np
        except ImportError:
            raise JobError("numpy is not installed on this device (pip install numpy)")
        artifact = os.path.join(bundle, job["artifact"])
        if not os.path.isfile(artifact):
            raise JobError("artifact %s is missing from the bundle" % job["artifact"])
        inputs = load_arrays(np, os.path.join(bundle, job["inputs"]), "in")
        cores = apply_affinity(job.get("options") or {})  # before the runtime starts its threads
        if cores is not None:
            result["env"]["affinity"] = cores
        t0 = time.perf_counter()
        if backend == "tvm" and "tvm" not in sys.modules:
            os.environ["TVM_NUM_THREADS"] = str(threads)  # must be set before TVM is imported
        import_runtime(backend)  # import time (seconds for TVM) is not load time
        result["env"]["import_s"] = round(time.perf_counter() - t0, 4)
        t0 = time.perf_counter()
        mode = job.get("timing") or "wall"
        if mode not in TIMING_MODES:
            raise JobError("unknown timing '%s' (choose %s)" % (mode, ", ".join(TIMING_MODES)))
        try:
            model = LOADERS[backend](artifact, job.get("options") or {}, threads, kernel=mode == "kernel")
        except JobError:
            raise
        except Exception as exc:  # noqa: BLE001 - any loader failure is this job's failure
            raise JobError("cannot load %s with %s: %s" % (job["artifact"], backend, one_line(exc)))
        result["load_s"] = round(time.perf_counter() - t0, 4)
        result["runtime_version"] = model.runtime_version
        result["env"]["runtime_version"] = model.runtime_version
        if model.settings is not None:
            result["env"]["runtime_settings"] = model.settings
        if backend == "tvm" and os.environ.get("TVM_NUM_THREADS") != str(threads):
            result["env"]["threads_note"] = "TVM was already imported with TVM_NUM_THREADS=%s" % (
                os.environ.get("TVM_NUM_THREADS"))
        arrays = check_inputs(np, model, inputs)
        prepared = model.prepare(arrays)  # converted once, outside the timed loop
        try:
            if job.get("gate") is not None:  # {} = the gate with its defaults
                times, timing = gated_time_runs(np, lambda: model.run(prepared), job, bundle)
            else:
                times, timing = time_runs(lambda: model.run(prepared), job)
            if mode == "kernel":
                timing["mode"] = "kernel"
                timing["wall_median_ms"] = round(float(np.median(times)), 5)
                times = model.kernel_times(len(times))
        except JobError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise JobError("inference failed: %s" % one_line(exc))
        result["times_ms"] = times
        result["env"]["timing"] = timing
        if job.get("expected"):
            expected = load_arrays(np, os.path.join(bundle, job["expected"]), "out")
            try:
                outs = model.outputs(prepared)
            except Exception as exc:  # noqa: BLE001
                raise JobError("inference failed: %s" % one_line(exc))
            diff = verify(np, outs, expected)
            result["max_abs_diff"] = diff
            result["verified"] = bool(diff <= float(job["tolerance"]))
        if job.get("eval"):
            dtypes = [a.dtype for a in arrays]
            try:
                acc, n = accuracy(np, model, os.path.join(bundle, job["eval"]), job.get("task"), dtypes)
            except JobError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise JobError("evaluation failed: %s" % one_line(exc))
            result["accuracy"] = acc
            result["eval_samples"] = n
        result["ok"] = True
    except JobError as exc:
        result["error"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - a runner bug must not lose the other jobs
        result["error"] = "runner error: %s" % one_line(exc)
        traceback.print_exc()
    finally:
        if model is not None:
            try:
                model.close()
            except Exception:  # noqa: BLE001
                pass
        model = None
        gc.collect()
    return result


# --------------------------------------------------------------------------------------
# results file, workers, main
# --------------------------------------------------------------------------------------
def append_result(bundle, result):
    """Append one JSON line to results.jsonl, flushed and fsync'ed."""
    path = os.path.join(bundle, RESULTS_FILE)
    line = json.dumps(result, separators=(",", ":")) + "\n"
    with open(path, "ab") as f:
        if f.tell() > 0:  # a previous run killed mid-line must not swallow this one
            with open(path, "rb") as r:
                r.seek(-1, os.SEEK_END)
                if r.read(1) != b"\n":
                    f.write(b"\n")
        f.write(line.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def failed_result(job, error, env):
    return {"id": job["id"], "ok": False, "backend": job.get("backend", ""), "error": error, "times_ms": [],
            "load_s": None, "max_abs_diff": None, "verified": None, "accuracy": None, "eval_samples": None,
            "threads": job_threads(job), "runtime_version": None, "env": dict(env)}


def report(i, n, r):
    if r["ok"]:
        t = sorted(r["times_ms"])
        med = t[len(t) // 2] if len(t) % 2 else (t[len(t) // 2 - 1] + t[len(t) // 2]) / 2
        msg = "ok, median %.4f ms over %d runs" % (med, len(t))
        if r["verified"] is not None:
            msg += ", %s (max diff %.3g)" % ("verified" if r["verified"] else "NOT VERIFIED", r["max_abs_diff"])
        if r["accuracy"] is not None:
            msg += ", accuracy %.2f%% on %d samples" % (r["accuracy"], r["eval_samples"])
    else:
        msg = "FAILED: %s" % r["error"]
    log("[%d/%d] %s (%s): %s" % (i, n, r["id"], r["backend"], msg))


def groups_of(jobs):
    """Consecutive jobs with the same backend and thread count share a worker process."""
    out = []
    for j in jobs:
        key = (j["backend"], job_threads(j))
        if out and out[-1][0] == key:
            out[-1][1].append(j)
        else:
            out.append((key, [j]))
    return out


def last_error_line(text):
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "error" in ln or "Fatal" in ln:
            return ln
    return lines[-1] if lines else ""


def run_worker_group(bundle, jobs, env, on_result):
    """Run ``jobs`` in worker processes; a crash fails the job it hit and a new worker continues."""
    pending = list(jobs)
    while pending:
        rfd, wfd = os.pipe()
        child_env = dict(os.environ)
        for k, v in BLAS_ENV.items():  # read by OpenBLAS when numpy loads (steady-gate probe)
            child_env.setdefault(k, v)
        if pending[0]["backend"] == "tvm":
            child_env["TVM_NUM_THREADS"] = str(job_threads(pending[0]))
        cmd = [sys.executable, os.path.abspath(__file__), bundle, "--worker-fd", str(wfd), "--only"]
        cmd += [j["id"] for j in pending]
        with tempfile.TemporaryFile() as errf:
            try:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=errf, env=child_env,
                                        pass_fds=(wfd,), close_fds=True)
            finally:
                os.close(wfd)
            done = set()
            with os.fdopen(rfd, "r") as rf:
                for line in rf:
                    try:
                        r = json.loads(line)
                    except ValueError:
                        continue
                    done.add(r.get("id"))
                    on_result(r)
            rc = proc.wait()
            errf.seek(0)
            err = errf.read().decode("utf-8", "replace")
        if err:
            sys.stderr.write(err)
            sys.stderr.flush()
        pending = [j for j in pending if j["id"] not in done]
        if pending:
            if rc < 0:
                try:
                    how = "killed by %s" % signal.Signals(-rc).name
                except ValueError:
                    how = "killed by signal %d" % -rc
            else:
                how = "exit code %d" % rc
            tail = last_error_line(err)
            msg = "runner worker crashed (%s) during this job" % how + (": " + tail if tail else "")
            on_result(failed_result(pending[0], msg, env))
            pending = pending[1:]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="runner.py", description="edgeprune on-device benchmark runner")
    ap.add_argument("bundle", nargs="?", help="bundle directory (with manifest.json)")
    ap.add_argument("--only", nargs="+", metavar="JOB_ID", help="run only these jobs")
    ap.add_argument("--probe", action="store_true", help="print JSON about this device and exit")
    ap.add_argument("--in-process", action="store_true", help="run jobs in this process (no worker processes)")
    ap.add_argument("--worker-fd", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.probe:
        print(json.dumps(probe(), indent=1, sort_keys=True))
        return 0
    if not args.bundle:
        ap.print_usage(sys.stderr)
        print("runner.py: error: BUNDLE_DIR is required (or --probe)", file=sys.stderr)
        return 2
    bundle = os.path.abspath(args.bundle)
    try:
        jobs = select_jobs(load_manifest(bundle), args.only)
    except ManifestError as exc:
        print("edgeprune-runner: bad manifest: %s" % exc, file=sys.stderr)
        return 2
    env = base_env()

    if args.worker_fd is not None:  # internal: run jobs, stream results to the parent
        with os.fdopen(args.worker_fd, "w") as out:
            for job in jobs:
                r = run_job(job, bundle, env)
                out.write(json.dumps(r, separators=(",", ":")) + "\n")
                out.flush()
        return 0

    n = len(jobs)
    state = {"i": 0, "failed": 0}

    def on_result(r):
        append_result(bundle, r)
        state["i"] += 1
        state["failed"] += 0 if r.get("ok") else 1
        report(state["i"], n, r)

    log("running %d job(s) from %s" % (n, bundle))
    script = globals().get("__file__")
    if args.in_process or os.name != "posix" or not script or not os.path.isfile(script):
        # no worker processes: asked for, not POSIX, or this script came on stdin (python - ...)
        for job in jobs:
            on_result(run_job(job, bundle, env))
    else:
        for _key, group in groups_of(jobs):
            run_worker_group(bundle, group, env, on_result)
    return 1 if state["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
