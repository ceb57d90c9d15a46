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
is wrong, plus a hint. This module dispatches on the spec and owns the zoo and ``--data``
parts; :mod:`.onnx_file` and :mod:`.torch_files` read the files.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edgeprune.errors import ModelError
from edgeprune.models.base import LoadedModel
from edgeprune.models.loading import SPEC_FORMS, SYNTHETIC_NOTE
from edgeprune.models.onnx_file import load_onnx
from edgeprune.models.torch_files import load_factory, load_state_dict, load_torch_file

Log = Callable[[str], None]
Shapes = Sequence[tuple[int, ...]]

ONNX_SUFFIXES = {".onnx"}
TORCH_SUFFIXES = {".pt", ".pth", ".ts", ".pt2"}
FACTORY_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


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
            model = load_onnx(path, spec, shapes)
        else:
            model = load_torch_file(path, spec, shapes, allow_pickle, data)
    elif FACTORY_RE.match(spec):
        model = load_factory(spec, weights, shapes, data)
    elif path.suffix.lower() in ONNX_SUFFIXES | TORCH_SUFFIXES:
        raise ModelError(f"model file {path} does not exist")
    else:
        raise ModelError(f"cannot interpret model spec '{spec}'", f"give one of: {SPEC_FORMS}")

    if data is not None:
        _attach_data(model, Path(data))
    return model


def _load_zoo(name: str, weights: Path | None, shapes: list[tuple[int, ...]] | None, log: Log) -> LoadedModel:
    from edgeprune.models.zoo import load_zoo

    model = load_zoo(name, log=log, trained=weights is None)
    if weights is not None:
        assert model.module is not None
        load_state_dict(model.module, weights, f"zoo:{name}")
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
        model.notes = [n for n in model.notes if n != SYNTHETIC_NOTE]
        model.notes.append(f"example input: the first {batch} validation sample(s) of {path}")
    model.data = data
    model.notes.append(f"data: {data.description}")
