"""TVM: a compiled Relax library run by the Relax VM on the job's device; threads come
from TVM_NUM_THREADS, which TVM reads once, when its thread pool starts (the worker
sets it before TVM is imported). No kernel timing: the VM has no per-node counters.

The VM is ``tvm.runtime.vm.VirtualMachine`` (what ``tvm.relax`` re-exports), so a board
with a runtime-only TVM (no compiler library) runs artifacts too.

CUDA (``device: cuda``): the inputs are copied to the GPU once (:meth:`TvmModel.prepare`)
and every timed run ends with ``dev.sync()``, so a run's time is the GPU's work to the
last kernel, not the launch. Before anything is loaded the job says in one line why it
cannot run: no CUDA runtime in TVM, no driver, or a GPU older than the artifact's
``sm_XX`` (:func:`cuda_unavailable`, :func:`arch_mismatch`). An artifact that carries CUDA
source instead of a cubin (built where TVM had no CUDA driver) is compiled by TVM when it
loads (NVRTC through cuda-bindings, or nvcc with TVM_CUDA_COMPILE_MODE=nvcc): that is
load time, never timed.
"""

from __future__ import annotations

import ctypes
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
        from tvm.runtime.vm import VirtualMachine

        self.tvm = tvm
        self.runtime_version = tvm.__version__
        device = str(options.get("device", "cpu")).lower()
        makers = {"cpu": tvm.cpu, "llvm": tvm.cpu, "cuda": tvm.cuda, "opencl": tvm.opencl}
        if device not in makers:
            raise JobError("unknown TVM device '%s' (choose cpu, cuda, opencl)" % device)
        self.dev = makers[device](0)
        self.settings = {"TVM_NUM_THREADS": os.environ.get("TVM_NUM_THREADS"), "device": device,
                         "TVM_BIND_THREADS": os.environ.get("TVM_BIND_THREADS", "1 (default)"), "precision": precision}
        if device == "cuda":
            why = cuda_unavailable(tvm)
            if why:
                raise JobError("cannot run this CUDA artifact here: %s" % why)
            gpu = cuda_facts(self.dev)
            why = arch_mismatch((options.get("target") or {}).get("arch"), gpu.get("compute_version"))
            if why:
                raise JobError("cannot run this CUDA artifact on %s: %s" % (gpu.get("name", "this GPU"), why))
            self.settings.update({"gpu": gpu, "sync": "device.sync() after every run"})
        elif device != "cpu" and not self.dev.exist:
            raise JobError("no %s device visible to TVM on this machine" % device)
        self.lib = tvm.runtime.load_module(path)
        self.vm = VirtualMachine(self.lib, self.dev)
        self.main = self.vm["main"]

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


def _tvm_lib_dir(tvm) -> str:
    loaded = getattr(getattr(tvm, "base", None), "_LOADED_LIBS", {}).get("tvm_runtime")
    name = getattr(loaded, "_name", None)
    return os.path.dirname(name) if name else os.path.join(os.path.dirname(tvm.__file__), "lib")


def cuda_unavailable(tvm) -> str | None:
    """Why ``tvm`` cannot run CUDA on this machine, in one clause, or None when it can.

    The pip wheel's CUDA runtime is a side library, ``libtvm_runtime_cuda.so``, that TVM
    loads quietly and skips when it cannot (no ``libcuda.so.1`` without an NVIDIA driver,
    no ``libcudart.so.13`` without the CUDA runtime); loading it again says which."""
    try:
        if tvm.cuda(0).exist:
            return None
    except Exception:  # noqa: BLE001 - a TVM without the CUDA device API raises here
        pass
    path = os.path.join(_tvm_lib_dir(tvm), "libtvm_runtime_cuda.so")
    if not os.path.exists(path):
        return "this TVM %s has no CUDA runtime (no %s); install a CUDA-enabled TVM" % (
            getattr(tvm, "__version__", "?"), os.path.basename(path))
    try:
        ctypes.CDLL(path, mode=getattr(os, "RTLD_LOCAL", 0))
    except OSError as exc:
        return "TVM's CUDA runtime does not load (%s)" % str(exc).splitlines()[0]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return "TVM sees no CUDA device 0" + (" (CUDA_VISIBLE_DEVICES=%s)" % visible if visible is not None else "")


def cuda_facts(dev) -> dict:
    """What TVM reports of the GPU a CUDA job runs on (recorded in env.runtime_settings)."""
    facts = {}
    for key, attr in (("name", "device_name"), ("compute_version", "compute_version"),
                      ("multiprocessors", "multi_processor_count"), ("max_clock_khz", "max_clock_rate")):
        try:
            value = getattr(dev, attr)
        except Exception:  # noqa: BLE001 - an attribute this TVM or driver does not report
            continue
        if value is not None:
            facts[key] = value
    return facts


def arch_mismatch(arch, compute_version) -> str | None:
    """Why a cubin for ``arch`` (``sm_90``) cannot run on a GPU of ``compute_version``
    (``"8.0"``), or None. A cubin runs on its own major version, minor equal or newer."""
    if not arch or not compute_version:
        return None
    digits = str(arch).lower().replace("sm_", "").rstrip("af")
    have = str(compute_version).split(".")
    if not digits.isdigit() or len(have) != 2 or not all(h.isdigit() for h in have):
        return None
    want = (int(digits[:-1]), int(digits[-1]))
    got = (int(have[0]), int(have[1]))
    if got[0] != want[0] or got[1] < want[1]:
        return "the artifact is built for %s but this GPU is sm_%d%d; rebuild it with --target host-cuda on this " \
               "machine" % (arch, got[0], got[1])
    return None
