"""``--model SPEC`` -> :class:`LoadedModel`: the one place that knows every model format.

Accepted specs:

* ``zoo:NAME`` - a built-in model (see :mod:`edgeprune.models.zoo`);
* ``file.onnx`` - an ONNX graph (checked; not prunable; inputs are synthetic unless data
  is given);
* ``pkg.module:factory`` - a Python callable returning an ``nn.Module``, optionally with
  a ``state_dict`` file (``weights``, read with ``torch.load(weights_only=True)``);
* ``file.pt2`` - a ``torch.export`` ExportedProgram;
* ``file.pt`` / ``.pth`` / ``.ts`` - TorchScript.

A fully pickled ``nn.Module`` (``torch.save(model)``) is refused unless
``allow_pickle=True``: unpickling runs arbitrary code from the file. Torch files are
recognised by their content (zip members), not only by their extension, so the error
says what the file really is.

Every failure is a :class:`ModelError` with one line naming the file or spec and what
is wrong, plus a hint.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import sys
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeprune.errors import ModelError
from edgeprune.models.base import LoadedModel

if TYPE_CHECKING:
    import torch

Log = Callable[[str], None]
Shapes = Sequence[tuple[int, ...]]

EXAMPLE_SEED = 0
ONNX_SUFFIXES = {".onnx"}
TORCH_SUFFIXES = {".pt", ".pth", ".ts", ".pt2"}
FACTORY_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
SAFE_FORMATS = "a state_dict + module:factory, TorchScript (torch.jit.save), torch.export (.pt2) or ONNX"
SPEC_FORMS = "zoo:NAME, FILE.onnx, pkg.module:factory, FILE.pt/.pth/.ts (TorchScript) or FILE.pt2 (torch.export)"


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_model(
    spec: str,
    *,
    weights: Path | None = None,
    input_shape: Shapes | None = None,
    allow_pickle: bool = False,
    data: Path | None = None,
    log: Log = _stderr,
) -> LoadedModel:
    """Resolve ``spec`` to a model with example inputs at its deployment batch (and data,
    when known). ``data`` (a user ``.npz``, see :func:`load_npz_data`) replaces the
    model's own data and supplies real example inputs."""
    spec = spec.strip()
    shapes = [tuple(int(d) for d in s) for s in input_shape] if input_shape else None
    weights = Path(weights) if weights is not None else None
    if weights is not None and not weights.is_file():
        raise ModelError(f"weights file {weights} does not exist")
    path = Path(spec).expanduser()

    if spec.startswith("zoo:"):
        model = _load_zoo(spec[4:], weights, shapes, log)
    elif path.is_dir():
        raise ModelError(f"model path {path} is a directory, not a model file", f"give one of: {SPEC_FORMS}")
    elif path.is_file():
        if weights is not None:
            raise ModelError(
                f"--weights applies to module:factory and zoo:NAME specs, not to the model file {path}",
                "a model file already carries its weights",
            )
        if path.suffix.lower() in ONNX_SUFFIXES:
            model = _load_onnx(path, spec, shapes)
        else:
            model = _load_torch_file(path, spec, shapes, allow_pickle, data)
    elif FACTORY_RE.match(spec):
        model = _load_factory(spec, weights, shapes, data)
    elif path.suffix.lower() in ONNX_SUFFIXES | TORCH_SUFFIXES:
        raise ModelError(f"model file {path} does not exist")
    else:
        raise ModelError(f"cannot interpret model spec '{spec}'", f"give one of: {SPEC_FORMS}")

    if data is not None:
        _attach_data(model, Path(data))
    return model


# ----------------------------------------------------------------------------- zoo


def _load_zoo(name: str, weights: Path | None, shapes: list[tuple[int, ...]] | None, log: Log) -> LoadedModel:
    from edgeprune.models.zoo import load_zoo

    model = load_zoo(name, log=log, trained=weights is None)
    if weights is not None:
        assert model.module is not None
        _load_state_dict(model.module, weights, f"zoo:{name}")
        model.meta.pop("trained", None)
        model.notes.append(f"weights from {weights}")
    if shapes is not None:
        _rebatch_zoo(model, shapes)
    return model


