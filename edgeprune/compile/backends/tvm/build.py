"""The TVM backend (Relax, 0.27): ONNX -> ``model.so`` for a CPU (x86_64 / aarch64), CUDA or OpenCL target.

Flow: :func:`~.relax.import_relax` (static shapes taken from the ONNX graph, weights bound
as constants) -> MetaSchedule records of the target's tuning database, if ``edgeprune
tune`` filled one (:mod:`.records`: same lowering as the tuner, so a compile never tunes
again) -> ``tvm.compile(mod, target=tvm.target.Target({...}))`` -> ``export_library`` (a
cross compiler for foreign architectures, e.g. ``aarch64-linux-gnu-g++``).

GPU targets go through TVM's default GPU pipeline, which schedules every kernel with
the ``tvm.s_tir.dlight`` default rules (Matmul, GEMV, Reduction, GeneralReduction,
Fallback), so kernels are not naive; their device source is written beside the
artifact (``kernels.cu`` / ``kernels.cl``) for inspection.

CUDA on this machine's GPU (``host-cuda``): :func:`~.cuda.cuda_problem` refuses the
backend in one line before any export when TVM cannot build and run CUDA here; the
build compiles the kernels to a cubin for the detected ``sm_XX`` and the runner runs it
on ``cuda(0)``, verified like any artifact. For a board (``jetson-orin-nano``) the
``.so`` carries CUDA C source instead (no driver here): compile-verified only
(:mod:`.cuda` says why and what the board's TVM does with it).

Without records TVM is far slower than ONNX Runtime on CPUs (see DESIGN.md).
"""

from __future__ import annotations

import re
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeprune.compile.backends.base import BACKENDS, Artifact, Backend
from edgeprune.compile.backends.base import one_line
from edgeprune.compile.backends.tvm.cuda import (build_problem, compile_mode, cuda_payload, cuda_problem,
                                                 executable_modules)
from edgeprune.compile.backends.tvm.records import TuningError, apply_records, records_for
from edgeprune.compile.backends.tvm.relax import import_relax
from edgeprune.compile.backends.tvm.targets import NAME, apt_package, cross_compiler, target_dict, tvm_version
from edgeprune.errors import BackendError

if TYPE_CHECKING:
    from edgeprune.config.targets import Target


