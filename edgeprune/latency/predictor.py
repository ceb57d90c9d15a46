"""Whole-model latency from the per-layer table: the :class:`LatencyModel` pruning uses.

``predict(widths) = calibrate(sum of the layers' table entries)``. The layer sum misses
what is not a prunable layer (pooling, residual adds and activations not fused away,
reorders between layouts, the per-call overhead) and double-counts what a standalone
layer pays but the model does not (one call overhead per layer, input reorders). That
*remainder* is measured, not guessed: the profiler times the full model at full width
and a few pruned calibration variants, end to end. Five ways to use those measurements
compete, and the one with the lowest leave-one-out error on the calibration variants is
used (``calibration.method``; the report says which and why):

- ``additive``: ``sum + R`` with ``R = full_measured - full_sum`` (pure additivity);
- ``proportional``: ``sum * full_measured / full_sum`` (the remainder scales with the sum);
- ``activation``: ``sum + R * A(w) / A(full)``, ``A`` = elements written by the prunable
  layers (the remainder scales with the activations it touches);
- ``overhead``: ``sum + c + (R - c) * A(w) / A(full)`` with ``c`` fitted to the variants: a
  constant part (per-call overheads each standalone layer paid, negative) plus a part that
  scales with the activations (unfused element-wise work, positive); exact at full width;
- ``linear``: ``a * sum + b`` fitted by least squares to full + variants.

Without calibration variants (no way to build pruned models) ``additive`` is used.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from edgeprune.latency.entry import LatencyEntry
from edgeprune.latency.lut import LatencyTable
from edgeprune.prune.space import PrunableLayer, PruneSpace

METHODS = ("additive", "activation", "proportional", "overhead", "linear")  # simplest first: wins ties
CANDIDATE_EPS = 0.005  # a wider width costing < 0.5 % more dominates a narrower one


@dataclass
class VariantMeasurement:
    widths: dict[str, int]
    entry: LatencyEntry

    def to_dict(self) -> dict[str, Any]:
        return {"widths": dict(self.widths), **self.entry.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VariantMeasurement":
        return cls(widths={k: int(v) for k, v in d["widths"].items()}, entry=LatencyEntry.from_dict(d))


@dataclass
class ModelMeasurements:
    """End-to-end measurements of one model (stored in the LUT file under its fingerprint)."""

    fingerprint: str
    name: str
    full: LatencyEntry
    variants: list[VariantMeasurement] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "full": self.full.to_dict(), "variants": [v.to_dict() for v in self.variants]}

    @classmethod
    def from_dict(cls, fingerprint: str, d: Mapping[str, Any]) -> "ModelMeasurements":
        return cls(fingerprint=fingerprint, name=str(d.get("name", "")), full=LatencyEntry.from_dict(d["full"]),
                   variants=[VariantMeasurement.from_dict(v) for v in d.get("variants", [])])


@dataclass
class Calibration:
    method: str
    full_ms: float
    full_sum_ms: float
    a: float = 1.0  # linear: slope
    b: float = 0.0  # linear: intercept; overhead: the constant part c
    errors: dict[str, float] = field(default_factory=dict)  # method -> LOO RMS % error on variants
    n_variants: int = 0
    reason: str = ""

    @property
    def remainder_ms(self) -> float:
        return self.full_ms - self.full_sum_ms

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "full_ms": self.full_ms, "full_sum_ms": self.full_sum_ms,
                "remainder_ms": self.remainder_ms, "a": self.a, "b": self.b, "errors_pct": self.errors,
                "n_variants": self.n_variants, "reason": self.reason}


def _fit_overhead(feats: list[tuple[float, float, float]], r: float, act_full: float) -> float:
    """Least-squares ``c`` in ``t = s + c + (r - c) * x`` (x = activations / full) over
    (s, act, t) points; the full-width point (x = 1) carries no information on ``c``."""
    num = den = 0.0
    for s, act, t in feats:
        x = act / act_full if act_full > 0 else 1.0
        num += (1 - x) * (t - s - r * x)
        den += (1 - x) ** 2
    return num / den if den > 0 else 0.0


def _fit_linear(xs: list[float], ys: list[float]) -> tuple[float, float]:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 0:
        return 1.0, my - mx
    a = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return a, my - a * mx


class LatencyPredictor:
    """Implements :class:`edgeprune.prune.space.LatencyModel` over a measured table."""

    def __init__(self, space: PruneSpace, table: LatencyTable, measurements: ModelMeasurements | None = None,
                 method: str | None = None) -> None:
        if not table.complete:
            raise ValueError("latency table is incomplete: profile the model first")
        self.space = space
        self.table = table
        self.measurements = measurements
        # Flattened per-layer data: predict() is called thousands of times per second.
        self._layers: list[tuple[str | None, str | None, int, int, bool, Any, int]] = []
        for layer in space.layers:
            self._layers.append((layer.in_group, layer.out_group, layer.in_channels, layer.out_channels,
                                 layer.depthwise, table.table(layer.name).ms, _act_per_channel(layer)))
        full = space.full_widths()
        self._full_sum = self.layer_sum(full)
        self._full_act = self.activations(full)
        self._candidates: dict[str, list[int]] = {}
        self.calibration = self._calibrate(method)

    # ---- the sum of layer entries --------------------------------------------------------
    def _dims(self, widths: Mapping[str, int], ig, og, ci0, co0, dw) -> tuple[int, int]:
        if dw:
            c = widths.get(og or ig or "", co0)
            return c, c
        return (widths.get(ig, ci0) if ig else ci0), (widths.get(og, co0) if og else co0)

    def layer_sum(self, widths: Mapping[str, int]) -> float:
        s = 0.0
        get = widths.get
        for ig, og, ci0, co0, dw, ms, _ in self._layers:
            if dw:
                c = get(og or ig or "", co0)
                s += ms(c, c)
            else:
                s += ms(get(ig, ci0) if ig else ci0, get(og, co0) if og else co0)
        return s

    def activations(self, widths: Mapping[str, int]) -> float:
        get = widths.get
        return float(sum(act * (get(og or ig or "", co0) if dw else (get(og, co0) if og else co0))
                         for ig, og, ci0, co0, dw, ms, act in self._layers))

    # ---- calibration ---------------------------------------------------------------------
    def _apply(self, method: str, s: float, act: float) -> float:
        """An anchored calibration (exact at full width) applied to a layer sum."""
        full = self._full_sum
        t_full = self.measurements.full.ms if self.measurements else full
        r = t_full - full
        if method == "additive":
            return s + r
        if method == "proportional":
            return s * t_full / full if full > 0 else s
        return s + r * (act / self._full_act if self._full_act > 0 else 1.0)  # activation

    def _calibrate(self, forced: str | None) -> Calibration:
        m = self.measurements
        if m is None:
            return Calibration("none", self._full_sum, self._full_sum, reason="no end-to-end measurement: layer sum only")
        cal = Calibration("additive", m.full.ms, self._full_sum, n_variants=len(m.variants))
        points = [(self.space.full_widths(), m.full.ms)] + [(v.widths, v.entry.ms) for v in m.variants]
        feats = [(self.layer_sum(w), self.activations(w), t) for w, t in points]
        if len(m.variants) >= 2:
            for method in METHODS:
                errs = []
                for i in range(1, len(feats)):  # leave variant i out
                    s, act, t = feats[i]
                    rest = [f for j, f in enumerate(feats) if j != i]
                    if method == "linear":
                        a, b = _fit_linear([f[0] for f in rest], [f[2] for f in rest])
                        pred = a * s + b
                    elif method == "overhead":
                        c = _fit_overhead(rest, m.full.ms - self._full_sum, self._full_act)
                        pred = s + c + (m.full.ms - self._full_sum - c) * act / self._full_act
                    else:
                        pred = self._apply(method, s, act)
                    errs.append(100.0 * (pred - t) / t)
                cal.errors[method] = round(math.sqrt(sum(e * e for e in errs) / len(errs)), 3)
            best = min(METHODS, key=lambda k: (cal.errors[k], METHODS.index(k)))
            cal.method = best
            cal.reason = (f"lowest leave-one-out RMS error on {len(m.variants)} calibration variant(s): "
                          + ", ".join(f"{k} {v:.2f}%" for k, v in cal.errors.items()))
        else:
            cal.reason = "fewer than 2 calibration variants: pure additivity (layer sum + measured remainder)"
        if forced:
            if forced not in METHODS:
                raise ValueError(f"unknown calibration '{forced}'; choose from {', '.join(METHODS)}")
            cal.method = forced
            cal.reason = f"forced by the caller ({forced})" + (f"; measured: {cal.errors}" if cal.errors else "")
        if cal.method == "linear":
            cal.a, cal.b = _fit_linear([f[0] for f in feats], [f[2] for f in feats])
        elif cal.method == "overhead":
            cal.b = _fit_overhead(feats, cal.remainder_ms, self._full_act)  # the constant part c
        return cal

    # ---- LatencyModel --------------------------------------------------------------------
    def predict(self, widths: Mapping[str, int]) -> float:
        return self._calibrated(self.layer_sum(widths), lambda: self.activations(widths) / self._full_act)

    def _calibrated(self, s: float, act_fraction: "Callable[[], float]") -> float:
        """The whole model from a layer sum ``s`` under the chosen calibration;
        ``act_fraction()`` (activations kept / full, computed only by the methods that
        scale the remainder with it) is lazy because :meth:`predict` is the search's hot path."""
        c = self.calibration
        if c.method == "none":
            return s
        if c.method == "additive":
            return s + c.full_ms - c.full_sum_ms
        if c.method == "proportional":
            return s * c.full_ms / c.full_sum_ms
        if c.method == "linear":
            return c.a * s + c.b
        if c.method == "overhead":
            return s + c.b + (c.full_ms - c.full_sum_ms - c.b) * act_fraction()
        return s + (c.full_ms - c.full_sum_ms) * act_fraction()

    def predict_without(self, layers: Collection[str], widths: Mapping[str, int] | None = None) -> float:
        """The model without the named layers (depth pruning drops whole residual blocks):
        the layer sum and activations of the layers that remain, calibrated like
        :meth:`predict`, so the remainder's share that scales with activations leaves with
        the block and the constant part (per-call overhead) stays."""
        gone = set(layers)
        w = {**self.space.full_widths(), **(widths or {})}
        s = act = 0.0
        for layer, (ig, og, ci0, co0, dw, ms, a) in zip(self.space.layers, self._layers):
            if layer.name in gone:
                continue
            cin, cout = self._dims(w, ig, og, ci0, co0, dw)
            s += ms(cin, cout)
            act += a * cout
        return self._calibrated(s, lambda: act / self._full_act if self._full_act > 0 else 1.0)

    def predict_flops(self, widths: Mapping[str, int]) -> float:
        """The naive alternative: the measured full latency scaled by the MAC count."""
        full_ms = self.calibration.full_ms
        return full_ms * self.space.macs(widths) / max(1, self.space.macs())

    def group_curve(self, group: str, widths: list[int] | None = None) -> dict[int, float]:
        """Layer-sum latency of ``group``'s layers at each width (default: every width
        from the group's minimum to its size), all other groups at full width."""
        g = self.space.groups[group]
        full = self.space.full_widths()
        idx = [i for i, l in enumerate(self._layers) if group in (l[0], l[1])]
        out = {}
        u = max(1, g.unit)
        every = sorted({*range(u * max(1, -(-g.min_size // u)), g.size + 1, u), g.size})  # multiples of the unit
        for w in widths if widths is not None else every:
            full[group] = w
            out[w] = sum(self._layers[i][5](*self._dims(full, *self._layers[i][:5])) for i in idx)
        return out

    def candidates(self, group: str) -> list[int]:
        """Ascending widths on the fast side of the steps of ``group``: lattice widths
        (multiples of the lane width, where the table is measured in 2-D, plus the full
        size; for a group with a ``unit``, multiples of the unit) that are not dominated, i.e. every wider lattice width is more than
        ``CANDIDATE_EPS`` slower."""
        got = self._candidates.get(group)
        if got is not None:
            return list(got)
        g = self.space.groups[group]
        if not g.prunable:
            self._candidates[group] = [g.size]
            return [g.size]
        curve = self.group_curve(group, self.table.grid.lattice(max(1, g.min_size), g.size, g.unit))
        keep, best = [], math.inf
        for w in sorted(curve, reverse=True):
            if curve[w] * (1 + CANDIDATE_EPS) < best or w == g.size:
                keep.append(w)
            best = min(best, curve[w])
        keep.sort()
        self._candidates[group] = keep
        return list(keep)

    def describe(self) -> dict[str, Any]:
        return {"calibration": self.calibration.to_dict(), "layers": len(self._layers),
                "full_layer_sum_ms": self._full_sum}


def _act_per_channel(layer: PrunableLayer) -> int:
    """Output elements per output channel (what elementwise ops after the layer touch)."""
    rows = max(1, layer.rows)
    if layer.kind == "conv":
        h, w = layer.input_hw or (1, 1)
        oh = (h + 2 * layer.padding[0] - layer.dilation[0] * (layer.kernel[0] - 1) - 1) // layer.stride[0] + 1
        ow = (w + 2 * layer.padding[1] - layer.dilation[1] * (layer.kernel[1] - 1) - 1) // layer.stride[1] + 1
        return rows * oh * ow
    if layer.kind == "linear":
        return rows
    return rows * max(1, layer.seq_len)


def error_stats(pairs: list[tuple[float, float]]) -> dict[str, float]:
    """(predicted, measured) pairs -> median / p95 absolute % error, fraction within 10 %."""
    if not pairs:
        return {"median_abs_pct_error": float("nan"), "p95_abs_pct_error": float("nan"), "within_10pct": float("nan")}
    errs = sorted(abs(p - m) / m * 100.0 for p, m in pairs)
    import numpy as np

    return {
        "median_abs_pct_error": round(float(statistics.median(errs)), 3),
        "p95_abs_pct_error": round(float(np.percentile(errs, 95)), 3),
        "within_10pct": round(sum(e <= 10.0 for e in errs) / len(errs), 4),
    }
