"""PyTorch models -> :class:`LoadedModel`: TorchScript, torch.export, pickled modules
(only when allowed), ``pkg.module:factory`` callables and ``state_dict`` weights.

Torch files are recognised by their content (zip members), not only by their extension,
so an error says what the file really is. A fully pickled ``nn.Module`` is refused unless
``allow_pickle=True``: unpickling runs arbitrary code from the file. Every module gets
example inputs and one forward pass that proves they fit (:func:`from_module`).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeprune.errors import ModelError
from edgeprune.models.base import LoadedModel
from edgeprune.models.loading import EXAMPLE_SEED, SAFE_FORMATS, SPEC_FORMS, SYNTHETIC_NOTE, first_line, random_array

if TYPE_CHECKING:
    import torch


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


def load_torch_file(
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
            raise ModelError(f"cannot load TorchScript file {path}: {first_line(exc)}", "is the file complete?") from exc
        return from_module(module.eval(), path.stem, spec, shapes, data, "TorchScript", ["TorchScript model"])
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
        raise ModelError(f"cannot load torch.export file {path}: {first_line(exc)}", "is the file complete?") from exc
    names = [str(n) for n in ep.graph_signature.user_inputs]
    if shapes is not None:
        if len(shapes) != len(names):
            raise ModelError(f"torch.export file {path} takes {len(names)} inputs ({', '.join(names)}) "
                             f"but {len(shapes)} --input-shape values were given")
        vals = {n.name: n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder"}
        dtypes = [_np_dtype(getattr(vals.get(n), "dtype", torch.float32)) for n in names]
        rng = np.random.default_rng(EXAMPLE_SEED)
        example = [random_array(rng, s, d) for s, d in zip(shapes, dtypes)]
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
    notes.append(SYNTHETIC_NOTE if shapes is not None else "example input: the sample input saved in the .pt2 file")
    return from_module(module, path.stem, spec, shapes, None, "torch.export", notes, names=names, example=example)


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
            f"cannot unpickle {path}: {first_line(exc)}", "the classes it refers to must be importable here"
        ) from exc
    if not isinstance(obj, torch.nn.Module):
        raise ModelError(f"{path} unpickles to a {type(obj).__name__}, not a torch.nn.Module")
    return from_module(obj.eval(), path.stem, spec, shapes, data, "pickle", ["loaded by unpickling (--allow-pickle)"])


def load_factory(spec: str, weights: Path | None, shapes: list[tuple[int, ...]] | None, data: Path | None) -> LoadedModel:
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
        raise ModelError(f"importing '{mod_name}' failed: {first_line(exc)}") from exc
    except Exception as exc:
        raise ModelError(f"importing '{mod_name}' failed: {type(exc).__name__}: {first_line(exc)}") from exc
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
        raise ModelError(f"calling factory '{spec}' failed: {type(exc).__name__}: {first_line(exc)}",
                         "the factory must take no required arguments") from exc
    if not isinstance(module, torch.nn.Module):
        raise ModelError(f"factory '{spec}' returned a {type(module).__name__}, not a torch.nn.Module")
    notes = ["PyTorch module from a factory"]
    if weights is not None:
        load_state_dict(module, weights, spec)
        notes.append(f"weights from {weights}")
    else:
        notes.append("no --weights given: the factory's own initial weights are used")
    return from_module(module.eval(), attr.split(".")[-1], spec, shapes, data, "factory", notes)


def load_state_dict(module: "torch.nn.Module", path: Path, what: str) -> None:
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
        raise ModelError(f"cannot read weights file {path}: {first_line(exc)}", "is it a torch.save file?") from exc
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


def from_module(
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
            notes.append(SYNTHETIC_NOTE)
    names = names or _input_names(module, len(example))
    try:
        with torch.no_grad():
            module(*[torch.from_numpy(x) for x in example])
    except Exception as exc:
        shape_txt = ", ".join("x".join(map(str, x.shape)) for x in example)
        raise ModelError(f"{spec} fails on example input of shape {shape_txt}: {type(exc).__name__}: {first_line(exc)}",
                         "check --input-shape (once per input, batch first)") from exc
    return LoadedModel(name=name, spec=spec, input_names=names, example_inputs=example, output_names=["output"],
                       module=module, notes=notes, meta={"format": fmt})
