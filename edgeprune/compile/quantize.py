"""INT8 post-training static quantization of the exported ONNX model.

ONNX Runtime's ``quantize_static`` writes a QDQ model (QuantizeLinear/DequantizeLinear
pairs around each quantizable operator): int8 weights, per output channel, and uint8
activations whose ranges are calibrated by running the fp32 model on the model's *real*
training samples (:class:`RealDataReader`). The same QDQ file is what both CPU runtimes
execute in int8: ONNX Runtime fuses the pairs into QLinearConv / QLinearMatMul, and
OpenVINO turns them into FakeQuantize and runs int8 kernels. Quantization applies to
whatever ONNX the pipeline exported, so a pruned model is quantized after pruning.

Parity of an INT8 artifact cannot be the fp32 rule (1e-4): rounding to 256 levels moves
logits by a few percent. The rule (:data:`INT8_PARITY_RULE`) is therefore
accuracy-based, with a loose output bound that still catches a broken quantization.

TVM is not given the QDQ model: its Relax ONNX frontend dequantizes back to fp32, so it
would gain nothing over the fp32 build.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.errors import BackendError
from edgeprune.models.base import LoadedModel

Log = Callable[[str], None]
#: backends that execute QDQ models in int8 (TVM's frontend would dequantize to fp32)
INT8_BACKENDS = ("onnxruntime", "openvino")
#: loose bound on |int8 - fp32| relative to max |fp32 output|; real gate is accuracy
INT8_OUTPUT_REL_TOL = 0.25
INT8_PARITY_RULE = (
    "INT8 artifacts are not held to the fp32 tolerance: they pass parity when max |int8 - fp32 reference| "
    f"<= {INT8_OUTPUT_REL_TOL:g} x max |fp32 reference output| (catches a broken quantization, not rounding), "
    "and are chosen only if their accuracy on held-out data is within the accuracy tolerance of the fp32 model"
)
DEFAULT_CALIBRATION_SAMPLES = 256


@dataclass
class QuantizeResult:
    """The quantized ONNX file and how it was made."""

    path: Path
    method: str
    calibrate_method: str
    calibration_samples: int
    calibration_source: str
    synthetic_calibration: bool
    per_channel: bool
    weight_type: str
    activation_type: str
    quantized_nodes: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d

    def describe(self) -> str:
        src = ("SYNTHETIC inputs (the model has no data): accuracy is not verified"
               if self.synthetic_calibration else f"{self.calibration_samples} real samples of {self.calibration_source}")
        return (f"INT8: {self.method} post-training static quantization ({self.quantized_nodes} QuantizeLinear nodes, "
                f"{self.weight_type} weights{' per channel' if self.per_channel else ''}, {self.activation_type} "
                f"activations, {self.calibrate_method} calibration on {src})")


def calibration_batches(model: LoadedModel, samples: int, seed: int = 0) -> tuple[list[list[np.ndarray]], bool, str]:
    """Inputs at the deployment batch for calibration: real training samples when the
    model has data (a seeded random subset), else the example input plus seeded noise.

    Returns (batches, synthetic, description).
    """
    b = model.batch_size
    if model.data is not None and len(model.data.train) >= b:
        train = model.data.train
        n = min(max(samples, b), len(train)) // b * b
        idx = np.random.default_rng(seed).permutation(len(train))[:n]
        batches = [[np.ascontiguousarray(x[idx[i:i + b]]) for x in train.inputs] for i in range(0, n, b)]
        return batches, False, "the training split" + (f" ({model.data.description})" if model.data.description else "")
    rng = np.random.default_rng(seed)
    batches = [list(model.example_inputs)]
    for _ in range(max(1, samples // b) - 1):
        batches.append([
            (rng.standard_normal(x.shape).astype(x.dtype) * (float(x.std()) or 1.0) + float(x.mean()))
            if x.dtype.kind == "f" else x.copy()
            for x in model.example_inputs
        ])
    return batches, True, "synthetic inputs"


def _reader(input_names: list[str], batches: list[list[np.ndarray]]):
    from onnxruntime.quantization import CalibrationDataReader

    class RealDataReader(CalibrationDataReader):
        """Feeds calibration batches to ORT's calibrator, one ``{input name: array}`` at a time."""

        def __init__(self) -> None:
            self._it: Iterator[list[np.ndarray]] = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._it, None)
            return None if batch is None else dict(zip(input_names, batch))

        def rewind(self) -> None:
            self._it = iter(batches)

    return RealDataReader()


