"""Are the reference outputs on synthetic inputs worth comparing against?

A model loaded without data (an ONNX file, a zoo model without its data, a factory)
is verified on seeded N(0,1) inputs. Real images are normalised into a narrow band;
N(0,1) noise is not, and a classic net can overflow on it (NaN / Inf) or saturate its
softmax (one class at 1.0 for every input: SqueezeNet 1.0 does). On such outputs parity
is not meaningful: two correct compilers that round differently flip which class reaches
1.0, and a difference of 0.1 says nothing about the artifact. So the reference outputs
are checked once, when they are taken (:func:`check_synthetic`, called by ``prepare``),
and a finding becomes a note and a hint ("pass --data") in the summary instead of a
parity verdict the user would have to decode.

Three findings, most serious first: non-finite outputs, a saturated softmax (rows of
probabilities whose maximum is >= 1 - 1e-6 for most samples), and outputs that are the
same for every synthetic input. For the last two the check times the reference on a few
extra seeded draws (cheap: a handful of inferences next to minutes of building), because
one sample cannot show that outputs do not vary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: a probability at or above this is saturated (float32 cannot tell it from 1.0 in a sum)
SATURATED_P = 1 - 1e-6
#: fraction of samples that must be saturated for the output to count as saturated
SATURATED_FRACTION = 0.5
#: extra seeded N(0,1) draws the reference runs on (besides the example inputs)
EXTRA_DRAWS = 4
DRAW_SEED = 20260418

#: what the user is told to do about it (the CLI option that gives real inputs)
FIX = "pass --data FILE.npz with real samples"


@dataclass(frozen=True)
class InputCheck:
    """A finding about the reference outputs on synthetic inputs."""

    kind: str  # "non-finite" | "saturated" | "constant"
    output: str  # the output's name
    detail: str  # what was seen, in a few words

    @property
    def verb(self) -> str:
        return "overflowed" if self.kind == "non-finite" else "saturated"

    def note(self) -> str:
        return f"synthetic inputs {self.verb} the model: {self.detail}"

    def hint(self) -> str:
        return (f"inputs: the synthetic N(0,1) inputs {self.verb} the model ({self.kind} output '{self.output}'): "
                f"parity on them is not meaningful; {FIX}")

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "output": self.output, "detail": self.detail}


def _is_probabilities(rows: np.ndarray) -> bool:
    """Rows that look like a softmax: in [0, 1] and summing to 1."""
    if rows.shape[-1] < 2 or not np.all(np.isfinite(rows)):
        return False
    if rows.min() < -1e-6 or rows.max() > 1 + 1e-6:
        return False
    return bool(np.all(np.abs(rows.sum(axis=-1) - 1.0) < 1e-3))


def findings(draws: list[list[np.ndarray]], names: list[str]) -> InputCheck | None:
    """The first finding on ``draws`` (one list of outputs per input draw), or None."""
    n_outputs = len(draws[0]) if draws else 0
    for j in range(n_outputs):
        name = names[j] if j < len(names) else f"#{j}"
        outs = [np.asarray(d[j]) for d in draws]
        if not all(np.issubdtype(o.dtype, np.floating) for o in outs):
            continue
        bad = sum(int(not np.all(np.isfinite(o))) for o in outs)
        if bad:
            return InputCheck("non-finite", name, f"output '{name}' has NaN or Inf for {bad} of {len(outs)} "
                                                  "synthetic inputs")
    for j in range(n_outputs):
        name = names[j] if j < len(names) else f"#{j}"
        outs = [np.asarray(d[j], dtype=np.float64) for d in draws]
        if any(o.ndim == 0 or o.size == 0 for o in outs):
            continue
        rows = np.concatenate([o.reshape(-1, o.shape[-1]) for o in outs])
        if _is_probabilities(rows):
            sat = int(np.sum(rows.max(axis=-1) >= SATURATED_P))
            if sat > SATURATED_FRACTION * len(rows):
                return InputCheck("saturated", name, f"softmax output '{name}' reaches >= 1-1e-6 for {sat} of "
                                                     f"{len(rows)} synthetic samples")
    if len(draws) > 1:
        for j in range(n_outputs):
            name = names[j] if j < len(names) else f"#{j}"
            outs = [np.asarray(d[j], dtype=np.float64) for d in draws]
            if any(o.shape != outs[0].shape or o.size == 0 for o in outs):
                continue
            scale = max(1.0, float(np.max(np.abs(outs[0]))))
            if all(float(np.max(np.abs(o - outs[0]))) <= 1e-6 * scale for o in outs[1:]):
                return InputCheck("constant", name, f"output '{name}' is the same for all {len(outs)} "
                                                    "synthetic inputs")
    return None


def synthetic_draws(example: list[np.ndarray], n: int = EXTRA_DRAWS, seed: int = DRAW_SEED
                    ) -> list[list[np.ndarray]]:
    """``n`` seeded N(0,1) input sets shaped like ``example`` (none if an input is not
    floating point: integer ids have no N(0,1) stand-in)."""
    if not all(np.issubdtype(x.dtype, np.floating) for x in example):
        return []
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(x.shape).astype(x.dtype) for x in example] for _ in range(n)]


def check_synthetic(has_data: bool, example: list[np.ndarray], expected: list[np.ndarray], names: list[str],
                    run: Callable[[list[np.ndarray]], list[np.ndarray]]) -> InputCheck | None:
    """Check the reference outputs ``expected`` (on ``example``) of a model without data.

    ``run`` computes the reference outputs of other inputs (PyTorch, or ONNX Runtime for
    an ONNX-only model). A model with data (``has_data``) is verified on real samples:
    nothing to check, nothing run.
    """
    if has_data:
        return None
    return findings([list(expected)] + [run(xs) for xs in synthetic_draws(example)], names)
