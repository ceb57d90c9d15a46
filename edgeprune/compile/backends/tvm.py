"""Apache TVM (Relax, 0.27): ONNX -> ``model.so`` for a CPU (x86_64 / aarch64), CUDA or OpenCL target.

Flow: ``tvm.relax.frontend.onnx.from_onnx`` (static shapes taken from the ONNX graph,
weights bound as constants) -> ``DecomposeOpsForInference`` + ``CanonicalizeBindings``
-> ``tvm.compile(mod, target=tvm.target.Target({...}))`` (the dict form; plain
``"llvm -mcpu=..."`` strings are rejected) -> ``export_library`` (a cross compiler for
foreign architectures, e.g. ``aarch64-linux-gnu-g++``).

GPU targets go through TVM's default GPU pipeline, which schedules every kernel with
the ``tvm.s_tir.dlight`` default rules (Matmul, GEMV, Reduction, GeneralReduction,
Fallback), so kernels are not naive; their device source is written beside the
artifact (``kernels.cu`` / ``kernels.cl``) for inspection.

MetaSchedule records: when ``edgeprune tune`` has filled the target's tuning database,
``build`` applies them (``compile/tuning.py``: same lowering as the tuner, then
``MetaScheduleApplyDatabase`` and CPU weight prepacking) so a compile never tunes again.
Without records TVM is far slower than ONNX Runtime on CPUs (see DESIGN.md).
"""

from __future__ import annotations

import platform
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeprune.compile.backends.base import BACKENDS, Artifact, Backend
from edgeprune.compile import tuning
from edgeprune.compile.backends.onnxruntime import dist_version, one_line
from edgeprune.errors import BackendError

if TYPE_CHECKING:
    from edgeprune.config.targets import Target

#: /proc/cpuinfo flag names -> LLVM feature names (only where they differ or matter)
_LLVM_FEATURES = {
    "+sse4_2": "+sse4.2",
    "+avx512_vnni": "+avx512vnni",
    "+asimd": "+neon",
    "+asimddp": "+dotprod",
}


def llvm_features(features: list[str]) -> list[str]:
    out: list[str] = []
    for f in features:
        g = _LLVM_FEATURES.get(f, f)
        if g not in out:
            out.append(g)
    return out


def _apt_package(compiler: str) -> str:
    # aarch64-linux-gnu-g++ -> g++-aarch64-linux-gnu ; x86_64-linux-gnu-g++ -> g++-x86-64-linux-gnu
    prefix = compiler[: -len("-g++")] if compiler.endswith("-g++") else compiler
    return "g++-" + prefix.replace("_", "-")


