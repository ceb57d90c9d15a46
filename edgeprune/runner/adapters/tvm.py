"""TVM: a compiled Relax library run by the Relax VM on the job's device; threads come
from TVM_NUM_THREADS, which TVM reads once, when its thread pool starts (the worker
sets it before TVM is imported). No kernel timing: the VM has no per-node counters."""

from __future__ import annotations

import os
import sys

from ..errors import JobError
from .base import Model, import_runtime
from .precision import job_precision


class TvmModel(Model):
    def __init__(self, path, options, threads, kernel=False):
        precision = job_precision(options)
        if precision != "fp32":
            raise JobError("this runner times TVM libraries in fp32 only, not %s" % precision)
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
                         "TVM_BIND_THREADS": os.environ.get("TVM_BIND_THREADS", "1 (default)"), "precision": precision}

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


def flatten_tvm(x) -> list:
    """A VM result (a tensor or nested tuples of them) as a flat list of numpy arrays."""
    if hasattr(x, "numpy"):
        return [x.numpy()]
    out = []
    for item in x:
        out.extend(flatten_tvm(item))
    return out
