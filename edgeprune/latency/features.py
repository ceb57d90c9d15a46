"""Signature -> features for the device latency model (:mod:`edgeprune.latency.devmodel`).

A table point is keyed by a signature string (``PrunableLayer.signature``,
``OpShape.signature``) and the device model reads everything it knows about the op off
that string, so any model's layers can be predicted without its prune space.

Work is split in three steps so a prediction for 10,000 signatures is a few numpy
operations, not 10,000 Python feature builds:

1. :func:`parse` (Python, once per signature): the op kind and a short *raw* row of the
   integers that determine its latency (channels, kernel, spatial size, ...);
2. per kind, the rows stacked into one array;
3. :func:`feature_matrix`, :func:`baseline_matrix`, :func:`axes_matrix` (vectorised).

**Kinds** (:func:`op_kind`, the key of one sub-model): ``conv`` (dense *and* grouped),
``conv-dw``, ``linear``, ``lstm``, ``gru``, ``op-<name>``. Dense and grouped convs share
one kind because a dense conv is the 1-group case of the same operator: ONNX Runtime and
OpenVINO run a grouped conv as ``groups`` small dense convs, so dense points teach the
model how cost grows with group width and the few grouped points only have to teach the
per-group overhead (``groups`` is a feature and an axis: a grouped conv predicted from
dense points alone is far off the suite on that axis, so it gets a large uncertainty and
is measured). Depthwise convs are kept apart: they run a different, memory-bound kernel
whose cost is not a small dense conv's. LSTM and GRU are different kernels (4 vs 3 gates,
different fusion) and each op is its own kernel, so nothing else is merged. A grouped
conv with a fixed group width (signature ``gw<width>``) is a ``conv`` whose ``groups``
is read off its channels (``cin // width``). ``attention`` is the prunable attention
core (``attention-i<C>-o<C>-d<head_dim>-b<batch>-t<tokens>``, with its head split and
merge): raw row (batch, heads, tokens, head_dim), MACs ``2 B H T^2 d``, and in place of
weights the ``B H T^2`` score matrix its softmax reads and writes. It is kept apart from
``op-attention`` (the bare core on head-split inputs, a remainder op) because it also
pays the reshapes and transposes around the heads.

**Feature sets** (``lattice`` vs ``smooth``): CPU latency is a staircase in the channel
count: kernels work on blocks of ``lanes`` fp32 SIMD lanes (and some, like ONNX
Runtime's NCHWc convs, fall back to a slower path when a channel count is not a multiple
of 4; measured on this host's table: a 3x3 conv at 8x8 with 32 / 33 / 36 / 40 input
channels takes 0.032 / 0.064 / 0.042 / 0.040 ms). The *lattice* set adds the terms that
describe that lattice: channels rounded up to 1, 2 and 4 lane blocks, ``c mod lanes``,
``c mod 4``, whether ``c`` is a multiple of 4 / ``lanes``, the number of lane blocks and
the MACs with channels rounded up to the lattice. The *smooth* set has only MACs, bytes
and shape sizes: the plain regressor of kernel-level predictors (nn-Meter), the one the
lattice set is compared against. ``lanes`` is the target's fp32 SIMD width
(``Target.fp32_lanes()``: 8 AVX2, 16 AVX-512, 4 NEON), always a parameter.

**Axes** (:func:`axes_matrix`): the shape in log2 units (octaves) for the range check and
nearest-neighbour distance that inflate the uncertainty off the suite.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from edgeprune.latency.opshape import OpShape

FEATURE_SETS: tuple[str, ...] = ("lattice", "smooth")
LAYER_KINDS: tuple[str, ...] = ("conv", "conv-dw", "linear", "lstm", "gru", "attention")
BYTES = 4.0  # fp32

_CONV = re.compile(r"^conv-i(\d+)-o(\d+)-k(\d+)x(\d+)-s(\d+)x(\d+)-p(\d+)x(\d+)-d(\d+)x(\d+)"
                   r"-hw(\d+)x(\d+)-(dw|dense|g\d+|gw\d+)-(b|nb)$")
_LINEAR = re.compile(r"^linear-i(\d+)-o(\d+)-r(\d+)-(b|nb)$")
_RNN = re.compile(r"^(lstm|gru)-i(\d+)-o(\d+)-b(\d+)-t(\d+)-(b|nb)$")
_ATTENTION = re.compile(r"^attention-i(\d+)-o(\d+)-d(\d+)-b(\d+)-t(\d+)$")

#: raw row layouts (all integers), per kind family
CONV_RAW = ("cin", "cout", "kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw", "h", "w", "groups", "bias")
LINEAR_RAW = ("cin", "cout", "rows", "bias")
RNN_RAW = ("cin", "hidden", "batch", "seq", "bias")
ATTENTION_RAW = ("batch", "heads", "tokens", "head_dim")
OP_RAW = ("elements_in", "elements_out", "flops", "channels", "inner", "outer", "k", "st", "n")


def parse(sig: str) -> tuple[str, tuple[float, ...]] | None:
    """(kind, raw row) of a signature, or None when it is none this module knows (an
    unknown op, a conv without its spatial size ``hw?``, a malformed string)."""
    if sig.startswith("op-"):
        op = OpShape.from_signature(sig)
        if op is None:
            return None
        shape = op.shape
        p = dict(op.params)
        channels = shape[1] if len(shape) > 1 else 1
        return f"op-{op.name}", (float(op.elements_in), float(op.elements_out), float(op.flops), float(channels),
                                 float(shape[-1]), float(np.prod(shape) // shape[-1]), float(p.get("k", 1)),
                                 float(p.get("st", 1)), float(p.get("n", 1)))
    m = _CONV.match(sig)
    if m:
        g = m.group(13)
        cin, cout = int(m.group(1)), int(m.group(2))
        if g.startswith("gw"):  # fixed group width: the groups follow the channels
            gw = int(g[2:])
            groups = cin // gw if gw > 0 and cin % gw == 0 else 0
        else:
            groups = cin if g == "dw" else (1 if g == "dense" else int(g[1:]))
        if groups < 1 or cin % groups or cout % groups:
            return None
        nums = [float(m.group(i)) for i in range(1, 13)]
        return ("conv-dw" if g == "dw" else "conv"), (*nums, float(groups), float(m.group(14) == "b"))
    m = _LINEAR.match(sig)
    if m:
        return "linear", (float(m.group(1)), float(m.group(2)), float(m.group(3)), float(m.group(4) == "b"))
    m = _ATTENTION.match(sig)
    if m:
        c, d = int(m.group(1)), int(m.group(3))
        if c != int(m.group(2)) or d < 1 or c % d:
            return None
        return "attention", (float(m.group(4)), float(c // d), float(m.group(5)), float(d))
    m = _RNN.match(sig)
    if m:
        return m.group(1), (float(m.group(2)), float(m.group(3)), float(m.group(4)), float(m.group(5)),
                            float(m.group(6) == "b"))
    return None


def op_kind(sig: str) -> str | None:
    """The sub-model that predicts ``sig`` (see the module docstring), or None."""
    p = parse(sig)
    return p[0] if p else None


def _family(kind: str) -> str:
    if kind.startswith("op-"):
        return "op"
    return {"conv": "conv", "conv-dw": "conv", "linear": "linear", "lstm": "rnn", "gru": "rnn",
            "attention": "attention"}[kind]


def _lg(x: np.ndarray) -> np.ndarray:
    return np.log2(np.maximum(x, 1.0))


def _up(c: np.ndarray, m: int) -> np.ndarray:
    return np.ceil(c / m) * m


def _lattice(c: np.ndarray, lanes: int) -> list[np.ndarray]:
    """The lattice terms of one channel-like axis."""
    return [_lg(_up(c, lanes)), _lg(_up(c, 2 * lanes)), _lg(_up(c, 4 * lanes)), c % lanes, c % 4,
            (c % 4 == 0).astype(float), (c % lanes == 0).astype(float), np.ceil(c / lanes),
            _up(c, lanes) / c]


def _conv_dims(r: np.ndarray) -> dict[str, np.ndarray]:
    cin, cout, kh, kw, sh, sw, ph, pw, dh, dw, h, w, g, _ = r.T
    oh = np.maximum(1, (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1)
    ow = np.maximum(1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1)
    gin, gout = cin / g, cout / g
    return dict(cin=cin, cout=cout, kh=kh, kw=kw, sh=sh, sw=sw, dh=dh, h=h, w=w, g=g, oh=oh, ow=ow, gin=gin,
                gout=gout, macs=oh * ow * cout * kh * kw * gin, b_in=BYTES * cin * h * w,
                b_out=BYTES * cout * oh * ow, b_w=BYTES * cout * gin * kh * kw)


def cost(kind: str, raw: np.ndarray) -> dict[str, np.ndarray]:
    """Per row: ``macs`` (conv/linear/rnn MACs, an op's flops) and ``bytes_in`` /
    ``bytes_out`` / ``bytes_w`` (fp32 activations read, written, weights): the terms
    the smooth baseline is fitted on."""
    raw = np.asarray(raw, dtype=float).reshape(-1, _width(kind))
    fam = _family(kind)
    if fam == "conv":
        d = _conv_dims(raw)
        return dict(macs=d["macs"], bytes_in=d["b_in"], bytes_out=d["b_out"], bytes_w=d["b_w"])
    if fam == "linear":
        cin, cout, rows, _ = raw.T
        return dict(macs=rows * cin * cout, bytes_in=BYTES * rows * cin, bytes_out=BYTES * rows * cout,
                    bytes_w=BYTES * cin * cout)
    if fam == "rnn":
        cin, hid, batch, seq, _ = raw.T
        gates = 4.0 if kind == "lstm" else 3.0
        return dict(macs=seq * batch * gates * hid * (cin + hid), bytes_in=BYTES * seq * batch * cin,
                    bytes_out=BYTES * seq * batch * hid, bytes_w=BYTES * gates * hid * (cin + hid))
    if fam == "attention":
        # MACs of q k^T and p v; q, k, v read and the output written; in place of weights
        # (the core has none) the score matrix the softmax reads and writes
        b, h, t, d = raw.T
        return dict(macs=2 * b * h * t * t * d, bytes_in=BYTES * 3 * b * t * h * d, bytes_out=BYTES * b * t * h * d,
                    bytes_w=BYTES * b * h * t * t)
    e_in, e_out, flops = raw[:, 0], raw[:, 1], raw[:, 2]
    return dict(macs=flops, bytes_in=BYTES * e_in, bytes_out=BYTES * e_out, bytes_w=np.zeros(len(raw)))


def _width(kind: str) -> int:
    return len({"conv": CONV_RAW, "linear": LINEAR_RAW, "rnn": RNN_RAW, "op": OP_RAW,
                "attention": ATTENTION_RAW}[_family(kind)])


def baseline_matrix(kind: str, raw: np.ndarray) -> np.ndarray:
    """Columns of the smooth baseline (all kinds alike, so it extrapolates the same way):
    ``[1, macs, bytes_in + bytes_out, bytes_w]`` in millions: latency ~ a fixed dispatch
    cost + compute + activation traffic + weight traffic (see devmodel)."""
    c = cost(kind, raw)
    one = np.ones_like(c["macs"])
    return np.stack([one, c["macs"] / 1e6, (c["bytes_in"] + c["bytes_out"]) / 1e6, c["bytes_w"] / 1e6], axis=1)


def feature_matrix(kind: str, raw: np.ndarray, lanes: int, feature_set: str = "lattice") -> np.ndarray:
    """The residual model's features, one row per raw row (see the module docstring)."""
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"feature set {feature_set!r} (known: {', '.join(FEATURE_SETS)})")
    if lanes < 1:
        raise ValueError(f"lanes must be >= 1, got {lanes}")
    raw = np.asarray(raw, dtype=float).reshape(-1, _width(kind))
    c = cost(kind, raw)
    cols = [_lg(c["macs"]), _lg(c["bytes_in"]), _lg(c["bytes_out"]), _lg(c["bytes_w"])]
    fam = _family(kind)
    lattice = feature_set == "lattice"
    if fam == "conv":
        d = _conv_dims(raw)
        cols += [_lg(d["cin"]), _lg(d["cout"]), _lg(d["h"] * d["w"]), _lg(d["oh"] * d["ow"]), d["kh"], d["kw"],
                 d["sh"], d["sw"], d["dh"], _lg(d["g"]), _lg(d["gin"]), _lg(d["gout"])]
        if lattice:
            # a grouped conv runs per group, so its lattice is the group's width (= the
            # channels for dense); a depthwise kernel vectorises across the channels
            for ax in (("cin", "cout") if kind == "conv-dw" else ("gin", "gout")):
                cols += _lattice(d[ax], lanes)
            cols += [d["cin"] % lanes, d["cout"] % lanes]
            per = d["oh"] * d["ow"] * d["kh"] * d["kw"]
            if kind == "conv-dw":
                pad, pad4 = _up(d["cout"], lanes) * per, _up(d["cout"], 4) * per
            else:
                pad = _up(d["gin"], lanes) * _up(d["gout"], lanes) * d["g"] * per
                pad4 = _up(d["gin"], 4) * _up(d["gout"], 4) * d["g"] * per
            cols += [_lg(pad), _lg(pad4), d["ow"] % lanes, _lg(_up(d["ow"], lanes))]
    elif fam == "linear":
        cin, cout, rows, _ = raw.T
        cols += [_lg(cin), _lg(cout), _lg(rows)]
        if lattice:
            cols += _lattice(cin, lanes) + _lattice(cout, lanes) + [
                _lg(_up(cin, lanes) * _up(cout, lanes) * rows), _lg(_up(cin, 4) * _up(cout, 4) * rows), rows % 4]
    elif fam == "rnn":
        cin, hid, batch, seq, _ = raw.T
        cols += [_lg(cin), _lg(hid), _lg(batch), _lg(seq)]
        if lattice:
            gates = 4.0 if kind == "lstm" else 3.0
            cols += _lattice(cin, lanes) + _lattice(hid, lanes) + [
                _lg(seq * batch * gates * _up(hid, lanes) * (_up(cin, lanes) + _up(hid, lanes)))]
    elif fam == "attention":
        b, h, t, d = raw.T
        cols += [_lg(b), _lg(h), _lg(t), _lg(d), _lg(h * d)]
        if lattice:
            # the matmuls run per head on [T, d] x [d, T] and [T, T] x [T, d] blocks: the
            # lattice is the head dim's and the tokens' (the softmax rows)
            cols += _lattice(d, lanes) + _lattice(t, lanes) + [_lg(b * h * _up(t, lanes) * _up(t, lanes) * _up(d, lanes))]
    else:
        e_in, e_out, flops, ch, inner, outer, k, st, n = raw.T
        cols += [_lg(ch), _lg(inner), _lg(outer), k, st, n]
        if lattice:
            cols += _lattice(ch, lanes) + _lattice(inner, lanes) + [_lg(outer * _up(inner, lanes))]
    return np.stack(cols, axis=1)


