"""The bundle's arrays (npz files of ``in0, in1, ...`` / ``out0, ...``), checked against
what the artifact says it takes, so a mismatch fails with a sentence, not a runtime's
C++ error."""

from __future__ import annotations

import os

from .errors import JobError, one_line


def load_arrays(np, path: str, prefix: str) -> list:
    """Arrays ``<prefix>0, <prefix>1, ...`` of an npz file, in index order."""
    try:
        with np.load(path) as data:
            names = sorted((k for k in data.files if k.startswith(prefix) and k[len(prefix):].isdigit()),
                           key=lambda k: int(k[len(prefix):]))
            return [data[k] for k in names]
    except (OSError, ValueError) as exc:
        raise JobError("cannot read %s: %s" % (os.path.basename(path), one_line(exc)))


def check_inputs(np, model, arrays: list) -> list:
    """Cast to the artifact's input dtypes and fail clearly on count/shape mismatches."""
    specs = model.input_specs
    if specs is None:
        return [np.ascontiguousarray(a) for a in arrays]
    if len(specs) != len(arrays):
        raise JobError("artifact expects %d input(s) %s but the bundle has %d"
                       % (len(specs), [s[0] for s in specs], len(arrays)))
    out = []
    for (name, shape, dtype), a in zip(specs, arrays):
        if shape is not None:
            ok = len(shape) == a.ndim and all(s is None or s == d for s, d in zip(shape, a.shape))
            if not ok:
                raise JobError("input '%s' has shape %s but the artifact expects %s"
                               % (name, list(a.shape), ["?" if s is None else s for s in shape]))
        if dtype is not None and a.dtype != np.dtype(dtype):
            a = a.astype(dtype)
        out.append(np.ascontiguousarray(a))
    return out
