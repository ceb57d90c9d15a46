"""Which channel counts to measure, and what the measured points say about the steps.

Latency on a CPU is a staircase in the channel count: kernels work on blocks of SIMD
lanes (and multiples of them), so a width one above a block boundary can cost a whole
extra block, and a width off the preferred multiple can even fall back to a slower
kernel. A table that interpolates across such a step predicts nonsense, so the grid is
built around the steps:

1. **Initial points** along an axis ``[lo, hi]``: every multiple of the lane width
   (the *anchors*, where steps usually sit; two lanes on axes wider than 32 lanes) and,
   in the fine region near the full width, the width just above each anchor (where a new
   block starts) and the middle of each block, so that sub-lane patterns (e.g. a kernel
   that prefers multiples of 4) show up too. Far below the full width, where pruning
   rarely goes, anchors are twice as sparse.
2. **Adaptive refinement**: between two consecutive measured widths ``p < q`` the curve
   is *known to lie on one step* only if it is straight there, i.e. ``p``, ``q`` and
   one of their measured neighbours are collinear within the tolerance. Every interval
   without that evidence is bisected and measured again, until it is either confirmed,
   down to adjacent widths (the step is then located exactly), or the per-axis budget
   is spent (what is left is reported as *estimated*, never silently trusted).

:class:`Staircase` holds one such axis and answers ``value(c)`` (measured, or linear
inside a confirmed interval), ``known(c)``, ``steps()`` and ``refinement()``.

**Units** (``PruneGroup.unit``): a group whose channels come in whole blocks (a conv
group of a fixed-group-width grouped conv, an attention head) has only multiples of its
unit as widths. Every function that generates widths takes ``unit`` and works in units
(:func:`unit_grid`: the lane width in units, at least one unit), so it returns only
multiples of ``unit`` (and the full width, which is one); a :class:`Staircase` with a
unit treats two measured widths one unit apart as adjacent and refines in units.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

Density = Literal["coarse", "normal", "dense"]
DENSITIES: tuple[str, ...] = ("coarse", "normal", "dense")


@dataclass(frozen=True)
class GridSettings:
    """How densely to sample. ``lanes`` is the target's fp32 SIMD width (the step size
    to look for first); ``rel_tol`` is the relative difference below which two latencies
    count as the same step (measurement noise on a busy machine is a few percent)."""

    lanes: int = 8
    density: Density = "normal"
    rel_tol: float = 0.04
    grid_2d: int = 4  # rows/columns of the coarse 2-D grid (full, 3/4, 1/2, 1/4 width)
    checks_2d: int = 1  # held-out on-lattice (cin, cout) points per 2-D table (+1 off-lattice)

    def step(self, hi: int) -> int:
        """Anchor spacing on an axis of full width ``hi``: the lane width, or two lanes on
        wide axes (> 32 lanes), where one lane is a negligible fraction of the width."""
        lane = max(1, int(self.lanes))
        return lane if hi <= 32 * lane or self.density == "dense" else 2 * lane

    def fine_from(self, lo: int, hi: int, unit: int = 1) -> int:
        """Below this width only anchors are measured ("dense near kept sizes"): pruning
        rarely goes there, and the anchors still give every lattice width exactly."""
        if unit > 1:
            a, b = unit_range(lo, hi, unit)
            return unit_grid(self, unit).fine_from(a, b) * unit
        if self.density == "dense":
            return lo
        top = max(4 * self.step(hi), hi // (2 if self.density == "normal" and hi <= 128 else 4))
        return max(lo, hi - top)

    def budget(self, lo: int, hi: int, unit: int = 1) -> int:
        """Maximum number of measured widths on one axis: the initial points plus room
        for refinement proportional to the fine region (in units of ``unit``)."""
        if unit > 1:
            a, b = unit_range(lo, hi, unit)
            return unit_grid(self, unit).budget(a, b) + (1 if hi % unit else 0)
        span = hi - lo + 1
        if self.density == "dense":
            return span
        extra = (hi - self.fine_from(lo, hi)) // (2 if self.density == "normal" else 4)
        return min(span, len(initial_points(lo, hi, self)) + 8 + extra)

    def lattice(self, lo: int, hi: int, unit: int = 1) -> list[int]:
        """Anchor widths in [lo, hi], plus hi: where the table is measured in two
        dimensions, and where pruning candidates come from (multiples of ``unit``)."""
        if unit > 1:
            return _scaled(unit_grid(self, unit).lattice, lo, hi, unit)
        st = self.step(hi)
        pts = [a for a in range(st, hi + 1, st) if a >= lo]
        if hi not in pts:
            pts.append(hi)
        return pts


def unit_grid(s: GridSettings, unit: int) -> GridSettings:
    """``s`` for an axis counted in units of ``unit`` channels: the lane width in units
    (at least one: a unit as wide as a SIMD block is a step of its own)."""
    return s if unit <= 1 else replace(s, lanes=max(1, int(s.lanes) // int(unit)))


def unit_range(lo: int, hi: int, unit: int) -> tuple[int, int]:
    """``[lo, hi]`` in whole units: the smallest multiple of ``unit`` >= lo, the largest <= hi."""
    u = max(1, int(unit))
    return max(1, math.ceil(int(lo) / u)), max(1, int(hi) // u)


def snap(c: float, unit: int, lo: int, hi: int) -> int:
    """``c`` rounded to the nearest multiple of ``unit`` inside ``[lo, hi]`` (``hi``, the
    full width, is always allowed)."""
    u = max(1, int(unit))
    a, b = unit_range(lo, hi, u)
    return int(min(max(round(c / u), a), b) * u) if b >= a else int(hi)


def _scaled(fn, lo: int, hi: int, unit: int, *args) -> list[int]:  # noqa: ANN001
    a, b = unit_range(lo, hi, unit)
    out = {k * unit for k in fn(a, b, *args)} if b >= a else set()
    return sorted(out | {int(hi)})


def initial_points(lo: int, hi: int, s: GridSettings, unit: int = 1) -> list[int]:
    """The first widths to measure on an axis ``[lo, hi]`` (sorted, unique; multiples
    of ``unit``)."""
    if unit > 1:
        return _scaled(lambda a, b: initial_points(a, b, unit_grid(s, unit)), lo, hi, unit)
    lo, hi = max(1, int(lo)), int(hi)
    if hi <= lo:
        return [hi]
    if s.density == "dense":
        return list(range(lo, hi + 1))
    lane = max(1, int(s.lanes))
    step = s.step(hi)
    pts = {lo, hi, max(lo, hi - 1)}
    fine = s.fine_from(lo, hi)
    for a in range(step, hi + 1, step):
        if a < lo:
            continue
        if a < hi / 8 and (a // step) % 2:
            continue  # far below the full width: every second anchor only
        pts.add(a)
        if a >= fine and a < hi:
            for b in range(a, min(a + step, hi), lane):  # every lane anchor in the fine region
                pts.add(b)
                pts.add(b + 1)  # the first width of the next block: where a step shows
                if lane >= 4 and b + lane // 2 < hi:
                    pts.add(b + lane // 2)  # mid-block: sub-lane patterns (e.g. multiples of 4)
    if lo < step:
        pts.add(min(hi, step))
    return sorted(p for p in pts if lo <= p <= hi)


def coarse_values(lo: int, hi: int, s: GridSettings, unit: int = 1) -> list[int]:
    """Rows/columns of the coarse 2-D grid: the full width and 3/4, 1/2, 1/4, 1/8 of it
    snapped to anchor multiples (lattice widths, where pruning lands; multiples of ``unit``)."""
    if unit > 1:
        return _scaled(lambda a, b: coarse_values(a, b, unit_grid(s, unit)), lo, hi, unit)
    lo, hi = max(1, int(lo)), int(hi)
    lane = s.step(hi)
    vals = {hi}
    for f in (0.75, 0.5, 0.25, 0.125, 0.0625)[: max(0, s.grid_2d - 1)]:
        v = max(lane, int(round(hi * f / lane)) * lane)
        if lo <= v < hi:
            vals.add(v)
    return sorted(vals)


def check_points(key: str, lattice_in: list[int], lattice_out: list[int], lo_in: int, hi_in: int,
                 lo_out: int, hi_out: int, n: int, unit_in: int = 1, unit_out: int = 1) -> list[tuple[int, int]]:
    """Reproducible pseudo-random held-out (cin, cout) points in the upper 3/4 of each
    range: ``n`` on the lattice (what pruning uses), then one anywhere (any multiple of
    the axis' unit)."""
    out: list[tuple[int, int]] = []

    def pick(vals: list[int], h: bytes) -> int:
        return vals[int.from_bytes(h, "little") % len(vals)]

    for i in range(n + 1):
        h = hashlib.sha256(f"{key}#{i}".encode()).digest()
        if i < n:
            li = [v for v in lattice_in if v >= hi_in // 4] or lattice_in
            lo_ = [v for v in lattice_out if v >= hi_out // 4] or lattice_out
            out.append((pick(li, h[:4]), pick(lo_, h[4:8])))
        else:
            a, b = max(lo_in, hi_in // 4), max(lo_out, hi_out // 4)
            ins = [c for c in range(a, hi_in + 1) if c % unit_in == 0] or [hi_in]
            outs = [c for c in range(b, hi_out + 1) if c % unit_out == 0] or [hi_out]
            out.append((pick(ins, h[:4]), pick(outs, h[4:8])))
    return out


class Staircase:
    """Latency along one channel axis from measured points (``{width: ms}``).

    An interval between consecutive measured widths is *confirmed* (one step, linear
    interpolation allowed) when the two ends and one measured neighbour are collinear
    within ``tol`` (relative); adjacent widths (one ``unit`` apart) are trivially confirmed.
    """

    def __init__(self, lo: int, hi: int, points: Mapping[int, float], tol: float, unit: int = 1) -> None:
        self.lo, self.hi = int(lo), int(hi)
        self.unit = max(1, int(unit))
        self.tol = float(tol)
        self.xs = sorted(int(x) for x in points)
        self.ys = [float(points[x]) for x in self.xs]
        self._confirmed = [self._confirm(i) for i in range(len(self.xs) - 1)]

    # ---- analysis --------------------------------------------------------------------
    def _collinear(self, i: int, j: int, k: int) -> bool:
        xs, ys = self.xs, self.ys
        if i < 0 or k >= len(xs):
            return False
        t = (xs[j] - xs[i]) / (xs[k] - xs[i])
        mid = ys[i] + t * (ys[k] - ys[i])
        return abs(ys[j] - mid) <= self.tol * max(ys[j], mid)

    def _confirm(self, i: int) -> bool:
        if self.xs[i + 1] - self.xs[i] <= self.unit:
            return True
        return self._collinear(i - 1, i, i + 1) or self._collinear(i, i + 1, i + 2)

    def _interval(self, c: int) -> int:
        """Index i of the interval [xs[i], xs[i+1]] holding c (c strictly inside)."""
        return bisect.bisect_left(self.xs, c) - 1

    def known(self, c: int) -> bool:
        """Measured, or inside a confirmed interval."""
        if not self.xs:
            return False
        j = bisect.bisect_left(self.xs, c)
        if j < len(self.xs) and self.xs[j] == c:
            return True
        i = j - 1
        return 0 <= i < len(self._confirmed) and self._confirmed[i]

    def value(self, c: int) -> float:
        """Measured value, linear inside an interval, proportional below the range."""
        xs, ys = self.xs, self.ys
        if not xs:
            raise ValueError("no measured points")
        j = bisect.bisect_left(xs, c)
        if j < len(xs) and xs[j] == c:
            return ys[j]
        if j == 0:  # below the lowest measured width: scale towards zero work
            return ys[0] * max(c, 0) / xs[0] if xs[0] > 0 else ys[0]
        if j >= len(xs):
            return ys[-1] * c / xs[-1]
        t = (c - xs[j - 1]) / (xs[j] - xs[j - 1])
        return ys[j - 1] + t * (ys[j] - ys[j - 1])

    def unconfirmed(self) -> list[tuple[int, int]]:
        return [(self.xs[i], self.xs[i + 1]) for i, ok in enumerate(self._confirmed) if not ok]

    def steps(self) -> list[int]:
        """Widths ``w`` measured together with ``w + 1`` where ``w + 1`` is slower by
        more than the tolerance: the fast side of a located step."""
        out = []
        for i in range(len(self.xs) - 1):
            if self.xs[i + 1] == self.xs[i] + self.unit and self.ys[i + 1] > self.ys[i] * (1 + self.tol):
                out.append(self.xs[i])
        return out

    def refinement(self, budget: int, start: int | None = None) -> list[int]:
        """Widths to measure next inside every unconfirmed interval above ``start``,
        those nearest the full width first, within ``budget`` measured points."""
        room = budget - len(self.xs)
        if room <= 0:
            return []
        lo = self.lo if start is None else start
        todo: list[int] = []
        for p, q in reversed(self.unconfirmed()):
            if q <= lo:
                continue
            # small gaps: everything inside; larger: both ends and the middle, since steps
            # usually sit right next to a measured anchor (fewer rounds trips to the device)
            u = self.unit
            first, last = (p // u + 1) * u, ((q - 1) // u) * u  # the multiples of u strictly inside
            if last < first:
                continue
            inner = range(first, q, u) if q - p <= 4 * u else (first, snap((p + q) / 2, u, first, last), last)
            todo += [c for c in inner if c not in todo]
        return sorted(todo[:room])

    def spikes(self) -> list[int]:
        """Measured widths that stick out from two close neighbours which agree with each
        other: likely a burst of noise, worth re-measuring before trusting as a step."""
        out = []
        xs, ys = self.xs, self.ys
        for j in range(1, len(xs) - 1):
            a, b = ys[j - 1], ys[j + 1]
            if abs(a - b) > self.tol * max(a, b):
                continue
            ref = (a + b) / 2
            if abs(ys[j] - ref) > 2 * self.tol * ref:
                out.append(xs[j])
        return out

    def coverage(self) -> float:
        """Fraction of widths in [lo, hi] that are measured or in a confirmed interval."""
        span = self.hi - self.lo + 1
        if span <= 0 or not self.xs:
            return 0.0
        unknown = sum(q - p - 1 for p, q in self.unconfirmed())
        unknown += max(0, self.xs[0] - self.lo) + max(0, self.hi - self.xs[-1])
        return 1.0 - unknown / span
