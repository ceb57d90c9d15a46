"""OpenVINO: the IR compiled for the job's device with its threads and a LATENCY hint;
kernel timing from PERF_COUNT, which holds the last inference only (read after each run)."""

from __future__ import annotations

from ..timing import ov_kernel_ms
from .base import Model, import_runtime

#: compiled-model properties recorded in env.runtime_settings (what OV actually chose)
OV_SETTINGS = ("INFERENCE_NUM_THREADS", "PERFORMANCE_HINT", "NUM_STREAMS", "ENABLE_CPU_PINNING",
               "ENABLE_HYPER_THREADING", "SCHEDULING_CORE_TYPE", "INFERENCE_PRECISION_HINT")


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
        for key in OV_SETTINGS:
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
            self.kernel.append(ov_kernel_ms(self.request.profiling_info))

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