def _rebatch_zoo(model: LoadedModel, shapes: list[tuple[int, ...]]) -> None:
    """Zoo models have fixed sample shapes; ``--input-shape`` may only change the batch."""
    want = [s[1:] for s in model.input_shapes]
    if len(shapes) != len(want) or any(s[1:] != w for s, w in zip(shapes, want)) or len({s[0] for s in shapes}) != 1:
        fixed = ", ".join("Bx" + "x".join(map(str, w)) for w in want)
        raise ModelError(f"{model.spec} takes inputs of shape {fixed}; --input-shape may only change the batch B")
    batch = shapes[0][0]
    if model.data is not None and len(model.data.val) >= batch:
        model.example_inputs = [np.ascontiguousarray(x[:batch]) for x in model.data.val.inputs]
    else:
        model.example_inputs = [np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:]))) for x in model.example_inputs]


# ---------------------------------------------------------------------------- onnx


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


def _load_onnx(path: Path, spec: str, shapes: list[tuple[int, ...]] | None) -> LoadedModel:
    import onnx

    try:
        proto = onnx.load(str(path))
    except Exception as exc:
        raise ModelError(f"cannot read ONNX file {path}: {_first_line(exc)}", "is it a complete .onnx file?") from exc
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise ModelError(f"ONNX file {path} fails the ONNX checker: {_first_line(exc)}") from exc
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
    example = [_random_array(rng, shape, dtype) for (_, dtype, _), shape in zip(inputs, final)]
    return LoadedModel(
        name=path.stem,
        spec=spec,
        input_names=[n for n, _, _ in inputs],
        example_inputs=example,
        output_names=[o.name for o in proto.graph.output],
        onnx_path=path.resolve(),
        notes=["ONNX model: not prunable (no PyTorch module)", _SYNTHETIC_NOTE],
        meta={"format": "onnx", "opset": next((i.version for i in proto.opset_import if i.domain in ("", "ai.onnx")), None)},
    )


_SYNTHETIC_NOTE = "example inputs are synthetic (seeded random); pass --data for real inputs and accuracy"


def _random_array(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Seeded example input. Integer inputs get small non-negative values (often ids or
    indices, which must be in range); floats are standard normal."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind in "iu":
        return rng.integers(0, 10, size=shape).astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    raise ModelError(f"cannot make an example input of dtype {dtype}")


# --------------------------------------------------------------------- torch files


def _zip_members(path: Path) -> list[str] | None:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return None


def _sniff_torch(path: Path) -> str:
    """What a torch file really is: 'torchscript', 'exported', 'pickle' or 'unknown'."""
    members = _zip_members(path)
    if members is not None:
        tails = {m.split("/", 1)[-1] for m in members}
        if "constants.pkl" in tails or any(t.startswith("code/") for t in tails):
            return "torchscript"
        if "archive_format" in tails or any(t.startswith("models/") for t in tails):
            return "exported"
        if "data.pkl" in tails:
            return "pickle"
        return "unknown"
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror or exc}") from exc
    return "pickle" if head[:1] == b"\x80" else "unknown"  # legacy torch.save = raw pickle


def _load_torch_file(
    path: Path, spec: str, shapes: list[tuple[int, ...]] | None, allow_pickle: bool, data: Path | None
) -> LoadedModel:
    kind = _sniff_torch(path)
    if kind == "exported":
        return _load_exported(path, spec, shapes)
    if kind == "torchscript":
        import torch

        try:
            with warnings.catch_warnings():  # "torch.jit.load is deprecated": the user chose the format
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ModelError(f"cannot load TorchScript file {path}: {_first_line(exc)}", "is the file complete?") from exc
        return _from_module(module.eval(), path.stem, spec, shapes, data, "TorchScript", ["TorchScript model"])
    if kind == "pickle":
        return _load_pickle(path, spec, shapes, allow_pickle, data)
    raise ModelError(
        f"cannot read model file {path}: not ONNX, TorchScript, torch.export or torch.save data (corrupt or unknown format)",
        f"give one of: {SPEC_FORMS}",
    )


