"""The latency lookup table: measured points per layer signature, and per-layer tables
that answer ``ms(cin, cout)`` without interpolating across a step.

A :class:`Family` is the set of layers that share one table: the same op with the same
full shape (``PrunableLayer.signature()``) and the same varying axes. Repeated blocks
(ResNet stages, MobileNet bottlenecks) therefore cost one table, and because measured
points are stored by *point signature* (``signature(cin, cout)``), two different
families that meet at the same shape share that measurement too.

A :class:`LayerTable` combines, for one family:

* one :class:`~edgeprune.latency.grid.Staircase` per varying axis, measured with the
  other axis at full width (dense near the steps, refined adaptively);
* for layers whose input *and* output widths vary (most convs), a coarse 2-D grid on
  the fast side of the steps. ``ms(ci, co) = in(ci) * out(co) / full * C(ci, co)``: the
  two staircases carry the fine step structure, ``C`` (bilinear over the measured grid
  ratios, exactly 1 on the two measured axes) corrects the smooth part that is not a
  product (fixed overheads, cache effects). Held-out check points measure how well this
  works per table (``check_error``).

The points themselves are :class:`~edgeprune.latency.entry.LatencyEntry`; deciding
what to measure next (missing, refinement, noisy points) is :mod:`~edgeprune.latency.points`.
"""

from __future__ import annotations

import bisect
import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from edgeprune.latency.entry import LatencyEntry
from edgeprune.latency.grid import GridSettings, Staircase, check_points, coarse_values, initial_points
from edgeprune.prune.space import PrunableLayer, PruneSpace


@dataclass(frozen=True)
class Point:
    """A (cin, cout) point of a family, with its storage key."""

    family: str
    cin: int
    cout: int
    signature: str


class Family:
    """Layers sharing one table. ``mode`` is which widths vary: ``fixed``, ``in``,
    ``out``, ``both``, ``depthwise`` or ``tied`` (cin = cout = one group's width)."""

    def __init__(self, layer: PrunableLayer, mode: str, lo_in: int, lo_out: int, unit_in: int = 1,
                 unit_out: int = 1) -> None:
        self.layer = layer
        self.mode = mode
        self.n_in, self.n_out = layer.in_channels, layer.out_channels
        self.lo_in, self.lo_out = lo_in, lo_out
        #: widths of a varying axis are multiples of its group's ``unit`` (heads, conv groups)
        self.unit_in, self.unit_out = max(1, int(unit_in)), max(1, int(unit_out))
        units = f"|u{self.unit_in}x{self.unit_out}" if self.unit_in > 1 or self.unit_out > 1 else ""
        self.key = f"{layer.signature()}|{mode}|lo{lo_in}x{lo_out}{units}"
        self.members: list[str] = []

    def point(self, ci: int, co: int) -> Point:
        return Point(self.key, ci, co, self.layer.signature(ci, co))

    def __repr__(self) -> str:
        return f"Family({self.key}, {len(self.members)} layer(s))"


def family_of(layer: PrunableLayer, space: PruneSpace) -> Family:
    groups = space.groups

    def var(gid: str | None) -> bool:
        return gid is not None and gid in groups and groups[gid].prunable

    def lo(gid: str | None, full: int) -> int:
        g = groups.get(gid) if gid else None
        return max(1, min(full, max(g.min_size, g.unit))) if g else full

    def unit(gid: str | None) -> int:
        g = groups.get(gid) if gid else None
        return max(1, int(getattr(g, "unit", 1))) if g is not None and g.prunable else 1

    if layer.depthwise:
        gid = layer.out_group or layer.in_group
        if var(gid):
            return Family(layer, "depthwise", lo(gid, layer.in_channels), lo(gid, layer.out_channels), unit(gid),
                          unit(gid))
        return Family(layer, "fixed", layer.in_channels, layer.out_channels)
    vi, vo = var(layer.in_group), var(layer.out_group)
    ui, uo = unit(layer.in_group), unit(layer.out_group)
    if vi and vo and layer.in_group == layer.out_group:  # a stacked RNN layer (hidden -> hidden), attention
        return Family(layer, "tied", lo(layer.in_group, layer.in_channels), lo(layer.out_group, layer.out_channels),
                      ui, uo)
    mode = "both" if vi and vo else "in" if vi else "out" if vo else "fixed"
    return Family(layer, mode, lo(layer.in_group, layer.in_channels) if vi else layer.in_channels,
                  lo(layer.out_group, layer.out_channels) if vo else layer.out_channels, ui if vi else 1,
                  uo if vo else 1)


def families(space: PruneSpace) -> tuple[dict[str, Family], dict[str, Family]]:
    """The families of ``space`` by key, and each layer's family (layers of one shape share one)."""
    fams: dict[str, Family] = {}
    of: dict[str, Family] = {}
    for layer in space.layers:
        f = family_of(layer, space)
        f = fams.setdefault(f.key, f)
        f.members.append(layer.name)
        of[layer.name] = f
    return fams, of