class TvmBackend(Backend):
    name = NAME
    runtime_package = "apache-tvm"

    def version(self) -> str:
        return tvm_version()

    def supports(self, target: "Target") -> tuple[bool, str]:
        if target.arch not in ("x86_64", "aarch64"):
            return False, f"no LLVM target configured for {target.arch}"
        if target.accelerator == "cuda" and (not target.cuda_arch or target.cuda_arch == "auto"):
            return False, "accelerator cuda needs 'cuda_arch' (e.g. sm_87) in the target"
        if target.accelerator == "cuda" and target.is_native:  # this machine's GPU: can TVM run CUDA here?
            problem = cuda_problem()
            if problem:
                return False, problem
        return True, ""

    def runtime_options(self, target: "Target", threads: int | None = None, precision: str = "fp32") -> dict[str, Any]:
        # the device the runner puts the VM on: a prebuilt CUDA .so runs on the GPU like a built one
        device = {"cuda": "cuda", "opencl": "opencl"}.get(target.accelerator, "cpu")
        return {"device": device, "threads": int(threads or target.num_cores()), "precision": precision}

    def build(self, onnx_path: Path, target: "Target", out_dir: Path, threads: int | None = None) -> Artifact:
        version = self.version()
        ok, why = self.supports(target)
        if not ok:
            raise BackendError(f"tvm cannot build for target {target.name}: {why}")
        cc = cross_compiler(target)
        if cc is not None and shutil.which(cc) is None:
            raise BackendError(
                f"tvm build for target {target.name} needs the cross compiler '{cc}', which is not installed",
                f"apt-get install {apt_package(cc)}",
            )
        opts = target.options_for(self.name)
        out_dir.mkdir(parents=True, exist_ok=True)
        so_path = out_dir / "model.so"
        try:
            # imported before t0: `import tvm` and its ONNX frontend take seconds, not build time
            import onnx  # noqa: F401
            import tvm

            if (problem := build_problem()) is not None:
                raise BackendError(f"tvm cannot build for target {target.name}: {problem}",
                                   "install the full apache-tvm wheel, or time a prebuilt .so with bench --artifact")
            from tvm.relax.frontend.onnx import from_onnx  # noqa: F401

            t0 = time.perf_counter()
            mod = import_relax(onnx_path)
            tdict = target_dict(target)
            tvm_target = tvm.target.Target(tdict)
            applied, tuning_error = None, None
            db = records_for(target)  # MetaSchedule records from `edgeprune tune`, if any
            if db is not None:
                try:
                    mod, applied = apply_records(mod, tvm_target, db)
                except TuningError as exc:  # unusable records must not stop the build
                    tuning_error = str(exc)
            # CUDA: nvrtc or nvcc compiles the kernels at build time where TVM's CUDA runtime loaded
            with compile_mode() if target.accelerator == "cuda" else nullcontext() as cuda_compiler:
                with tvm.transform.PassContext(opt_level=int(opts.get("opt_level", 3))):
                    ex = tvm.compile(mod, target=tvm_target)
                kernels = gpu_kernel_source(ex) if target.accelerator != "none" else None
                if kernels is not None:  # kept beside the artifact for inspection; not needed at run time
                    (out_dir / f"kernels.{kernels[0]}").write_text(kernels[1])
                    n_kernels = len(re.findall(r"(?:__global__|__kernel) void [^;{]*\{", kernels[1]))
                payload = cuda_payload(ex) if target.accelerator == "cuda" else None
                if cc is None:
                    ex.export_library(str(so_path))
                else:
                    ex.export_library(str(so_path), fcompile=tvm.support.cc.cross_compiler(cc))
            seconds = time.perf_counter() - t0
        except BackendError:
            raise
        except Exception as exc:  # noqa: BLE001 - TVM raises many types; reported as one line
            raise BackendError(f"tvm build for target {target.name} failed: {one_line(exc)}") from exc

        # the runner reads device + threads (TVM_NUM_THREADS); target is recorded for reproducibility
        # (and its CUDA arch checked against the GPU the artifact lands on)
        options: dict[str, Any] = {**self.runtime_options(target, threads), "target": tdict}
        options.pop("precision")  # set by prepare, the one place that knows what an artifact runs at
        if opts.get("cpu_affinity") is not None:  # the runner pins its worker process to these cores
            options["cpu_affinity"] = opts["cpu_affinity"]
        notes = []
        if tuning_error is not None:
            notes.append(f"{tuning_error}; built untuned")
        if applied is not None:
            options["tuning_db"] = applied.database
            options["kernels_tuned"] = [applied.kernels_tuned, applied.kernels]
            notes.append(applied.note())
        if target.accelerator == "none" and (applied is None or applied.kernels_tuned == 0):
            notes.append("untuned build (no MetaSchedule records): expect it to be much slower than ONNX Runtime; "
                         "`edgeprune tune` fixes that once per target")
        elif target.accelerator == "cuda":
            notes.append(cuda_note(target, payload, cuda_compiler))
        elif target.accelerator == "opencl":
            notes.append(
                "compile-verified only: OpenCL kernels scheduled with tvm.s_tir.dlight GPU rules, not run here"
            )
        if kernels is not None:
            notes.append(f"{n_kernels} {target.accelerator} kernels; device source in kernels.{kernels[0]} beside the .so")
        if cc is not None:
            notes.append(f"cross-compiled with {cc}")
        return Artifact(
            backend=self.name,
            path=so_path,
            files=[so_path],
            target=target.name,
            backend_version=version,
            build_seconds=seconds,
            options=options,
            notes=notes,
        )


def cuda_note(target: "Target", payload: str | None, compiler: str | None) -> str:
    """What a CUDA build is and how far it is verified, in one note."""
    carried = (f"the .so embeds a {payload} for {target.cuda_arch} compiled here by {compiler or 'TVM'}"
               if payload in ("cubin", "ptx") else
               "the .so embeds CUDA C source (no CUDA driver here), which the TVM that loads it compiles then "
               "(NVRTC via cuda-bindings, or nvcc with TVM_CUDA_COMPILE_MODE=nvcc)")
    if target.gpu is not None:
        return (f"CUDA build for {target.gpu.describe()}: kernels scheduled with tvm.s_tir.dlight GPU rules; "
                f"{carried}; the runner times it on cuda(0) and checks it against the CPU reference")
    return f"compile-verified only: kernels scheduled with tvm.s_tir.dlight GPU rules, not run here; {carried}"


def gpu_kernel_source(ex) -> tuple[str, str] | None:
    """("cu" | "cl", device source) embedded in a built Relax executable, or None."""
    for m in executable_modules(ex):
        kind = getattr(m, "kind", "")
        if kind in ("cuda", "opencl"):
            return ("cu" if kind == "cuda" else "cl"), m.inspect_source()
    return None


BACKENDS.add(NAME, TvmBackend())
