"""OpenVINO: the IR compiled for the job's device with its threads, a LATENCY hint and the
job's precision (always set: see :mod:`.precision`); kernel timing from PERF_COUNT, read
after each run. Its CPU plugin reports each node's running *average* over every inference
since compile, not the last one's time, so the profiler times OpenVINO wall-clock
(``edgeprune.latency.settings.KERNEL_TIMING_BACKENDS``); a kernel job still runs.

How one inference is timed (benchmarks/harness_fidelity.py compares it with OpenVINO's
own ``benchmark_app``):

* the input tensors are bound to the request once (:meth:`OvModel.prepare`), sharing
  the numpy memory, so a run passes no feed dict, wraps no array and copies no output.
  ``infer({0: x}, share_inputs=True)``, as this loader did before, cost ~60 us a call
  more than a bound request on a 2-core EPYC VM (wall minus OpenVINO's own
  ``request.latency``: 75 us against 13-16 us), the order of the ~10 % the issue
  measured above benchmark_app on a 0.33 ms model;
* a run is ``start_async()`` + ``wait()``: the graph runs on the plugin's own pinned
  stream threads while the caller sleeps. The synchronous ``infer()`` runs it on the
  *calling* thread plus the pinned workers, and that mix is fragile: on the same VM at
  2 threads, OpenVINO's own per-request latency was 1.32 ms async against 3.97 ms sync
  while other processes loaded the CPU (1.41 ms sync with ``ENABLE_CPU_PINNING`` off),
  and 0.86 against 1.29 ms on a quiet host. Async is OpenVINO's recommended API for
  applications; benchmark_app's latency mode defaults to sync (``-api sync``), so the
  fidelity benchmark compares with both.
"""

from __future__ import annotations

from ..errors import JobError
from ..probe import cpu_flags
from ..timing import ov_kernel_ms
from .base import Model, import_runtime
from .precision import OV_HINTS, OV_NAMES, job_precision, machine, missing_support, ov_type_name

#: compiled-model properties recorded in env.runtime_settings (what OV actually chose)
OV_SETTINGS = ("INFERENCE_NUM_THREADS", "PERFORMANCE_HINT", "NUM_STREAMS", "ENABLE_CPU_PINNING",
               "ENABLE_HYPER_THREADING", "SCHEDULING_CORE_TYPE", "INFERENCE_PRECISION_HINT")
#: job options that are not OpenVINO properties (precision becomes INFERENCE_PRECISION_HINT)
NOT_PROPERTIES = ("DEVICE", "CPU_AFFINITY", "PRECISION", "INFERENCE_PRECISION_HINT")


class OvModel(Model):
    def __init__(self, path, options, threads, kernel=False):
        precision = job_precision(options)
        device = str(options.get("device", "CPU"))
        if device.upper() == "CPU":  # before compiling: OpenVINO would fall back silently
            why = missing_support(precision, cpu_flags(), machine())
            if why:
                raise JobError("cannot run this %s job here: %s (build it for fp32, or run it on a CPU that has "
                               "it)" % (precision, why))
        ov = import_runtime("openvino")
        self.ov = ov
        self.runtime_version = ov.__version__ if hasattr(ov, "__version__") else ov.get_version()
        core = ov.Core()
        config = {}
        for k, v in options.items():
            if k.upper() in NOT_PROPERTIES:  # affinity is applied to the process, not OV
                continue
            config[k.upper()] = str(v)
        config["INFERENCE_NUM_THREADS"] = str(threads)
        config["INFERENCE_PRECISION_HINT"] = OV_HINTS[precision]
        config.setdefault("PERFORMANCE_HINT", "LATENCY")
        self.kernel = [] if kernel else None
        if kernel:
            config["PERF_COUNT"] = "YES"
        self.compiled = core.compile_model(path, device, config)
        self.settings = {}
        for key in OV_SETTINGS:
            try:
                value = self.compiled.get_property(key)
            except Exception:  # noqa: BLE001 - not every plugin/version has every property
                continue
            self.settings[key] = ov_type_name(value) if key == "INFERENCE_PRECISION_HINT" else str(value)
        ran = self.settings.get("INFERENCE_PRECISION_HINT")
        if ran is not None and ran != OV_HINTS[precision]:
            caps = _capabilities(core, device)
            raise JobError("OpenVINO was asked for %s but compiled %s on this %s (OPTIMIZATION_CAPABILITIES: %s); "
                           "it would not run what the job says" % (precision, OV_NAMES.get(ran, ran), device, caps))
        self.settings["precision"] = precision  # what ran: the hint was read back from the compiled model
        self.request = self.compiled.create_infer_request()
        self.bound = None
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
        # tensors over the arrays' own memory (they are C-contiguous: data.check_inputs)
        return [self.ov.Tensor(a, shared_memory=True) for a in arrays]

    def _bind(self, prepared):
        if self.bound is not prepared:  # once per prepared input set, not per run
            for i, t in enumerate(prepared):
                self.request.set_input_tensor(i, t)
            self.bound = prepared

    def run(self, prepared):
        self._bind(prepared)
        if self.kernel is not None:  # the counters: running averages since compile (module docstring)
            self.request.infer()
            self.kernel.append(ov_kernel_ms(self.request.profiling_info))
            return
        self.request.start_async()
        self.request.wait()

    def outputs(self, prepared):
        self._bind(prepared)
        self.request.start_async()
        self.request.wait()
        return [self.request.get_output_tensor(i).data.copy() for i in range(self.n_out)]

    def kernel_times(self, n):
        if self.kernel is None:
            return Model.kernel_times(self, n)
        return self.kernel[-n:]

    def close(self):
        self.request = None
        self.bound = None
        self.compiled = None


def _capabilities(core, device) -> str:
    try:
        return ", ".join(str(c) for c in core.get_property(device, "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # noqa: BLE001
        return "unknown"