@functools.cache
def _exported_wrapper_cls():
    import torch

    class ExportedProgramModule(torch.nn.Module):
        """Wraps ``ExportedProgram.module()`` so it behaves like any module here.

        An exported program is a frozen graph: its train/eval behaviour was fixed at
        export time and its GraphModule refuses ``.train()``/``.eval()``, which
        ``torch.onnx.export`` and evaluation call. This wrapper accepts both and
        leaves the graph alone. Not prunable.
        """

        def __init__(self, program: torch.nn.Module, input_names: list[str]) -> None:
            super().__init__()
            self.program = program
            self.input_names = input_names

        def forward(self, *args: torch.Tensor):
            return self.program(*args)

        def train(self, mode: bool = True):  # noqa: D102 - see class docstring
            self.training = mode
            return self

    return ExportedProgramModule


def _load_exported(path: Path, spec: str, shapes: list[tuple[int, ...]] | None) -> LoadedModel:
    import torch

    try:
        with open(path, "rb") as f:  # a buffer: torch.export.load insists on the .pt2 suffix for paths
            ep = torch.export.load(f)
    except Exception as exc:
        raise ModelError(f"cannot load torch.export file {path}: {_first_line(exc)}", "is the file complete?") from exc
    names = [str(n) for n in ep.graph_signature.user_inputs]
    if shapes is not None:
        if len(shapes) != len(names):
            raise ModelError(f"torch.export file {path} takes {len(names)} inputs ({', '.join(names)}) "
                             f"but {len(shapes)} --input-shape values were given")
        vals = {n.name: n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder"}
        dtypes = [_np_dtype(getattr(vals.get(n), "dtype", torch.float32)) for n in names]
        rng = np.random.default_rng(EXAMPLE_SEED)
        example = [_random_array(rng, s, d) for s, d in zip(shapes, dtypes)]
    else:
        args, kwargs = ep.example_inputs or ((), {})
        if kwargs:
            raise ModelError(f"torch.export file {path} takes keyword inputs ({', '.join(kwargs)}); only positional tensors are supported")
        if args and all(isinstance(a, torch.Tensor) for a in args) and len(args) == len(names):
            example = [a.detach().cpu().numpy().copy() for a in args]
        else:
            raise ModelError(f"torch.export file {path} has no saved tensor example inputs", "pass --input-shape once per input")
    module = _exported_wrapper_cls()(ep.module(), names)
    notes = ["torch.export ExportedProgram: a frozen graph, not prunable"]
    notes.append(_SYNTHETIC_NOTE if shapes is not None else "example input: the sample input saved in the .pt2 file")
    return _from_module(module, path.stem, spec, shapes, None, "torch.export", notes, names=names, example=example)


def _np_dtype(torch_dtype) -> np.dtype:
    import torch

    return torch.empty((), dtype=torch_dtype).numpy().dtype


def _load_pickle(
    path: Path, spec: str, shapes: list[tuple[int, ...]] | None, allow_pickle: bool, data: Path | None
) -> LoadedModel:
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True)
        only_weights = True
    except Exception:
        only_weights = False
    if only_weights:
        raise ModelError(
            f"{path} holds only weights (tensors / a state_dict), not a model",
            f"pass the architecture as --model pkg.module:factory --weights {path}",
        )
    if not allow_pickle:
        raise ModelError(
            f"{path} is a pickled Python object (torch.save of a whole model); unpickling it executes arbitrary code from the file",
            f"re-save it as {SAFE_FORMATS}, or pass --allow-pickle if you trust the file",
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelError(
            f"cannot unpickle {path}: {_first_line(exc)}", "the classes it refers to must be importable here"
        ) from exc
    if not isinstance(obj, torch.nn.Module):
        raise ModelError(f"{path} unpickles to a {type(obj).__name__}, not a torch.nn.Module")
    return _from_module(obj.eval(), path.stem, spec, shapes, data, "pickle", ["loaded by unpickling (--allow-pickle)"])


# ------------------------------------------------------------------------- factory


def _load_factory(spec: str, weights: Path | None, shapes: list[tuple[int, ...]] | None, data: Path | None) -> LoadedModel:
    import torch

    mod_name, attr = spec.split(":", 1)
    added = False
    if "" not in sys.path and str(Path.cwd()) not in sys.path:  # let users name modules next to them
        sys.path.insert(0, str(Path.cwd()))
        added = True
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        if exc.name and mod_name.startswith(exc.name):
            raise ModelError(
                f"cannot import module '{mod_name}' for model spec '{spec}'",
                "run from the directory that contains it, install it, or add it to PYTHONPATH",
            ) from exc
        raise ModelError(f"importing '{mod_name}' failed: {_first_line(exc)}") from exc
    except Exception as exc:
        raise ModelError(f"importing '{mod_name}' failed: {type(exc).__name__}: {_first_line(exc)}") from exc
    finally:
        if added:
            sys.path.remove(str(Path.cwd()))
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"module '{mod_name}' has no attribute '{attr}'", "spec form is pkg.module:factory")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelError(f"'{spec}' is not callable; it must be a function or class returning an nn.Module")
    try:
        module = obj()
    except Exception as exc:
        raise ModelError(f"calling factory '{spec}' failed: {type(exc).__name__}: {_first_line(exc)}",
                         "the factory must take no required arguments") from exc
    if not isinstance(module, torch.nn.Module):
        raise ModelError(f"factory '{spec}' returned a {type(module).__name__}, not a torch.nn.Module")
    notes = ["PyTorch module from a factory"]
    if weights is not None:
        _load_state_dict(module, weights, spec)
        notes.append(f"weights from {weights}")
    else:
        notes.append("no --weights given: the factory's own initial weights are used")
    return _from_module(module.eval(), attr.split(".")[-1], spec, shapes, data, "factory", notes)


