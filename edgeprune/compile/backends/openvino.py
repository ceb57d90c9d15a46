"""OpenVINO: ONNX -> OpenVINO IR (``model.xml`` + ``model.bin``) for the CPU plugin.

The IR is portable between x86_64 and aarch64 CPUs; the CPU plugin compiles it for the
machine when the runner loads it. Two defaults matter for parity with the reference:

* weights are saved in FP32 (``save_model`` compresses to FP16 unless told not to);
* the precision is always explicit (``precision`` in the runtime options, which the
  runner turns into ``INFERENCE_PRECISION_HINT``): on CPUs with AVX512-BF16/AMX the CPU
  plugin otherwise silently infers in bfloat16 (outputs then differ by ~1e-2), and on
  ARM with FP16 arithmetic in f16. A prebuilt IR (``bench --artifact``) gets the same
  options as a built one (:meth:`OpenVinoBackend.runtime_options`).

bf16 and fp16 are *run* precisions of the same fp32 IR (``compile --precision bf16``):
the CPU plugin converts at compile time on the device, where the CPU has the
instructions (edgeprune.runner.adapters.precision.NATIVE_FLAGS).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeprune.compile.backends.base import BACKENDS, Artifact, Backend
from edgeprune.compile.backends.base import dist_version, one_line
from edgeprune.errors import BackendError

if TYPE_CHECKING:
    from edgeprune.config.targets import Target


def _normalise(options: dict[str, Any]) -> dict[str, Any]:
    """Target YAML uses snake_case (``performance_hint``); OpenVINO wants ``PERFORMANCE_HINT``."""
    out: dict[str, Any] = {}
    for k, v in options.items():
        out["device" if k.lower() == "device" else k.upper()] = v
    return out


class OpenVinoBackend(Backend):
    name = "openvino"
    runtime_package = "openvino"
    precisions = ("fp32", "bf16", "fp16")

    def version(self) -> str:
        return dist_version(self.name, ("openvino",), "openvino")

    def supports(self, target: "Target") -> tuple[bool, str]:
        if target.accelerator != "none":
            return False, f"the OpenVINO CPU plugin does not drive {target.accelerator} accelerators"
        if target.arch not in ("x86_64", "aarch64"):
            return False, f"OpenVINO has no CPU plugin for {target.arch}"
        return True, ""

    def runtime_options(self, target: "Target", threads: int | None = None, precision: str = "fp32") -> dict[str, Any]:
        options: dict[str, Any] = {"device": "CPU", "PERFORMANCE_HINT": "LATENCY",
                                   "INFERENCE_NUM_THREADS": target.num_cores()}
        target_opts = _normalise(target.options_for(self.name))
        if "INFERENCE_PRECISION_HINT" in target_opts:  # one source of truth: the artifact's precision
            raise BackendError(f"target {target.name} sets openvino inference_precision_hint; the precision is "
                               "chosen per artifact", "remove it from the target file and use --precision")
        options.update(target_opts)
        if threads:
            options["INFERENCE_NUM_THREADS"] = int(threads)
        options["precision"] = precision
        return options

    def build(self, onnx_path: Path, target: "Target", out_dir: Path, threads: int | None = None) -> Artifact:
        version = self.version()
        ok, why = self.supports(target)
        if not ok:
            raise BackendError(f"openvino cannot build for target {target.name}: {why}")
        t0 = time.perf_counter()
        out_dir.mkdir(parents=True, exist_ok=True)
        xml = out_dir / "model.xml"
        try:
            import openvino as ov

            model = ov.convert_model(str(onnx_path))
            ov.save_model(model, str(xml), compress_to_fp16=False)
        except Exception as exc:  # noqa: BLE001 - reported as one line
            raise BackendError(f"openvino build for target {target.name} failed: {one_line(exc)}") from exc
        bin_ = xml.with_suffix(".bin")
        files = [xml] + ([bin_] if bin_.exists() else [])
        options = self.runtime_options(target, threads)
        return Artifact(
            backend=self.name,
            path=xml,
            files=files,
            target=target.name,
            backend_version=version,
            build_seconds=time.perf_counter() - t0,
            options=options,
        )


BACKENDS.add("openvino", OpenVinoBackend())