class TvmBackend(Backend):
    name = "tvm"
    runtime_package = "apache-tvm"

    def version(self) -> str:
        return dist_version(self.name, ("apache-tvm", "tvm"), "apache-tvm")

    def supports(self, target: "Target") -> tuple[bool, str]:
        if target.arch not in ("x86_64", "aarch64"):
            return False, f"no LLVM target configured for {target.arch}"
        if target.accelerator == "cuda" and not target.cuda_arch:
            return False, "accelerator cuda needs 'cuda_arch' (e.g. sm_87) in the target"
        return True, ""

    # ---- target description ----------------------------------------------------------
    def cpu_target(self, target: "Target", with_cores: bool = True) -> dict[str, Any]:
        """The LLVM target dict for the target's CPU."""
        import tvm

        d: dict[str, Any] = {"kind": "llvm"}
        if target.is_host:
            cpu = tvm.target.codegen.llvm_get_system_cpu()
            d["mcpu"] = cpu
            if cpu == "generic":  # unknown CPU: at least pass the detected SIMD features
                feats = llvm_features(target.resolved_features())
                if feats:
                    d["mattr"] = feats
        else:
            d["mtriple"] = target.triple
            d["mcpu"] = target.cpu
            feats = llvm_features(target.resolved_features())
            if feats:
                d["mattr"] = feats
        if with_cores:
            d["num-cores"] = target.num_cores()
        return d

    def target_dict(self, target: "Target") -> dict[str, Any]:
        opts = target.options_for(self.name)
        if target.accelerator == "cuda":
            return {"kind": "cuda", "arch": target.cuda_arch, "host": self.cpu_target(target, with_cores=False)}
        if target.accelerator == "opencl":
            return {"kind": "opencl", "device": opts.get("device", "mali"),
                    "host": self.cpu_target(target, with_cores=False)}
        return self.cpu_target(target)

    def cross_compiler(self, target: "Target") -> str | None:
        """Compiler command for linking the .so, or None for the host's own."""
        if target.arch == platform.machine():
            return None
        return str(target.options_for(self.name).get("cross_compiler") or f"{target.arch}-linux-gnu-g++")

    # ---- build --------------------------------------------------------------------------
    def build(self, onnx_path: Path, target: "Target", out_dir: Path, threads: int | None = None) -> Artifact:
        version = self.version()
        ok, why = self.supports(target)
        if not ok:
            raise BackendError(f"tvm cannot build for target {target.name}: {why}")
        cc = self.cross_compiler(target)
        if cc is not None and shutil.which(cc) is None:
            raise BackendError(
                f"tvm build for target {target.name} needs the cross compiler '{cc}', which is not installed",
                f"apt-get install {_apt_package(cc)}",
            )
        opts = target.options_for(self.name)
        out_dir.mkdir(parents=True, exist_ok=True)
        so_path = out_dir / "model.so"
        try:
            # imported before t0: `import tvm` and its ONNX frontend take seconds, not build time
            import onnx  # noqa: F401
            import tvm
            from tvm.relax.frontend.onnx import from_onnx  # noqa: F401

            t0 = time.perf_counter()  # `import tvm` (seconds) is not part of the build time
            mod = import_relax(onnx_path)
            tdict = self.target_dict(target)
            tvm_target = tvm.target.Target(tdict)
            applied, tuning_error = None, None
            records = tuning.records_for(target)  # MetaSchedule records from `edgeprune tune`, if any
            if records is not None:
                try:
                    mod, applied = tuning.apply_records(mod, tvm_target, records)
                except tuning.TuningError as exc:  # unusable records must not stop the build
                    tuning_error = str(exc)
            with tvm.transform.PassContext(opt_level=int(opts.get("opt_level", 3))):
                ex = tvm.compile(mod, target=tvm_target)
            kernels = gpu_kernel_source(ex) if target.accelerator != "none" else None
            if kernels is not None:  # kept beside the artifact for inspection; not needed at run time
                (out_dir / f"kernels.{kernels[0]}").write_text(kernels[1])
                n_kernels = len(re.findall(r"(?:__global__|__kernel) void [^;{]*\{", kernels[1]))
            if cc is None:
                ex.export_library(str(so_path))
            else:
                ex.export_library(str(so_path), fcompile=tvm.support.cc.cross_compiler(cc))
            seconds = time.perf_counter() - t0
        except BackendError:
            raise
        except Exception as exc:  # noqa: BLE001 - TVM raises many types; reported as one line
            raise BackendError(f"tvm build for target {target.name} failed: {one_line(exc)}") from exc

        device = {"cuda": "cuda", "opencl": "opencl"}.get(target.accelerator, "cpu")
        # the runner reads device + threads (TVM_NUM_THREADS); target is recorded for reproducibility
        options: dict[str, Any] = {"device": device, "threads": int(threads or target.num_cores()), "target": tdict}
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
        elif target.accelerator == "none":
            pass
        elif target.accelerator == "cuda":
            notes.append(
                "compile-verified only: kernels scheduled with tvm.s_tir.dlight GPU rules; this host's TVM wheel "
                "has no CUDA support, so the .so embeds CUDA C source (no PTX/cubin) and needs a CUDA-enabled "
                "TVM on the board"
            )
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


def gpu_kernel_source(ex) -> tuple[str, str] | None:
    """("cu" | "cl", device source) embedded in a built Relax executable, or None."""
    stack, seen = [ex.mod], set()
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        kind = getattr(m, "kind", "")
        if kind in ("cuda", "opencl"):
            return ("cu" if kind == "cuda" else "cl"), m.inspect_source()
        stack.extend(m.imports)
    return None


def import_relax(onnx_path: Path):
    """The Relax module of an ONNX file, with static shapes and inference-only ops.

    The one import both ``build`` and the tuner (``tuning.extract``) use: MetaSchedule
    records are keyed by each kernel's structural hash, so the two must lower the model
    identically or a build would not find the records a tune wrote."""
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    model = onnx.load(str(onnx_path))
    shapes, dtypes = _static_inputs(model)
    mod = from_onnx(model, shape_dict=shapes, dtype_dict=dtypes, keep_params_in_input=False)
    return tvm.transform.Sequential(
        [relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings()]
    )(mod)


def _static_inputs(model) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Input shapes and dtypes from the ONNX graph; TVM needs every dimension fixed."""
    import onnx

    init = {i.name for i in model.graph.initializer}
    shapes: dict[str, list[int]] = {}
    dtypes: dict[str, str] = {}
    for inp in model.graph.input:
        if inp.name in init:
            continue
        tt = inp.type.tensor_type
        dims = []
        for i, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            else:
                sym = d.dim_param or "?"
                raise BackendError(
                    f"input '{inp.name}' has a dynamic dimension {i} ('{sym}'); TVM artifacts need static shapes",
                    "export the model with a fixed batch size",
                )
        shapes[inp.name] = dims
        dtypes[inp.name] = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name
    return shapes, dtypes


BACKENDS.add("tvm", TvmBackend())