def _noise_tol(entries: Iterable[LatencyEntry], rel_tol: float) -> float:
    spreads = [e.spread for e in entries if len(e.rounds) >= 2]
    if not spreads:
        return rel_tol
    return max(rel_tol, 1.4 * statistics.median(spreads))


class LayerTable:
    """``ms(cin, cout)`` for one family, built from the measured entries."""

    def __init__(self, family: Family, entries: Mapping[str, LatencyEntry], grid: GridSettings) -> None:
        self.family = f = family
        self.grid = grid
        self.axes: dict[str, Staircase] = {}
        self._axis_point: dict[str, Callable[[int], Point]] = {}
        self._memo: dict[tuple[int, int], float] = {}
        self.missing: list[Point] = []
        self.check_error: float | None = None  # worst relative error on held-out lattice points
        self.offlattice_error: float | None = None  # the same for one point off the lattice
        self.rows: list[int] = []
        self.cols: list[int] = []
        self.ratio: list[list[float]] = []
        self.checks: list[tuple[int, int, float]] = []  # (ci, co, measured ms)
        self._full_ms: float | None = None

        def lookup(p: Point) -> LatencyEntry | None:
            e = entries.get(p.signature)
            if e is None:
                self.missing.append(p)
            return e

        axes = {"out": ("out", f.lo_out, f.n_out, f.unit_out, lambda c: f.point(f.n_in, c)),
                "in": ("in", f.lo_in, f.n_in, f.unit_in, lambda c: f.point(c, f.n_out)),
                "depthwise": ("both", f.lo_in, f.n_in, f.unit_out, lambda c: f.point(c, c))}
        wanted = {"out": ["out"], "in": ["in"], "both": ["out", "in"], "depthwise": ["depthwise"],
                  "tied": ["depthwise"]}.get(f.mode, [])
        for which in wanted:
            name, lo, hi, unit, pt = axes[which]
            vals, ents = {}, []
            for c in initial_points(lo, hi, grid, unit):
                e = lookup(pt(c))
                if e is not None:
                    vals[c] = e.ms
                    ents.append(e)
            for c in range(lo, hi + 1):  # refinement points measured earlier belong here too
                if c not in vals and (c % unit == 0 or c == hi):
                    e = entries.get(pt(c).signature)
                    if e is not None:
                        vals[c] = e.ms
                        ents.append(e)
            self.axes[name] = Staircase(lo, hi, vals, _noise_tol(ents, grid.rel_tol), unit)
            self._axis_point[name] = pt
        if f.mode == "fixed":
            e = lookup(f.point(f.n_in, f.n_out))
            self._full_ms = e.ms if e is not None else None

        if f.mode == "both":  # coarse 2-D correction grid + held-out checks
            self.rows = coarse_values(f.lo_in, f.n_in, grid, f.unit_in)
            self.cols = coarse_values(f.lo_out, f.n_out, grid, f.unit_out)
            grid_ms = {(r, c): lookup(f.point(r, c)) for r in self.rows for c in self.cols}
            pts = check_points(f.key, grid.lattice(f.lo_in, f.n_in, f.unit_in),
                               grid.lattice(f.lo_out, f.n_out, f.unit_out), f.lo_in, f.n_in, f.lo_out, f.n_out,
                               grid.checks_2d, f.unit_in, f.unit_out)
            checks = [(ci, co, lookup(f.point(ci, co))) for ci, co in pts]
            if not self.missing:
                self.ratio = [[grid_ms[(r, c)].ms / self._rank1(r, c) for c in self.cols] for r in self.rows]  # type: ignore[union-attr]
                self.checks = [(ci, co, e.ms) for ci, co, e in checks if e is not None]
                errs = [abs(self.ms(ci, co) / m - 1) for ci, co, m in self.checks]
                if len(errs) > 1:
                    self.check_error = max(errs[:-1])  # the last one is the off-lattice point
                if errs:
                    self.offlattice_error = errs[-1]

    # ---- lookup ----------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return not self.missing

    def _rank1(self, ci: int, co: int) -> float:
        a_in, a_out = self.axes["in"], self.axes["out"]
        return a_in.value(ci) * a_out.value(co) / a_out.value(self.family.n_out)

    def _correction(self, ci: int, co: int) -> float:
        """Bilinear interpolation of the measured grid ratios, with the *slice latencies*
        as coordinates instead of widths: two widths on one step of an axis have the same
        slice latency, so they get the same correction (interpolating in widths would
        smear a step of the ratio over the whole interval between grid rows)."""
        rows, cols, R = self.rows, self.cols, self.ratio
        if not R:
            return 1.0
        a_in, a_out = self.axes["in"], self.axes["out"]

        def locate(xs: list[int], x: int, axis: Staircase) -> tuple[int, int, float]:
            if x <= xs[0]:
                return 0, 0, 0.0
            if x >= xs[-1]:
                return len(xs) - 1, len(xs) - 1, 0.0
            j = bisect.bisect_right(xs, x)
            lo_v, hi_v, v = axis.value(xs[j - 1]), axis.value(xs[j]), axis.value(x)
            if abs(hi_v - lo_v) > 1e-12:
                t = (v - lo_v) / (hi_v - lo_v)
            else:
                t = (x - xs[j - 1]) / (xs[j] - xs[j - 1])
            return j - 1, j, min(1.0, max(0.0, t))

        i0, i1, ti = locate(rows, ci, a_in)
        j0, j1, tj = locate(cols, co, a_out)
        top = R[i0][j0] * (1 - tj) + R[i0][j1] * tj
        bot = R[i1][j0] * (1 - tj) + R[i1][j1] * tj
        return top * (1 - ti) + bot * ti

    def ms(self, ci: int, co: int) -> float:
        """Latency in ms at ``ci -> co`` channels (memoised: strategies ask repeatedly)."""
        key = (ci, co)
        v = self._memo.get(key)
        if v is not None:
            return v
        mode = self.family.mode
        if mode == "fixed":
            v = float(self._full_ms or 0.0)
        elif mode == "out":
            v = self.axes["out"].value(co)
        elif mode == "in":
            v = self.axes["in"].value(ci)
        elif mode in ("depthwise", "tied"):
            v = self.axes["both"].value(co)
        else:
            v = self._rank1(ci, co) * self._correction(ci, co)
        self._memo[key] = v
        return v

    def known(self, ci: int, co: int) -> bool:
        """Whether ``ms(ci, co)`` rests on measured points of one step (not estimated)."""
        mode = self.family.mode
        if mode == "fixed":
            return self._full_ms is not None
        if mode == "out":
            return self.axes["out"].known(co)
        if mode == "in":
            return self.axes["in"].known(ci)
        if mode in ("depthwise", "tied"):
            return self.axes["both"].known(co)
        return self.axes["in"].known(ci) and self.axes["out"].known(co)

    # ---- planning --------------------------------------------------------------------
    def refinement(self) -> list[Point]:
        """Points to measure next so that unconfirmed intervals near the full width get resolved."""
        if self.missing:
            return []
        out = []
        for name, st in self.axes.items():
            budget = self.grid.budget(st.lo, st.hi, st.unit)
            out += [self._axis_point[name](c)
                    for c in st.refinement(budget, self.grid.fine_from(st.lo, st.hi, st.unit))]
        return out

    def spikes(self) -> list[Point]:
        return [self._axis_point[name](c) for name, st in self.axes.items() for c in st.spikes()]

    def points(self) -> list[Point]:
        """Every point this table uses (measured or missing)."""
        f = self.family
        pts: list[Point] = list(self.missing)
        for name, st in self.axes.items():
            pts += [self._axis_point[name](c) for c in st.xs]
        pts += [f.point(r, c) for r in self.rows for c in self.cols]
        pts += [f.point(ci, co) for ci, co, _ in self.checks]
        if f.mode == "fixed":
            pts.append(f.point(f.n_in, f.n_out))
        return pts

    def summary(self) -> dict[str, Any]:
        d: dict[str, Any] = {"family": self.family.key, "mode": self.family.mode,
                             "layers": list(self.family.members), "points": len({p.signature for p in self.points()})}
        for name, st in self.axes.items():
            d[f"{name}_points"] = len(st.xs)
            d[f"{name}_steps"] = st.steps()
            d[f"{name}_coverage"] = round(st.coverage(), 4)
            d[f"{name}_tol"] = round(st.tol, 4)
        if self.check_error is not None:
            d["check_error"] = round(self.check_error, 4)
        if self.offlattice_error is not None:
            d["offlattice_check_error"] = round(self.offlattice_error, 4)
        return d


class FamilyTables:
    """Lookups shared by every whole-space table: ``tables`` (family key -> a layer table),
    ``family_of`` (layer name -> family) and ``entries`` are set by the subclass."""

    tables: dict[str, Any]
    family_of: dict[str, Family]
    entries: Mapping[str, LatencyEntry]

    def table(self, layer_name: str) -> Any:
        return self.tables[self.family_of[layer_name].key]

    @property
    def complete(self) -> bool:
        return all(t.complete for t in self.tables.values())

    def used_signatures(self) -> set[str]:
        return {p.signature for t in self.tables.values() for p in t.points() if p.signature in self.entries}


class LatencyTable(FamilyTables):
    """All families of a prune space over one set of measured entries."""

    def __init__(self, space: PruneSpace, entries: Mapping[str, LatencyEntry], grid: GridSettings) -> None:
        self.space = space
        self.grid = grid
        self.entries = entries
        self.families, self.family_of = families(space)
        fams = self.families
        self.tables: dict[str, LayerTable] = {k: LayerTable(f, entries, grid) for k, f in fams.items()}


