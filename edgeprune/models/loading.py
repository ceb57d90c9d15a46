"""What every model loader shares: the spec forms errors name, seeded example inputs,
one-line error text.

Loaders (:mod:`.spec` for the dispatch and the zoo, :mod:`.onnx_file`, :mod:`.torch_files`)
make example inputs the same way so a model's synthetic inputs do not depend on which
loader read it: seed :data:`EXAMPLE_SEED`, and a note on the model saying they are
synthetic (:data:`SYNTHETIC_NOTE`, removed when ``--data`` supplies real ones).
"""

from __future__ import annotations

import numpy as np

from edgeprune.errors import ModelError

EXAMPLE_SEED = 0
SAFE_FORMATS = "a state_dict + module:factory, TorchScript (torch.jit.save), torch.export (.pt2) or ONNX"
SPEC_FORMS = "zoo:NAME, FILE.onnx, pkg.module:factory, FILE.pt/.pth/.ts (TorchScript) or FILE.pt2 (torch.export)"
SYNTHETIC_NOTE = "example inputs are synthetic (seeded random); pass --data for real inputs and accuracy"


def random_array(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
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


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters) for a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
