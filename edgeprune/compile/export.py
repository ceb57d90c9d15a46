"""PyTorch -> ONNX with checks, and parity against PyTorch on real inputs.

Opset is pinned (``OPSET``) so every backend sees the same operators. We use the
TorchScript-based exporter (``dynamo=False``): it handles LSTM/GRU and embedding models
in one pass and produces stable node names that the latency tables refer to.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.errors import ModelError
from edgeprune.models.base import LoadedModel

OPSET = 17
DEFAULT_PARITY_TOL = 1e-4


@dataclass
class ExportResult:
    """The exported file and how closely ONNX Runtime reproduces PyTorch on it."""

    path: Path
    opset: int
    parity_max_abs_diff: float | None
    parity_tolerance: float
    parity_ok: bool | None
    parity_samples: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def _parity_inputs(model: LoadedModel, max_chunks: int = 8) -> list[list[np.ndarray]]:
    """Real held-out inputs at the deployment batch (falls back to the example input)."""
    chunks = [model.example_inputs]
    if model.data is not None:
        val = model.data.val
        b = model.batch_size
        n = min(max_chunks, len(val) // b)
        chunks = [[x[i * b : (i + 1) * b] for x in val.inputs] for i in range(n)] or chunks
    return chunks


def torch_outputs(model: LoadedModel, inputs: list[np.ndarray]) -> list[np.ndarray]:
    import torch

    assert model.module is not None
    with torch.no_grad():
        out = model.module(*[torch.from_numpy(np.ascontiguousarray(x)) for x in inputs])
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().cpu().numpy() for o in outs]


def export_onnx(model: LoadedModel, out_path: Path, tolerance: float = DEFAULT_PARITY_TOL) -> ExportResult:
    """Export (or copy) ``model`` to ``out_path``, check it, and measure parity.

    For a model given as ONNX the file is checked and copied; there is no PyTorch
    reference, so parity is ``None`` (and reported as such, not as a pass).
    """
    import onnx

    out_path.parent.mkdir(parents=True, exist_ok=True)
    if model.module is None:
        assert model.onnx_path is not None
        proto = onnx.load(str(model.onnx_path))
        _check(proto, out_path)
        return ExportResult(out_path, _opset_of(proto), None, tolerance, None, 0)

    proto = onnx_proto(model)
    _check(proto, out_path)

    import onnxruntime as ort

    sess = ort.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])
    worst, n = 0.0, 0
    for chunk in _parity_inputs(model):
        ref = torch_outputs(model, chunk)
        got = sess.run(None, {name: x for name, x in zip(model.input_names, chunk)})
        for r, g in zip(ref, got):
            if r.shape != g.shape:
                raise ModelError(f"ONNX output shape {g.shape} differs from PyTorch {r.shape} for {model.name}")
            worst = max(worst, float(np.max(np.abs(r.astype(np.float64) - g.astype(np.float64)))) if r.size else 0.0)
        n += model.batch_size
    return ExportResult(out_path, OPSET, worst, tolerance, worst <= tolerance, n)


def onnx_proto(model: LoadedModel):
    """The torch module of ``model`` exported to an in-memory ONNX ModelProto (unchecked)."""
    import onnx
    import torch

    args = tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in model.example_inputs)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model.module.eval(),
                args,
                buf,
                input_names=model.input_names,
                output_names=model.output_names,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as exc:  # torch raises many types here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot export {model.name} to ONNX: {first}", "use --debug for the full trace") from exc
    return onnx.load_from_string(buf.getvalue())


def _opset_of(proto) -> int:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return -1


def _check(proto, out_path: Path) -> None:
    """Checker + shape inference; save the inferred model atomically."""
    import onnx

    try:
        onnx.checker.check_model(proto)
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    except Exception as exc:
        raise ModelError(f"ONNX model failed validation: {str(exc).splitlines()[0]}") from exc
    tmp = out_path.with_suffix(".onnx.tmp")
    onnx.save(inferred, str(tmp))
    tmp.replace(out_path)