def axes_matrix(kind: str, raw: np.ndarray) -> np.ndarray:
    """The shape in octaves (log2 of each size that varies in the suite), for the range
    check and the distance to the nearest training point: one octave on any axis (twice
    the channels, the spatial size, the kernel, the groups, the rows) counts the same."""
    raw = np.asarray(raw, dtype=float).reshape(-1, _width(kind))
    fam = _family(kind)
    if fam == "conv":
        d = _conv_dims(raw)
        cols = [d["cin"], d["cout"], d["h"], d["w"], d["kh"], d["kw"], d["sh"], d["sw"], d["dh"], d["g"]]
    elif fam == "linear":
        cols = [raw[:, 0], raw[:, 1], raw[:, 2]]
    elif fam == "rnn":
        cols = [raw[:, 0], raw[:, 1], raw[:, 2], raw[:, 3]]
    elif fam == "attention":
        cols = [raw[:, 0], raw[:, 1], raw[:, 2], raw[:, 3]]
    else:
        cols = [raw[:, 3], raw[:, 4], raw[:, 5], raw[:, 6], raw[:, 7], raw[:, 8]]
    return np.stack([_lg(c) for c in cols], axis=1)


def parse_many(sigs: Sequence[str]) -> dict[str, tuple[list[int], np.ndarray]]:
    """Kind -> (indices into ``sigs``, stacked raw rows); unparseable signatures are left out."""
    rows: dict[str, tuple[list[int], list[tuple[float, ...]]]] = {}
    for i, s in enumerate(sigs):
        p = parse(s)
        if p is not None:
            idx, r = rows.setdefault(p[0], ([], []))
            idx.append(i)
            r.append(p[1])
    return {k: (idx, np.array(r, dtype=float)) for k, (idx, r) in rows.items()}