def _load_state_dict(module: "torch.nn.Module", path: Path, what: str) -> None:
    """Load a weights-only ``state_dict`` file into ``module``; every key and shape must fit."""
    import torch

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if "weights only load failed" in str(exc).lower():
            raise ModelError(
                f"weights file {path} is not a plain state_dict: reading it would unpickle arbitrary objects",
                "save it with torch.save(model.state_dict(), PATH)",
            ) from exc
        raise ModelError(f"cannot read weights file {path}: {_first_line(exc)}", "is it a torch.save file?") from exc
    if isinstance(sd, Mapping) and isinstance(sd.get("state_dict"), Mapping):
        sd = sd["state_dict"]  # common checkpoint layout {"state_dict": ..., "epoch": ...}
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelError(f"weights file {path} does not hold a state_dict (a mapping of names to tensors)")
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if k in sd and sd[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches {_few(mismatched)}")
    if problems:
        raise ModelError(f"weights {path} do not fit {what}: {'; '.join(problems)}",
                         "the state_dict must come from the same architecture")
    module.load_state_dict(sd, strict=True)


def _few(items: list[str], n: int = 3) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


# --------------------------------------------------------------- shared for torch


def _declared_shapes(module: Any) -> list[tuple[int, ...]] | None:
    """The module's own ``example_input_shape``: one shape, or a list of shapes."""
    declared = getattr(module, "example_input_shape", None)
    if not declared:
        return None
    try:
        if all(isinstance(d, int) for d in declared):
            return [tuple(int(d) for d in declared)]
        return [tuple(int(d) for d in s) for s in declared]
    except TypeError:
        return None


def _input_names(module: Any, n: int) -> list[str]:
    """Names of ``forward``'s positional parameters when they line up, else input/input0.."""
    names: list[str] = []
    try:
        if hasattr(module, "forward") and hasattr(module.forward, "schema"):  # TorchScript
            names = [a.name for a in module.forward.schema.arguments[1:]]
        else:
            params = inspect.signature(module.forward).parameters.values()
            names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        names = []
    if len(names) == n and len(set(names)) == n and all(x.isidentifier() for x in names):
        return names
    return ["input"] if n == 1 else [f"input{i}" for i in range(n)]


def _from_module(
    module: "torch.nn.Module",
    name: str,
    spec: str,
    shapes: list[tuple[int, ...]] | None,
    data: Path | None,
    fmt: str,
    notes: list[str],
    *,
    names: list[str] | None = None,
    example: list[np.ndarray] | None = None,
) -> LoadedModel:
    """Example inputs for a torch module, then one forward pass to prove they fit."""
    import torch

    if example is None:
        shapes = shapes or _declared_shapes(module)
        if shapes is None and data is None:
            raise ModelError(
                f"input shape of {spec} is unknown",
                "pass --input-shape (e.g. 1x3x224x224, once per input), set example_input_shape on the module, or give --data",
            )
        if shapes is None:  # batch 1 of the user's data; _attach_data swaps in the real rows
            from edgeprune.models.data import load_npz_data

            x = load_npz_data(data).val.inputs[0]  # type: ignore[arg-type]
            example = [np.ascontiguousarray(x[:1])]
            notes.append("deployment batch 1 assumed (pass --input-shape to change it)")
        else:
            rng = np.random.default_rng(EXAMPLE_SEED)
            example = [rng.standard_normal(s).astype(np.float32) for s in shapes]
            notes.append(_SYNTHETIC_NOTE)
    names = names or _input_names(module, len(example))
    try:
        with torch.no_grad():
            module(*[torch.from_numpy(x) for x in example])
    except Exception as exc:
        shape_txt = ", ".join("x".join(map(str, x.shape)) for x in example)
        raise ModelError(f"{spec} fails on example input of shape {shape_txt}: {type(exc).__name__}: {_first_line(exc)}",
                         "check --input-shape (once per input, batch first)") from exc
    return LoadedModel(name=name, spec=spec, input_names=names, example_inputs=example, output_names=["output"],
                       module=module, notes=notes, meta={"format": fmt})


# ---------------------------------------------------------------------------- data


def _attach_data(model: LoadedModel, path: Path) -> None:
    """Replace the model's data with the user's ``.npz`` and take example inputs from it."""
    from edgeprune.models.data import load_npz_data

    task = model.data.task if model.data is not None else None
    data = load_npz_data(path, task=task)
    if len(model.example_inputs) != 1:
        raise ModelError(f"--data {path} holds one input array but {model.spec} takes {len(model.example_inputs)} inputs")
    want = model.example_inputs[0]
    got = data.val.inputs[0]
    if got.shape[1:] != want.shape[1:]:
        raise ModelError(
            f"--data {path}: samples have shape {got.shape[1:]} but {model.spec} takes {want.shape[1:]} per sample"
        )
    if (want.dtype.kind == "f") != (got.dtype.kind == "f"):
        raise ModelError(f"--data {path}: inputs are {got.dtype} but {model.spec} takes {want.dtype}")
    for split in (data.train, data.val):
        split.inputs = [np.ascontiguousarray(x, dtype=want.dtype) for x in split.inputs]
    batch = want.shape[0]
    if len(data.val) >= batch:
        model.example_inputs = [np.ascontiguousarray(data.val.inputs[0][:batch])]
        model.notes = [n for n in model.notes if n != _SYNTHETIC_NOTE]
        model.notes.append(f"example input: the first {batch} validation sample(s) of {path}")
    model.data = data
    model.notes.append(f"data: {data.description}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