def needs_reduce_range(flags: set[str] | None = None) -> bool:
    """Whether INT8 weights must use 7 bits on this host (x86 without VNNI or AMX)."""
    import platform

    from edgeprune.host import cpu_flags

    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    flags = cpu_flags() if flags is None else flags
    return not ({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags))


def quantize_int8(
    model: LoadedModel,
    onnx_path: Path,
    out_path: Path,
    samples: int = DEFAULT_CALIBRATION_SAMPLES,
    calibrate_method: str = "MinMax",
    per_channel: bool = True,
    log: Log = lambda _m: None,
) -> QuantizeResult:
    """Quantize ``onnx_path`` (fp32, static shapes) to a QDQ int8 model at ``out_path``."""
    import onnx

    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:  # pragma: no cover - onnxruntime is a core dependency
        raise BackendError(f"ONNX Runtime quantization is not importable: {exc}", "pip install onnxruntime") from exc

    t0 = time.perf_counter()
    batches, synthetic, source = calibration_batches(model, samples)
    n_samples = sum(int(b[0].shape[0]) for b in batches)
    log(f"quantizing to INT8 (calibrating on {n_samples} {'synthetic' if synthetic else 'real'} samples) ...")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    pre = out_path.with_name(out_path.stem + ".pre.onnx")
    notes: list[str] = []
    src = onnx_path
    try:  # shape inference + ORT's graph fusions (Conv+BN, ...) so fused ops are quantized as one
        quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=False)
        src = pre
    except Exception as exc:  # noqa: BLE001 - pre-processing is an optimisation, not a requirement
        notes.append(f"quantization pre-processing skipped ({type(exc).__name__})")
    # x86 without VNNI/AMX multiplies u8 x s8 with pmaddubsw, whose int16 sums saturate:
    # ONNX Runtime's documented remedy is 7-bit weights (reduce_range). Measured on an
    # AVX2-only EPYC VM: digits-cnn INT8 accuracy 88.9 % without it vs 99.7 % fp32.
    reduce_range = needs_reduce_range()
    if reduce_range:
        notes.append("weights quantized to 7 bits (reduce_range): this x86 CPU has no VNNI/AMX, "
                     "and 8-bit u8 x s8 products saturate in its int16 accumulation")
    try:
        quantize_static(
            str(src), str(out_path), _reader(model.input_names, batches),
            quant_format=QuantFormat.QDQ, per_channel=per_channel, reduce_range=reduce_range,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, calibrate_method),
        )
    except Exception as exc:  # noqa: BLE001 - ORT raises assorted types
        from edgeprune.compile.backends.base import one_line

        raise BackendError(f"INT8 quantization of {model.name} failed: {one_line(exc)}") from exc
    finally:
        pre.unlink(missing_ok=True)
    q = onnx.load(str(out_path))
    n_q = sum(1 for n in q.graph.node if n.op_type == "QuantizeLinear")
    if n_q == 0:
        raise BackendError(f"INT8 quantization of {model.name} quantized nothing (no Conv/MatMul/Gemm it supports)")
    if synthetic:
        notes.append("calibrated on SYNTHETIC inputs: the model has no data, so INT8 accuracy is not verified")
    return QuantizeResult(
        path=out_path, method="onnxruntime-qdq", calibrate_method=calibrate_method, calibration_samples=n_samples,
        calibration_source=source, synthetic_calibration=synthetic, per_channel=per_channel, weight_type="int8",
        activation_type="uint8", quantized_nodes=n_q, seconds=time.perf_counter() - t0, notes=notes,
    )
