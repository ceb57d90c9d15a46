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
"""

from __future__ import annotations

import bisect
import datetime as _dt
import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edgeprune.bench.rounds import FAST_STATE_TOL, fast_rounds, fast_state_ms
from edgeprune.latency.grid import GridSettings, Staircase, check_points, coarse_values, initial_points
from edgeprune.prune.space import PrunableLayer, PruneSpace

#: a point is re-measured (more interleaved rounds) when its rounds disagree by more than
#: this (and much more than is typical for the table), at most MAX_REMEASURE times
REMEASURE_SPREAD = 0.15
MAX_REMEASURE = 2
#: rounds added per re-measurement
REMEASURE_ROUNDS = 3


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def robust_ms(rounds: Iterable[float]) -> float:
    """The latency a table stores for a point: the median of its rounds in the fastest
    state seen (each round is the median of a short series of inferences). The one place
    this estimator is chosen.

    Why not the median of all rounds: this 2-core VM switches into a slow state for 5-8 s
    at a time (~28 % of the time, benchmarks/host_noise.py). Single-threaded work is not
    affected at all (a 1-thread conv pinned to either CPU: 0.505-0.51 ms throughout); every
    synchronisation between the two inference threads is (the hypervisor does not run both
    vCPUs at once), so the slow state *adds* time per parallel op: a 2-thread conv runs
    1.18x slower, mobilenetv2 (~60 ops) 1.65x. The median of 3-5 rounds lands in whichever
    state the majority of a point's rounds saw, different for each point, and no
    multiplicative reference can undo an additive penalty. The fast state is the one a
    dedicated board is always in, and with rounds spread over a bundle at least one of a
    point's rounds almost always catches it (all 3 slow: ~2 %); points whose fast level is
    seen only once are measured again (``LatencyEntry.spread``). Rounds within
    FAST_STATE_TOL of the fastest are that state (its own noise is a few %); their median,
    not the minimum alone, is stored, so one lucky round does not set the value.
    """
    return fast_state_ms(rounds)


@dataclass
class LatencyEntry:
    """One measured point. ``rounds`` are the medians of interleaved measurement rounds
    (each a short series of timed inferences); ``ms`` is :func:`robust_ms` of them."""

    ms: float
    rounds: list[float] = field(default_factory=list)
    runs: int = 0
    measured: str = ""
    scale: float = 1.0  # reference normalisation applied to the raw rounds (see profiler)
    remeasured: int = 0  # how many times more rounds were added (noisy points)

    @property
    def spread(self) -> float:
        """How uncertain ``ms`` is: (max - min) / median of the fast-state rounds, or, when
        only one round reached the fast state, the gap from it to the next round (the fast
        level is then unconfirmed, and a large gap gets the point measured again). 0 for
        one round."""
        if len(self.rounds) < 2:
            return 0.0
        fast = fast_rounds(self.rounds)
        if len(fast) == 1:
            lo, nxt = sorted(self.rounds)[:2]
            return (nxt - lo) / lo if lo > 0 else 0.0
        mid = statistics.median(fast)
        return (max(fast) - min(fast)) / mid if mid > 0 else 0.0

    def merged(self, rounds: list[float], runs: int, scale: float = 1.0) -> "LatencyEntry":
        allr = list(self.rounds) + list(rounds)
        return LatencyEntry(ms=robust_ms(allr), rounds=allr, runs=self.runs + runs, measured=now_iso(),
                            scale=scale, remeasured=self.remeasured + 1)

    @classmethod
    def from_rounds(cls, rounds: list[float], runs: int, scale: float = 1.0) -> "LatencyEntry":
        return cls(ms=robust_ms(rounds), rounds=list(rounds), runs=runs, measured=now_iso(), scale=scale)

    def rescaled(self, factor: float) -> "LatencyEntry":
        return LatencyEntry(ms=self.ms * factor, rounds=[r * factor for r in self.rounds], runs=self.runs,
                            measured=self.measured, scale=self.scale * factor, remeasured=self.remeasured)

    def to_dict(self) -> dict[str, Any]:
        d = {"ms": round(self.ms, 6), "rounds": [round(r, 6) for r in self.rounds], "runs": self.runs,
             "measured": self.measured, "scale": round(self.scale, 6)}
        if self.remeasured:
            d["remeasured"] = self.remeasured
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LatencyEntry":
        rounds = [float(r) for r in d.get("rounds", [])]
        # ``ms`` is derived: recomputed from the stored rounds, so tables written with an
        # older estimator read the same way as new ones
        return cls(ms=robust_ms(rounds) if rounds else float(d["ms"]), rounds=rounds, runs=int(d.get("runs", 0)),
                   measured=str(d.get("measured", "")), scale=float(d.get("scale", 1.0)),
                   remeasured=int(d.get("remeasured", 0)))


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

    def __init__(self, layer: PrunableLayer, mode: str, lo_in: int, lo_out: int) -> None:
        self.layer = layer
        self.mode = mode
        self.n_in, self.n_out = layer.in_channels, layer.out_channels
        self.lo_in, self.lo_out = lo_in, lo_out
        self.key = f"{layer.signature()}|{mode}|lo{lo_in}x{lo_out}"
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
        return max(1, min(full, g.min_size)) if g else full

    if layer.depthwise:
        gid = layer.out_group or layer.in_group
        if var(gid):
            return Family(layer, "depthwise", lo(gid, layer.in_channels), lo(gid, layer.out_channels))
        return Family(layer, "fixed", layer.in_channels, layer.out_channels)
    vi, vo = var(layer.in_group), var(layer.out_group)
    if vi and vo and layer.in_group == layer.out_group:  # e.g. a stacked RNN layer: hidden -> hidden
        return Family(layer, "tied", lo(layer.in_group, layer.in_channels), lo(layer.out_group, layer.out_channels))
    mode = "both" if vi and vo else "in" if vi else "out" if vo else "fixed"
    return Family(layer, mode, lo(layer.in_group, layer.in_channels) if vi else layer.in_channels,
                  lo(layer.out_group, layer.out_channels) if vo else layer.out_channels)


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

        axes = {"out": ("out", f.lo_out, f.n_out, lambda c: f.point(f.n_in, c)),
                "in": ("in", f.lo_in, f.n_in, lambda c: f.point(c, f.n_out)),
                "depthwise": ("both", f.lo_in, f.n_in, lambda c: f.point(c, c))}
        wanted = {"out": ["out"], "in": ["in"], "both": ["out", "in"], "depthwise": ["depthwise"],
                  "tied": ["depthwise"]}.get(f.mode, [])
        for which in wanted:
            name, lo, hi, pt = axes[which]
            vals, ents = {}, []
            for c in initial_points(lo, hi, grid):
                e = lookup(pt(c))
                if e is not None:
                    vals[c] = e.ms
                    ents.append(e)
            for c in range(lo, hi + 1):  # refinement points measured earlier belong here too
                if c not in vals:
                    e = entries.get(pt(c).signature)
                    if e is not None:
                        vals[c] = e.ms
                        ents.append(e)
            self.axes[name] = Staircase(lo, hi, vals, _noise_tol(ents, grid.rel_tol))
            self._axis_point[name] = pt
        if f.mode == "fixed":
            e = lookup(f.point(f.n_in, f.n_out))
            self._full_ms = e.ms if e is not None else None

        if f.mode == "both":  # coarse 2-D correction grid + held-out checks
            self.rows = coarse_values(f.lo_in, f.n_in, grid)
            self.cols = coarse_values(f.lo_out, f.n_out, grid)
            grid_ms = {(r, c): lookup(f.point(r, c)) for r in self.rows for c in self.cols}
            pts = check_points(f.key, grid.lattice(f.lo_in, f.n_in), grid.lattice(f.lo_out, f.n_out),
                               f.lo_in, f.n_in, f.lo_out, f.n_out, grid.checks_2d)
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
            budget = self.grid.budget(st.lo, st.hi)
            out += [self._axis_point[name](c) for c in st.refinement(budget, self.grid.fine_from(st.lo, st.hi))]
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


class LatencyTable:
    """All families of a prune space over one set of measured entries."""

    def __init__(self, space: PruneSpace, entries: Mapping[str, LatencyEntry], grid: GridSettings) -> None:
        self.space = space
        self.grid = grid
        self.entries = entries
        fams: dict[str, Family] = {}
        self.family_of: dict[str, Family] = {}
        for layer in space.layers:
            f = family_of(layer, space)
            f = fams.setdefault(f.key, f)
            f.members.append(layer.name)
            self.family_of[layer.name] = f
        self.families = fams
        self.tables: dict[str, LayerTable] = {k: LayerTable(f, entries, grid) for k, f in fams.items()}

    def table(self, layer_name: str) -> LayerTable:
        return self.tables[self.family_of[layer_name].key]

    @property
    def complete(self) -> bool:
        return all(t.complete for t in self.tables.values())

    def needed(self) -> list[Point]:
        """What to measure next (empty when the table is final): missing planned points,
        then refinement points, then noisy points that deserve more rounds."""
        seen: dict[str, Point] = {}
        for t in self.tables.values():
            for p in t.missing:
                seen.setdefault(p.signature, p)
        if not seen:
            for t in self.tables.values():
                for p in t.refinement():
                    if p.signature not in self.entries:
                        seen.setdefault(p.signature, p)
        return list(seen.values())

    def noisy(self) -> list[Point]:
        """Measured points whose interleaved rounds disagree: measure them again."""
        out: dict[str, Point] = {}
        used = [self.entries[s] for s in self.used_signatures()]
        typical = statistics.median([e.spread for e in used]) if used else 0.0
        # on a busy machine every point is noisy: only re-measure the outliers among them
        limit = max(REMEASURE_SPREAD, 3 * typical)
        for t in self.tables.values():
            spikes = {p.signature for p in t.spikes()}
            for p in t.points():
                e = self.entries.get(p.signature)
                if e is None or e.remeasured >= MAX_REMEASURE:
                    continue
                # a spike (sticks out of two agreeing neighbours) gets one second look
                if e.spread > limit or (p.signature in spikes and e.remeasured == 0):
                    out.setdefault(p.signature, p)
        return list(out.values())

    def used_signatures(self) -> set[str]:
        return {p.signature for t in self.tables.values() for p in t.points() if p.signature in self.entries}


Measure = Callable[[list[Point], bool], Mapping[str, str]]


def complete_table(
    space: PruneSpace,
    entries: dict[str, LatencyEntry],
    grid: GridSettings,
    measure: Measure,
    status: Callable[[LatencyTable, list[Point], bool], None] | None = None,
    max_iterations: int = 200,
) -> tuple[LatencyTable, dict[str, str]]:
    """Measure until the table needs nothing more: planned points, then refinement, then
    noisy points. ``measure(points, remeasure)`` must add what it measured to ``entries``
    and return ``{signature: error}`` for points it could not measure (never retried).
    The plan depends only on ``entries``, so a cached table needs no measurement.
    Returns the final table and the failures."""
    failures: dict[str, str] = {}
    for _ in range(max_iterations):  # a fixpoint; the bound only guards against a planning bug
        table = LatencyTable(space, entries, grid)
        todo = [p for p in table.needed() if p.signature not in failures]
        remeasure = False
        if not todo:
            todo = [p for p in table.noisy() if p.signature not in failures]
            remeasure = True
        if not todo:
            return table, failures
        if status is not None:
            status(table, todo, remeasure)
        failures.update(measure(todo, remeasure))
    return LatencyTable(space, entries, grid), failures
