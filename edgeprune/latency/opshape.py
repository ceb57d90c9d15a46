"""The signature grammar of the non-prunable ops a device model also predicts.

A model pays for more than its convs and linears: residual adds, pooling, concat,
attention's matmul + softmax, squeeze-excitation gates, activations that ONNX Runtime
does not fuse. The calibration suite measures these as standalone graphs
(:mod:`edgeprune.latency.ops` builds them) and stores them in the same tables as layer
points, keyed by :meth:`OpShape.signature`, so the signature must be exact and
parseable back (:meth:`OpShape.from_signature`): the device model reads its features
off the string, never off a side table.

Grammar: ``op-<name>-s<d0>x<d1>x...[-<key><int>]...``, e.g. ``op-add-s1x64x28x28``,
``op-maxpool-s1x64x56x56-k3-st2``, ``op-concat-s1x64x28x28-n2``,
``op-attention-s1x4x49x32``. ``shape`` is the (first) input's shape; ``params`` are the
op's integer parameters in a fixed order per op (:data:`OP_PARAMS`), so one op shape has
exactly one signature.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

#: every op name, and the integer parameters its signature carries, in signature order:
#: ``k`` kernel (square), ``st`` stride, ``p`` padding (pools; written only when not 0,
#: so ``op-maxpool-s1x64x56x56-k3-st2`` is the unpadded pool), ``n`` number of
#: concatenated inputs. Transpose needs no ``perm``: it always swaps the last two axes
#: (the case attention-style models and channel shuffles pay for).
OP_PARAMS: dict[str, tuple[str, ...]] = {
    "add": (),          # x + y, two inputs of ``shape``
    "mul": (),          # x * y, two inputs of ``shape``
    "relu": (),
    "sigmoid": (),
    "hardswish": (),
    "softmax": (),      # over the last axis
    "gap": (),          # global average pool over the spatial axes of [N, C, H, W]
    "mulgate": (),      # x[N,C,H,W] * sigmoid(g[N,C,1,1]): squeeze-excitation scale
    "maxpool": ("k", "st", "p"),
    "avgpool": ("k", "st", "p"),
    "concat": ("n",),   # n inputs of ``shape`` concatenated on axis 1
    "attention": (),    # [B, heads, tokens, dim]: softmax(Q @ K^T) @ V
    "transpose": (),    # swap the last two axes
    "reshape": (),      # flatten everything after axis 0 (a copy-free op, still dispatched)
}
OP_NAMES: tuple[str, ...] = tuple(OP_PARAMS)
#: parameters left out of the signature at this value (and their value when absent)
_OPTIONAL = {"p": 0}
_DEFAULTS = {"k": 1, "st": 1, "p": 0, "n": 2}

_SIG = re.compile(r"^op-([a-z]+)-s(\d+(?:x\d+)*)((?:-[a-z]+\d+)*)$")
_PARAM = re.compile(r"-([a-z]+)(\d+)")


@dataclass(frozen=True)
class OpShape:
    """One non-prunable op at one shape. ``shape`` is its (first) input; ``params`` its
    integer parameters (see :data:`OP_PARAMS`), normalised to the op's order, so two
    equal ops compare and hash equal and have one signature."""

    name: str
    shape: tuple[int, ...]
    params: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if self.name not in OP_PARAMS:
            raise ValueError(f"unknown op {self.name!r} (known: {', '.join(OP_NAMES)})")
        if not self.shape or any(int(d) <= 0 for d in self.shape):
            raise ValueError(f"op {self.name}: shape must be non-empty positive dims, got {self.shape}")
        given = dict(self.params)
        keys = OP_PARAMS[self.name]
        if set(given) - set(keys):
            raise ValueError(f"op {self.name}: unknown params {sorted(set(given) - set(keys))} (takes {keys})")
        ordered = tuple((k, int(given.get(k, _DEFAULTS[k]))) for k in keys)
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        object.__setattr__(self, "params", ordered)
        if self.name in ("gap", "mulgate", "maxpool", "avgpool") and len(self.shape) != 4:
            raise ValueError(f"op {self.name}: shape must be [N, C, H, W], got {self.shape}")
        if self.name == "attention" and len(self.shape) != 4:
            raise ValueError(f"op attention: shape must be [batch, heads, tokens, dim], got {self.shape}")
        if self.name == "transpose" and len(self.shape) < 2:
            raise ValueError("op transpose: needs at least two axes")

    def param(self, key: str) -> int:
        return dict(self.params)[key]

    def signature(self) -> str:
        parts = ["op", self.name, "s" + "x".join(str(d) for d in self.shape)]
        parts += [f"{k}{v}" for k, v in self.params if _OPTIONAL.get(k) != v]
        return "-".join(parts)

    @classmethod
    def from_signature(cls, sig: str) -> "OpShape | None":
        """The inverse of :meth:`signature`; None for anything that is not an op
        signature of a known op (a layer signature, a typo, an op from a newer suite)."""
        m = _SIG.match(sig)
        if not m or m.group(1) not in OP_PARAMS:
            return None
        params = tuple((k, int(v)) for k, v in _PARAM.findall(m.group(3)))
        try:
            op = cls(m.group(1), tuple(int(d) for d in m.group(2).split("x")), params)
        except ValueError:
            return None
        return op if op.signature() == sig else None

    # -- cost ---------------------------------------------------------------------------
    def _out_hw(self) -> tuple[int, int]:
        _, _, h, w = self.shape
        k, st, p = self.param("k"), self.param("st"), self.param("p")
        return (h + 2 * p - k) // st + 1, (w + 2 * p - k) // st + 1

    @property
    def elements_in(self) -> int:
        """Elements read: every input tensor (add/mul: two of ``shape``; concat: ``n``;
        mulgate: x plus the [N, C] gate; attention: Q, K and V)."""
        n = math.prod(self.shape)
        if self.name in ("add", "mul"):
            return 2 * n
        if self.name == "concat":
            return self.param("n") * n
        if self.name == "mulgate":
            return n + self.shape[0] * self.shape[1]
        if self.name == "attention":
            return 3 * n
        return n

    @property
    def elements_out(self) -> int:
        """Elements written: gap [N, C]; pools [N, C, oh, ow]; concat ``n`` x; attention
        [B, heads, tokens, dim]; everything else the input's size."""
        n = math.prod(self.shape)
        if self.name == "gap":
            return self.shape[0] * self.shape[1]
        if self.name in ("maxpool", "avgpool"):
            oh, ow = self._out_hw()
            return self.shape[0] * self.shape[1] * max(oh, 0) * max(ow, 0)
        if self.name == "concat":
            return self.param("n") * n
        return n

    @property
    def flops(self) -> int:
        """Arithmetic operations, counted the usual way: one per output element for
        add/mul/relu/mulgate's multiply; sigmoid ~4 (exp, add, divide, negate); hardswish
        ~4; softmax ~5 per element (max, sub, exp, sum, divide); pools k*k per output;
        gap one per input; attention 2*t*t*d twice (two matmuls, multiply-add = 2) plus
        the softmax's 5*t*t per head; concat/transpose/reshape 0 (pure data movement)."""
        n = math.prod(self.shape)
        name = self.name
        if name in ("add", "mul", "relu"):
            return n
        if name in ("sigmoid", "hardswish"):
            return 4 * n
        if name == "softmax":
            return 5 * n
        if name == "mulgate":
            return n + 4 * self.shape[0] * self.shape[1]
        if name == "gap":
            return n
        if name in ("maxpool", "avgpool"):
            return self.elements_out * self.param("k") ** 2
        if name == "attention":
            b, h, t, d = self.shape
            return b * h * (4 * t * t * d + 5 * t * t)
        return 0
