"""The calibration suite: generic layer and op shapes a device model is fitted on, in
the order they are worth measuring.

Why a suite: a per-model table measures the layers of one model; a device model must
predict layers of models it has never seen, so it is fitted on shapes that span what
CNNs, transformers and RNNs for 224-, 96- and 64-pixel inputs contain. The suite is
generic (nothing of a particular model) and the same on every device of a target, so
the device model of one board can be compared with another's.

What it holds (``size="full"``), for a target with ``lanes`` fp32 SIMD lanes:

* convs of kernel 1/3/5/7, stride 1/2, dense, grouped (8, 16 and 32 channels per group)
  and depthwise, at spatial sizes 4..112 (and the 224 / 96 / 64 stems), with channel
  counts on the SIMD lattice (multiples of ``lanes``) and off it (``lanes`` +- 1,
  ``lanes/2`` offsets, odd counts);
* *channel sweeps*: one width stepped by 1 through several lane multiples at fixed other
  dims, so the regressor sees the staircase (latency vs width steps at lane multiples),
  which smooth regressors are blind to and pruning lives on;
* linear layers (Gemm) with batch rows 1..32 and token rows (tokens x batch) 16 / 49 /
  64 / 128 / 197 / 256, widths up to 4096 (a transformer's q/k/v/out projections and its
  FFN); LSTM / GRU (one direction) at a few sequence / batch / hidden sizes;
* the prunable attention core (``PrunableLayer`` kind ``attention``: head split, q k^T,
  scale, softmax, p v, head merge) at 1..16 heads of head_dim 16 / 32 / 64 and 16..256
  tokens, batch 1 and 4: what a head-pruned transformer's table asks for;
* the cheap ops a model pays besides (:mod:`edgeprune.latency.opshape`): elementwise
  add, the squeeze-excitation gate, activations, pooling, global pooling, concat,
  softmax, attention's matmul + softmax, transpose and reshape.

Shapes whose one inference costs more than :data:`MAX_MACS` are left out: on an edge CPU
one such point takes seconds, and the regressor extrapolates along its MAC baseline.

Priority: every point has a *tier* (0: a coarse skeleton of every op kind; 1: the
staircase sweeps, off-lattice widths and the common shapes' neighbours; 2: density;
3: rarer shapes). :func:`suite_points` returns tier 0 first and, within a tier, takes
one point of each family in turn, so a build stopped by its time budget has the most
useful points and every op kind.

Held-out set (:func:`is_holdout`): whole shape configurations, never random points, so
the holdout error is the error on a shape *configuration* the model never saw: convs of
(kernel, stride, input size) in :data:`HOLDOUT_CONV` and every conv and op at spatial
size :data:`HOLDOUT_HW`; linear layers with :data:`HOLDOUT_ROWS` rows; RNNs with
:data:`HOLDOUT_HIDDEN` hidden units; attention with :data:`HOLDOUT_TOKENS` tokens. It
is read off the signature, so a model's own points in the same table that fall into
one of these configurations are held out too. It is used only to *report* error: the
device model itself is fitted on every point.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from edgeprune.latency.layer_bundle import Job, layer_job
from edgeprune.latency.lut import Point
from edgeprune.latency.opshape import OpShape
from edgeprune.latency.ops import op_job, op_macs
from edgeprune.prune.space import LayerKind, PrunableLayer

#: bump when the suite's shapes change: a device model built with another version is
#: completed (points are keyed by signature, so every shared point is kept)
SUITE_VERSION = "2"  # 2: the prunable attention core, token rows up to 256
SIZES = ("full", "tiny")
#: no suite point costs more than this per inference (~50 ms on this host, ~0.3 s on a Pi 4)
MAX_MACS = 1.0e9
#: a linear layer's weights stay below this many parameters (64 MB of fp32 per artifact)
MAX_PARAMS = 4.2e6

HOLDOUT_CONV = frozenset({(3, 1, 14), (1, 1, 28), (3, 2, 56), (5, 1, 14)})
HOLDOUT_HW = 24
HOLDOUT_ROWS = 64
HOLDOUT_HIDDEN = 192
HOLDOUT_TOKENS = 64

#: spatial sizes of the convs: 224-input CNNs (112..7), 64-input (32..4), 96-input (48..6)
HW = (112, 56, 28, 14, 7, 32, 16, 8, 4, 48, 24, 12, 6)
HW_SKELETON = (112, 56, 28, 14, 7, 32, 16, 8)
#: channel counts found at each spatial size in common CNNs (dense convs; depthwise
#: and 1x1 expansions reach further, see _bounds)
CHANNELS = {112: (16, 96), 56: (16, 256), 48: (16, 192), 32: (16, 256), 28: (24, 512), 24: (24, 384),
            16: (32, 512), 14: (32, 1024), 12: (32, 768), 8: (64, 1024), 7: (64, 2048), 6: (64, 1024),
            4: (64, 1024)}
LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1280, 2048)
GROUP_WIDTHS = (8, 16, 32)
LINEAR_WIDTHS = (64, 128, 256, 384, 512, 768, 1024, 2048, 3072, 4096)


@dataclass(frozen=True)
class SuitePoint:
    """One shape of the suite: a prunable layer at (cin, cout), or a cheap op. ``kind``
    groups points for reports (``conv``, ``conv-grouped``, ``conv-dw``, ``linear``, ``lstm``,
    ``gru``, ``attention``, ``op-<name>``)."""

    signature: str
    kind: str
    macs: float
    tier: int
    holdout: bool
    layer: PrunableLayer | None = None
    cin: int = 0
    cout: int = 0
    op: OpShape | None = None

    def job(self, timing: str) -> Job:
        if self.op is not None:
            return op_job(self.op, timing)
        assert self.layer is not None
        return layer_job(Point("suite", self.cin, self.cout, self.signature), self.layer, timing)


# ------------------------------------------------------------------ the held-out set
_CONV = re.compile(r"^conv-i\d+-o\d+-k(\d+)x\d+-s(\d+)x\d+-p\d+x\d+-d\d+x\d+-hw(\d+)x\d+-")


def is_holdout(signature: str) -> bool:
    """Whether a point (of the suite or of any model in the same table) belongs to the
    held-out shape configurations (see the module docstring)."""
    m = _CONV.match(signature)
    if m:
        k, s, hw = (int(v) for v in m.groups())
        return hw == HOLDOUT_HW or (k, s, hw) in HOLDOUT_CONV
    if signature.startswith("linear-"):
        return re.search(rf"-r{HOLDOUT_ROWS}-", signature) is not None
    if signature.startswith(("lstm-", "gru-")):
        return re.search(rf"-o{HOLDOUT_HIDDEN}-", signature) is not None
    if signature.startswith("attention-"):
        return signature.endswith(f"-t{HOLDOUT_TOKENS}")
    op = OpShape.from_signature(signature)
    if op is None:
        return False
    if op.name == "attention":
        return op.shape[2] == HOLDOUT_TOKENS
    return len(op.shape) == 4 and op.shape[2] == HOLDOUT_HW


# ------------------------------------------------------------------ point builders
def _conv(cin: int, cout: int, k: int, s: int, hw: int, tier: int, *, dw: bool = False,
          groups: int = 1) -> SuitePoint | None:
    if cin < 1 or cout < 1 or (dw and cin != cout) or (groups > 1 and (cin % groups or cout % groups)):
        return None
    layer = PrunableLayer("suite", "conv", cin, cout, kernel=(k, k), stride=(s, s), padding=(k // 2, k // 2),
                          input_hw=(hw, hw), depthwise=dw, groups=1 if dw else groups)
    macs = layer.macs(cin, cout)
    if macs > MAX_MACS:
        return None
    kind = "conv-dw" if dw else ("conv-grouped" if groups > 1 else "conv")
    sig = layer.signature(cin, cout)
    return SuitePoint(sig, kind, float(macs), tier, is_holdout(sig), layer, cin, cout)


def _linear(cin: int, cout: int, rows: int, tier: int) -> SuitePoint | None:
    if cin * cout > MAX_PARAMS:
        return None
    layer = PrunableLayer("suite", "linear", cin, cout, rows=rows)
    macs = layer.macs(cin, cout)
    if macs > MAX_MACS:
        return None
    sig = layer.signature(cin, cout)
    return SuitePoint(sig, "linear", float(macs), tier, is_holdout(sig), layer, cin, cout)


def _rnn(kind: LayerKind, cin: int, hidden: int, seq: int, batch: int, tier: int) -> SuitePoint | None:
    layer = PrunableLayer("suite", kind, cin, hidden, rows=batch, seq_len=seq)
    macs = layer.macs(cin, hidden)
    if macs > MAX_MACS:
        return None
    sig = layer.signature(cin, hidden)
    return SuitePoint(sig, kind, float(macs), tier, is_holdout(sig), layer, cin, hidden)


def _attention(heads: int, head_dim: int, tokens: int, batch: int, tier: int) -> SuitePoint | None:
    c = heads * head_dim
    layer = PrunableLayer("suite", "attention", c, c, head_dim=head_dim, rows=batch, seq_len=tokens, bias=False)
    macs = layer.macs(c, c)
    if macs > MAX_MACS:
        return None
    sig = layer.signature(c, c)
    return SuitePoint(sig, "attention", float(macs), tier, is_holdout(sig), layer, c, c)


def _op(name: str, shape: tuple[int, ...], tier: int, **params: int) -> SuitePoint | None:
    op = OpShape(name, shape, tuple(params.items()))
    if op.name in ("maxpool", "avgpool") and (shape[2] + 2 * op.param("p") - op.param("k")) < 0:
        return None
    sig = op.signature()
    return SuitePoint(sig, f"op-{name}", op_macs(op), tier, is_holdout(sig), op=op)


# ------------------------------------------------------------------ the full suite
class _Families:
    """Points collected per (tier, family), in generation order."""

    def __init__(self, lanes: int) -> None:
        self.lanes = max(1, int(lanes))
        self.by: dict[tuple[int, str], list[SuitePoint]] = {}

    def add(self, family: str, p: SuitePoint | None) -> None:
        if p is not None:
            self.by.setdefault((p.tier, family), []).append(p)

    def lat(self, c: float) -> int:
        """``c`` rounded up to the SIMD lattice (a multiple of the lanes)."""
        return max(self.lanes, math.ceil(c / self.lanes) * self.lanes)

    def ladder(self, lo: int, hi: int, values: Iterable[int] = LADDER) -> list[int]:
        return sorted({self.lat(c) for c in values if lo <= c <= hi})

    def ordered(self) -> list[SuitePoint]:
        """Tier by tier; within a tier one point of each family in turn; each signature once."""
        out: dict[str, SuitePoint] = {}
        for tier in sorted({t for t, _ in self.by}):
            fams = [pts for (t, _), pts in sorted(self.by.items(), key=lambda kv: kv[0]) if t == tier]
            for i in range(max(len(f) for f in fams)):
                for f in fams:
                    if i < len(f):
                        out.setdefault(f[i].signature, f[i])
        return list(out.values())


def _sweep(center: int, lanes: int) -> list[int]:
    """Widths from ``center - lanes + 1`` to ``center + 2 * lanes``, step 1: three lane
    steps, lane multiples and their neighbours first (the staircase's corners)."""
    ws = [c for c in range(center - lanes + 1, center + 2 * lanes + 1) if c >= 1]
    return sorted(ws, key=lambda c: (min(c % lanes, lanes - c % lanes) > 1, c % lanes != 0, c))


def _three(cs: list[int]) -> list[int]:
    """The smallest, middle and largest of ``cs`` (the ops' channel axis: they are bound by
    memory, so a few sizes per spatial size pin their elements-to-ms line)."""
    return sorted({cs[0], cs[len(cs) // 2], cs[-1]}) if cs else []


def _convs(f: _Families) -> None:
    L = f.lanes
    for hw in HW:
        lo, hi = CHANNELS[hw]
        skel = hw in HW_SKELETON
        for i, c in enumerate(f.ladder(lo, hi)):
            even = i % 2 == 0
            f.add("k3s1", _conv(c, c, 3, 1, hw, 0 if skel else 1))
            f.add("k1s1", _conv(c, c, 1, 1, hw, 0 if skel and even else 1))
            if hw >= 6:
                f.add("k3s2", _conv(c, 2 * c, 3, 2, hw, 0 if skel and even else 1))
            if not skel:
                continue
            if even:
                f.add("k3s1-pairs", _conv(c, 2 * c, 3, 1, hw, 2))
                f.add("k3s1-pairs", _conv(2 * c, c, 3, 1, hw, 2))
                f.add("k1s1-expand", _conv(c, 4 * c, 1, 1, hw, 1))
                f.add("k1s1-expand", _conv(4 * c, c, 1, 1, hw, 2))
                f.add("k3s2", _conv(c, c, 3, 2, hw, 2))
                f.add("k1s2", _conv(c, 2 * c, 1, 2, hw, 1))
            elif hw in (56, 28, 14, 7):  # MobileNet's 6x expansions
                f.add("k1s1-expand", _conv(c, 6 * c, 1, 1, hw, 2))
                f.add("k1s1-expand", _conv(6 * c, c, 1, 1, hw, 2))
            if c <= 256 and hw in (56, 28, 14, 7, 16, 8):
                f.add("k5", _conv(c, c, 5, 1, hw, 2))
                f.add("k5", _conv(c, 2 * c, 5, 2, hw, 3) if even else None)
            if c <= 128 and hw in (14, 7, 8):
                f.add("k7", _conv(c, c, 7, 1, hw, 3))
        for i, c in enumerate(f.ladder(lo, min(3 * hi, 1536))):  # depthwise: expanded widths (MobileNet: 6x)
            even = i % 2 == 0
            f.add("dw-k3s1", _conv(c, c, 3, 1, hw, 0 if skel and even else 1, dw=True))
            f.add("dw-k3s2", _conv(c, c, 3, 2, hw, 0 if skel and not even else 1, dw=True) if skel or even else None)
            if skel:
                f.add("dw-k5", _conv(c, c, 5, 1, hw, 1 if even else 2, dw=True))
                f.add("dw-k5", _conv(c, c, 5, 2, hw, 2, dw=True) if not even else None)
                f.add("dw-k7", _conv(c, c, 7, 1, hw, 2, dw=True) if even else None)
        if not skel:
            continue
        for gw in GROUP_WIDTHS:  # RegNet / ResNeXt: fixed channels per group
            for i, c in enumerate(f.ladder(max(lo, 2 * gw), hi)):
                if i % 2:
                    continue
                f.add(f"g{gw}-k3s1", _conv(c, c, 3, 1, hw, 1 if gw == 16 else 2, groups=c // gw))
                if gw == 16 and hw >= 8:
                    f.add("g16-k3s2", _conv(c, c, 3, 2, hw, 2, groups=c // gw))
                if gw == 8:
                    f.add("g8-k1", _conv(c, c, 1, 1, hw, 3, groups=c // gw))
    for k, s, hw in ((7, 2, 224), (3, 2, 224), (3, 1, 64), (3, 2, 96), (3, 1, 32), (3, 1, 28), (5, 1, 28),
                     (3, 2, 64), (3, 1, 96)):  # stems: the input image's few channels
        for j, c in enumerate(f.ladder(16, 64)):
            f.add("stem", _conv(3, c, k, s, hw, 0 if j == 2 else 1))
            f.add("stem", _conv(1, c, k, s, hw, 3) if hw <= 64 and s == 1 else None)
    # off the lattice: +-1, half a lane, odd widths around common lattice widths
    for hw in (56, 28, 14, 7, 16, 8):
        lo, hi = CHANNELS[hw]
        for c in f.ladder(lo, hi, (32, 64, 128, 256, 512)):
            for j, (a, b) in enumerate(((1, 1), (-1, -1), (L // 2, L // 2), (0, 1), (3, 5))):
                tier = 1 if j < 3 else 3
                f.add("off-k3s1", _conv(c + a, c + b, 3, 1, hw, tier))
                f.add("off-k1s1", _conv(c + a, c + b, 1, 1, hw, tier))
                f.add("off-dw", _conv(c + a, c + a, 3, 1, hw, tier, dw=True) if j != 3 else None)
    # staircases: one width stepped by 1 over three lane steps, the other dims fixed
    for name, center, tier, make in (
        ("sw-k3-out", 64, 1, lambda w: _conv(f.lat(64), w, 3, 1, 28, 1)),
        ("sw-k1-out", 128, 1, lambda w: _conv(f.lat(256), w, 1, 1, 14, 1)),
        ("sw-dw", 96, 1, lambda w: _conv(w, w, 3, 1, 28, 1, dw=True)),
        ("sw-k3-in", 128, 2, lambda w: _conv(w, f.lat(128), 3, 1, 14, 2)),
        ("sw-k1-in", 64, 2, lambda w: _conv(w, f.lat(64), 1, 1, 56, 2)),
        ("sw-k1-7", 320, 2, lambda w: _conv(f.lat(512), w, 1, 1, 7, 2)),
        ("sw-dw-s2", 144, 3, lambda w: _conv(w, w, 3, 2, 56, 3, dw=True)),
    ):
        for w in _sweep(f.lat(center), L):
            f.add(name, make(w))


def _linears(f: _Families) -> None:
    L = f.lanes
    for rows in (1, 197, 49, 4, 32, 64, 8, 16, 128, 256):
        base = rows in (1, 197)
        for i, c in enumerate(f.ladder(64, 4096, LINEAR_WIDTHS)):
            f.add("linear", _linear(c, c, rows, 0 if base and c in (128, 256, 512, 1024) else 1))
            f.add("linear-mlp", _linear(c, 4 * c, rows, 0 if base and c in (192, 768) else 2))
            f.add("linear-mlp", _linear(4 * c, c, rows, 1 if base else 2))
            if rows in (1, 4, 32) and i % 2 == 0:  # classifier heads
                f.add("linear-head", _linear(c, 1000, rows, 2))
                f.add("linear-head", _linear(c, 10, rows, 3))
    for name, rows, fixed, center, tier in (("sw-lin-1", 1, 512, 128, 1), ("sw-lin-197", 197, 384, 384, 2)):
        for w in _sweep(f.lat(center), L):
            f.add(name, _linear(f.lat(fixed), w, rows, tier))
    for kind in ("lstm", "gru"):
        for seq, batch in ((16, 1), (1, 1), (50, 1), (16, 8)):
            for h in (64, 128, 192, 256, 512):
                base = (seq, batch) == (16, 1) and h in (64, 256)
                f.add(kind, _rnn(kind, h, h, seq, batch, 0 if base else (1 if seq == 16 else 2)))  # type: ignore[arg-type]
            for cin in (40, 80):  # speech features in, wider hidden
                f.add(kind, _rnn(kind, cin, 128, seq, batch, 2))  # type: ignore[arg-type]


def _ops(f: _Families) -> None:
    for hw in HW:
        lo, hi = CHANNELS[hw]
        skel = hw in HW_SKELETON
        for j, c in enumerate(_three(f.ladder(lo, min(3 * hi, 1536)))):
            s = (1, c, hw, hw)
            first = j == 0
            f.add("add", _op("add", s, 0 if skel and j != 1 else 1))
            f.add("mulgate", _op("mulgate", s, 0 if skel and j == 1 else 1))
            f.add("concat", _op("concat", s, 1 if skel else 2, n=2))
            f.add("reshape", _op("reshape", s, 2))
            if hw <= 16:
                f.add("gap", _op("gap", s, 0 if hw in (7, 4, 8) and j != 1 else 1))
            elif first:
                f.add("gap", _op("gap", s, 3))
            if hw >= 28 and hw % 2 == 0:
                f.add("pool", _op("maxpool", s, 0 if hw in (112, 56) and first else 2, k=3, st=2, p=1))
            if not skel:
                continue
            f.add("act", _op("hardswish", s, 1))
            f.add("act", _op("sigmoid", s, 2) if j != 1 else None)
            f.add("act", _op("relu", s, 2) if j != 1 else None)
            if hw >= 8:
                f.add("pool", _op("maxpool", s, 1 if first else 3, k=2, st=2))
                f.add("pool", _op("avgpool", s, 2, k=2, st=2) if j != 1 else None)
                f.add("pool", _op("avgpool", s, 3, k=3, st=1, p=1) if first else None)
            f.add("concat", _op("concat", s, 3, n=4) if first else None)
            f.add("transpose", _op("transpose", (1, c, hw * hw), 3) if first else None)
    for t in (49, 197, 64, 16, 50):  # token rows: ViT-style 7x7 / 14x14+1 / 8x8, speech frames
        for j, (h, d) in enumerate(((4, 32), (6, 64), (3, 64), (12, 64), (8, 32), (2, 32))):
            tier = 0 if t in (49, 197) and j < 2 else (1 if j < 4 else 2)
            f.add("attention", _op("attention", (1, h, t, d), tier))
            f.add("softmax", _op("softmax", (1, h, t, t), min(3, tier + 1)))
            f.add("transpose", _op("transpose", (1, h, t, d), min(3, tier + 2)))
    for n in (10, 100, 1000):
        f.add("softmax", _op("softmax", (1, n), 1))
    _attentions(f)


def _attentions(f: _Families) -> None:
    """The attention core at every head count a head-pruned ViT / BERT passes through
    (1..16), three head dims and token counts from a 4x4 patch grid to 256 tokens."""
    for t in (49, 197, 16, 64, 128, 256, 50, 100):
        base = t in (49, 197)
        for d in (64, 32, 16):
            for h in (1, 2, 3, 4, 6, 8, 12, 16):
                lattice = h in (1, 4, 12)
                tier = 0 if base and d == 64 and lattice else (1 if base or lattice else 2)
                f.add(f"attn-d{d}", _attention(h, d, t, 1, tier))
                if h in (3, 6, 12) and t in (49, 197, 16, 64):
                    f.add("attn-batch", _attention(h, d, t, 4, 3))


# ------------------------------------------------------------------ the tiny suite (tests)
def _tiny(f: _Families) -> None:
    """~35 points that each take a few ms to time: every op kind once or twice, a short
    staircase sweep and held-out configurations, for tests with a real backend."""
    L = f.lanes
    for c in (L, 2 * L, 3 * L):
        f.add("k3", _conv(c, c, 3, 1, 8, 0))
        f.add("k1", _conv(c, 2 * c, 1, 1, 8, 0))
        f.add("dw", _conv(c, c, 3, 1, 8, 0, dw=True))
    f.add("g", _conv(4 * L, 4 * L, 3, 1, 8, 0, groups=4))
    f.add("g", _conv(2 * L, 2 * L, 3, 2, 8, 0, groups=2))
    f.add("hold", _conv(L, L, 3, 1, HOLDOUT_HW, 1))  # held out: spatial size HOLDOUT_HW
    f.add("hold", _conv(L, L, 1, 1, 28, 1))  # held out: (1, 1, 28)
    for w in range(L, 2 * L + 2):
        f.add("sweep", _conv(L, w, 1, 1, 8, 1))
    for rows in (1, 4):
        f.add("linear", _linear(4 * L, 4 * L, rows, 0))
    f.add("linear", _linear(4 * L, 4 * L, HOLDOUT_ROWS, 1))
    f.add("rnn", _rnn("lstm", 16, 16, 4, 1, 0))
    f.add("rnn", _rnn("gru", 16, 16, 4, 1, 0))
    s = (1, L, 8, 8)
    for name in ("add", "mulgate", "hardswish", "sigmoid", "relu", "gap", "reshape"):
        f.add("ops", _op(name, s, 0))
    f.add("ops", _op("maxpool", s, 0, k=2, st=2))
    f.add("ops", _op("avgpool", s, 0, k=3, st=1, p=1))
    f.add("ops", _op("concat", s, 0, n=2))
    f.add("ops", _op("softmax", (1, 10), 0))
    f.add("ops", _op("attention", (1, 2, 16, 16), 0))
    for h, t in ((1, 16), (2, 16), (4, 16), (2, 32), (2, HOLDOUT_TOKENS)):
        f.add("attention", _attention(h, 16, t, 1, 0 if t != HOLDOUT_TOKENS else 1))
    f.add("ops", _op("transpose", (1, 2, 16, 16), 0))


def suite_points(lanes: int, size: str = "full") -> list[SuitePoint]:
    """The calibration suite for a target with ``lanes`` fp32 SIMD lanes, in priority
    order (see the module docstring); deterministic for a given ``lanes`` and ``size``."""
    if size not in SIZES:
        raise ValueError(f"unknown suite size {size!r}; choose {', '.join(SIZES)}")
    f = _Families(lanes)
    if size == "tiny":
        _tiny(f)
    else:
        _convs(f)
        _linears(f)
        _ops(f)
    return f.ordered()


def by_kind(points: Iterable[SuitePoint]) -> dict[str, int]:
    """Points per kind, sorted by kind."""
    out: dict[str, int] = {}
    for p in points:
        out[p.kind] = out.get(p.kind, 0) + 1
    return dict(sorted(out.items()))


def kind_of(signature: str) -> str:
    """The report kind of any stored signature (a suite point's or a model's)."""
    op = OpShape.from_signature(signature)
    if op is not None:
        return f"op-{op.name}"
    head = signature.split("-", 1)[0]
    if head == "conv":
        tail = signature.rsplit("-", 2)[-2]
        return "conv-dw" if tail == "dw" else ("conv-grouped" if re.fullmatch(r"gw?\d+", tail) else "conv")
    return head


def tiers(points: Iterable[SuitePoint]) -> Iterator[tuple[int, int]]:
    """(tier, points) in tier order."""
    counts: dict[int, int] = {}
    for p in points:
        counts[p.tier] = counts.get(p.tier, 0) + 1
    yield from sorted(counts.items())
