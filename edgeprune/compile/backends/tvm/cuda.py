"""Can the installed TVM build and run CUDA on this machine, and with which compiler?

What the pip ``apache-tvm`` 0.27 wheel has (read off it: ``tvm.support.libinfo()``
says ``USE_CUDA: ON``): the CUDA code generator, and the CUDA runtime as a side
library, ``tvm/lib/libtvm_runtime_cuda.so``, linked against ``libcudart.so.13`` and the
driver's ``libcuda.so.1``. TVM loads that library quietly when it can and skips it
when it cannot, and the two cases build different artifacts (TVM's
``CUDAModuleCreateWithFallback``):

* **runtime loaded** (an NVIDIA driver and the CUDA 13 runtime are there): the CUDA C
  that codegen writes is compiled at build time by ``tvm_callback_cuda_compile``
  (``tvm.support.nvcc``: NVRTC through the ``cuda-bindings`` package by default, or
  ``nvcc`` with ``TVM_CUDA_COMPILE_MODE=nvcc``) and ``model.so`` embeds a cubin for the
  target's ``sm_XX``: nothing is compiled when it loads;
* **runtime not loaded** (no driver: this project's CPU machines, cross builds for a
  board): ``model.so`` embeds the CUDA C source, and the TVM that loads it on a GPU
  machine compiles it then (same callback): *compile-verified only* here.

So a ``host-cuda`` run needs, besides TVM: the runtime loaded
(:func:`~edgeprune.runner.adapters.tvm.cuda_unavailable` says why not: shared with the
runner), a CUDA device, and a CUDA compiler (:func:`cuda_compiler`; a prebuilt ``.so``
that carries source needs it when it loads). :func:`cuda_problem` checks all of it in one
line, before any export (``TvmBackend.supports``, which the preflight of every command
calls). A build also needs TVM's compiler library, which a runtime-only TVM lacks
(:func:`build_problem`: it can still time a prebuilt artifact, ``bench --artifact``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from edgeprune.compile.backends.base import one_line
from edgeprune.runner.adapters.tvm import cuda_unavailable

COMPILE_MODE_ENV = "TVM_CUDA_COMPILE_MODE"


def cuda_compiler() -> str | None:
    """"nvrtc" (``cuda-bindings`` importable), "nvcc" (on PATH), or None: what
    ``tvm_callback_cuda_compile`` will use. ``$TVM_CUDA_COMPILE_MODE`` is respected."""
    mode = os.environ.get(COMPILE_MODE_ENV, "").lower()
    if mode == "nvcc":
        return "nvcc" if shutil.which("nvcc") else None
    try:
        from cuda.bindings import nvrtc  # noqa: F401  (cuda-bindings: TVM's default JIT)

        return "nvrtc"
    except ImportError:
        if mode == "nvrtc":
            return None
    return "nvcc" if shutil.which("nvcc") else None


@lru_cache(maxsize=1)
def cuda_problem() -> str | None:
    """Why the installed TVM cannot build and run CUDA here, in one line, or None.

    Cached: it imports TVM and asks the driver once per process."""
    try:
        import tvm
    except ImportError as exc:
        return f"TVM is not importable ({one_line(exc)}): pip install apache-tvm"
    info = tvm.support.libinfo()
    if str(info.get("USE_CUDA", "OFF")).upper() in ("OFF", "", "NOT-FOUND"):
        return f"this TVM {tvm.__version__} is built without CUDA (USE_CUDA={info.get('USE_CUDA')})"
    why = cuda_unavailable(tvm)
    if why:
        return why
    if cuda_compiler() is None:
        return ("TVM has no CUDA compiler here: NVRTC needs `pip install cuda-bindings` (with the CUDA 13 NVRTC "
                "library), or put nvcc on PATH")
    return None


def build_problem() -> str | None:
    """Why this TVM cannot build at all (a runtime-only TVM: no compiler library), or None."""
    import tvm

    if getattr(tvm.base, "_RUNTIME_ONLY", False):
        return f"this TVM {tvm.__version__} is runtime-only (no libtvm_compiler.so): it runs artifacts, builds none"
    return None


@contextmanager
def compile_mode() -> Iterator[str | None]:
    """``TVM_CUDA_COMPILE_MODE`` set to :func:`cuda_compiler`'s choice while a build
    runs (TVM reads it at each kernel compile), restored after; yields the choice."""
    mode = cuda_compiler()
    old = os.environ.get(COMPILE_MODE_ENV)
    if mode and old is None:
        os.environ[COMPILE_MODE_ENV] = mode
    try:
        yield mode
    finally:
        if old is None:
            os.environ.pop(COMPILE_MODE_ENV, None)


def executable_modules(ex) -> Iterator:
    """Every runtime module of a built Relax executable and its imports, each once."""
    stack, seen = [ex.mod], set()
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        yield m
        stack.extend(m.imports)


def cuda_payload(ex) -> str | None:
    """What a built executable's CUDA module carries: "ptx" / "cubin" (compiled at build
    time) or "cuda" (CUDA C source, compiled by the TVM that loads it); None without one.

    The source-carrying module is TVM's codegen-time fallback, which refuses every
    function lookup with "CUDA runtime is not linked"; a compiled module answers."""
    for m in executable_modules(ex):
        if getattr(m, "kind", "") == "cuda":
            try:
                m.get_function("__edgeprune_payload_probe", query_imports=False)
            except Exception as exc:  # noqa: BLE001 - the fallback's refusal, or a plain miss
                if "not linked" in str(exc):
                    return "cuda"
            try:
                return "ptx" if m.inspect_source("ptx") else "cubin"
            except Exception:  # noqa: BLE001 - binary formats do not print as text
                return "cubin"
    return None
