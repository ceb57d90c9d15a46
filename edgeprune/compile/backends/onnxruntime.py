"""ONNX Runtime: the reference backend.

The artifact is the ONNX file itself (portable: any device with ``pip install
onnxruntime`` runs it, x86_64 or aarch64). Graph optimisation happens when the runner
creates the session on the device (``graph_optimization_level: all``), because ORT's
fully optimised graphs are specific to the machine that produced them.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeprune.compile.backends.base import BACKENDS, Artifact, Backend, dist_version, one_line
from edgeprune.errors import BackendError

if TYPE_CHECKING:
    from edgeprune.config.targets import Target


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    runtime_package = "onnxruntime"

    def version(self) -> str:
        return dist_version(self.name, ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"), "onnxruntime")

    def supports(self, target: "Target") -> tuple[bool, str]:
        # An ONNX file runs on any CPU that has an ORT wheel (x86_64 and aarch64 both do).
        # On accelerator targets it runs on the board's CPU cores (a CPU baseline).
        if target.arch not in ("x86_64", "aarch64"):
            return False, f"no ONNX Runtime wheel for architecture {target.arch}"
        return True, ""

    def runtime_options(self, target: "Target", threads: int | None = None, precision: str = "fp32") -> dict[str, Any]:
        # "precision" is the ONNX file's own: ORT runs the graph's types (fp32, or int8 for a QDQ file)
        options: dict[str, Any] = {"graph_optimization_level": "all", "intra_op_num_threads": target.num_cores()}
        options.update(target.options_for(self.name))
        if threads:
            options["intra_op_num_threads"] = int(threads)
        options["precision"] = precision
        return options

    def build(self, onnx_path: Path, target: "Target", out_dir: Path, threads: int | None = None) -> Artifact:
        version = self.version()
        t0 = time.perf_counter()
        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise BackendError(f"onnxruntime build for target {target.name} failed: {onnx_path} does not exist")
        out_dir.mkdir(parents=True, exist_ok=True)
        dest = out_dir / "model.onnx"
        try:
            if onnx_path.resolve() != dest.resolve():
                shutil.copy2(onnx_path, dest)
            # Check that ORT accepts the graph here, so a broken model fails at build time
            # and not only later on the device. Loading with optimisations off is fast.
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            so.log_severity_level = 3
            ort.InferenceSession(str(dest), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - reported as one line
            raise BackendError(f"onnxruntime build for target {target.name} failed: {one_line(exc)}") from exc

        options = self.runtime_options(target, threads)
        notes = []
        providers = [p if isinstance(p, str) else p[0] for p in options.get("providers") or []]
        if target.accelerator == "cuda" and "CUDAExecutionProvider" in providers:
            notes.append("CUDAExecutionProvider first (onnxruntime-gpu), the CPU provider where it is missing; "
                         "the runner records which ran")
        elif target.accelerator != "none":
            notes.append(f"runs on the CPU cores of {target.name} (CPUExecutionProvider); the {target.accelerator} "
                         "accelerator is not used")
        return Artifact(
            backend=self.name,
            path=dest,
            files=[dest],
            target=target.name,
            backend_version=version,
            build_seconds=time.perf_counter() - t0,
            options=options,
            notes=notes,
        )


BACKENDS.add("onnxruntime", OnnxRuntimeBackend())
