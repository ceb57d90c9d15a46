"""``FILE.onnx`` -> :class:`LoadedModel`: a checked ONNX graph with seeded example inputs.

Not prunable (there is no PyTorch module); inputs are synthetic unless ``--data`` gives
real ones. Unknown (symbolic) dims need ``--input-shape``, once per input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.errors import ModelError
from edgeprune.models.base import LoadedModel
from edgeprune.models.loading import EXAMPLE_SEED, SYNTHETIC_NOTE, first_line, random_array


def _onnx_inputs(graph) -> list[tuple[str, Any, list[int | str]]]:
    """(name, numpy dtype, dims) of the real graph inputs; unknown dims are strings."""
    from onnx import helper

    inits = {i.name for i in graph.initializer}
    out = []
    for vi in graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
        dims: list[int | str] = []
        for d in tt.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?"))
        out.append((vi.name, dtype, dims))
    return out


def load_onnx(path: Path, spec: str, shapes: list[tuple[int, ...]] | None) -> LoadedModel:
    import onnx

    try:
        proto = onnx.load(str(path))
    except Exception as exc:
        raise ModelError(f"cannot read ONNX file {path}: {first_line(exc)}", "is it a complete .onnx file?") from exc
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise ModelError(f"ONNX file {path} fails the ONNX checker: {first_line(exc)}") from exc
    inputs = _onnx_inputs(proto.graph)
    if not inputs:
        raise ModelError(f"ONNX file {path} has no graph inputs")
    if any(not tp.type.HasField("tensor_type") for tp in proto.graph.input):
        raise ModelError(f"ONNX file {path} has non-tensor inputs (sequences/maps), which edgeprune cannot feed")

    if shapes is None:
        for name, _, dims in inputs:
            unknown = [d for d in dims if isinstance(d, str)]
            if unknown:
                raise ModelError(
                    f"ONNX input '{name}' has unknown dims {unknown} (shape [{', '.join(map(str, dims))}])",
                    f"pass --input-shape once per input ({len(inputs)} input{'s' if len(inputs) > 1 else ''}), "
                    f"e.g. --input-shape {'x'.join(str(d if isinstance(d, int) else 1) for d in dims)}",
                )
        final = [tuple(int(d) for d in dims) for _, _, dims in inputs]  # type: ignore[arg-type]
    else:
        if len(shapes) != len(inputs):
            raise ModelError(
                f"ONNX file {path} has {len(inputs)} inputs ({', '.join(n for n, _, _ in inputs)}) "
                f"but {len(shapes)} --input-shape values were given"
            )
        for (name, _, dims), shape in zip(inputs, shapes):
            if len(dims) != len(shape) or any(isinstance(d, int) and d != s for d, s in zip(dims, shape)):
                raise ModelError(
                    f"--input-shape {'x'.join(map(str, shape))} does not fit ONNX input '{name}' "
                    f"of shape [{', '.join(map(str, dims))}]"
                )
        final = list(shapes)

    rng = np.random.default_rng(EXAMPLE_SEED)
    example = [random_array(rng, shape, dtype) for (_, dtype, _), shape in zip(inputs, final)]
    return LoadedModel(
        name=path.stem,
        spec=spec,
        input_names=[n for n, _, _ in inputs],
        example_inputs=example,
        output_names=[o.name for o in proto.graph.output],
        onnx_path=path.resolve(),
        notes=["ONNX model: not prunable (no PyTorch module)", SYNTHETIC_NOTE],
        meta={"format": "onnx", "opset": next((i.version for i in proto.opset_import if i.domain in ("", "ai.onnx")), None)},
    )
