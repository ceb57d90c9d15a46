"""ONNX -> Relax, and the lowering that MetaSchedule tunes: one code path for build and tune.

MetaSchedule records are keyed by each kernel's *structural hash*, so ``build`` and the
tuner must lower a model identically or a build would not find the records a tune wrote.
Both therefore call :func:`import_relax` and then :func:`lower_for_tuning`; nothing else in
edgeprune imports ONNX into Relax for a build (``bench.rpc`` has its own tiny import for
its self-test, below this layer).

The lowering is the one DESIGN.md verified on this machine (``static_shape_tuning`` has no
builder argument, so its steps are spelled out): ``DecomposeOpsForInference``,
``CanonicalizeBindings``, the ``zero`` pipeline and, on CPUs, ``AttachAttrLayoutFreeBuffers``
(weight prepacking) before tuning; what comes after tuning is in ``records.apply_records``.
"""

from __future__ import annotations

from pathlib import Path

from edgeprune.errors import BackendError


def import_relax(onnx_path: Path):
    """The Relax module of an ONNX file, with static shapes and inference-only ops."""
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    model = onnx.load(str(onnx_path))
    shapes, dtypes = static_inputs(model)
    mod = from_onnx(model, shape_dict=shapes, dtype_dict=dtypes, keep_params_in_input=False)
    return tvm.transform.Sequential(
        [relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings()]
    )(mod)


def static_inputs(model) -> tuple[dict[str, list[int]], dict[str, str]]:
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


def is_cpu(tvm_target) -> bool:
    """CPU (LLVM) targets get weight prepacking; GPU targets do not."""
    return str(tvm_target.kind.name) == "llvm"


def lower_for_tuning(mod, tvm_target):
    """``zero`` pipeline (+ weight-prepack attributes on CPUs): the module that is tuned.

    ``mod`` comes from :func:`import_relax` (already through ``DecomposeOpsForInference``
    and ``CanonicalizeBindings``).
    """
    import tvm
    from tvm import relax

    passes = [relax.get_pipeline("zero")]
    if is_cpu(tvm_target):
        passes.append(relax.transform.AttachAttrLayoutFreeBuffers())
    with tvm_target:
        return tvm.transform.Sequential(passes)(mod)


def count_scheduled(mod) -> tuple[int, int]:
    """(kernels with a MetaSchedule schedule, kernels) in a lowered module."""
    import tvm

    n = tuned = 0
    for _gv, func in mod.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        n += 1
        attrs = func.attrs
        if attrs is not None and ("tirx.is_scheduled" in attrs or "tir.is_scheduled" in attrs):
            tuned += 1
    return tuned, n
