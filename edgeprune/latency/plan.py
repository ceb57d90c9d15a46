"""Which layer points of a model to measure when the device model predicts the rest,
and how many fit in the profile's time budget.

Order of value (what the profiler measures first):

1. **anchors**: every family at full width. The full width is where the model is
   today, it weighs most in the full model's latency, and one measured point fixes the
   family's level for every width near it (:mod:`~edgeprune.latency.predicted`);
2. **uncertain widths**: lattice widths (where pruning lands) on each family's varying
   axes whose relative uncertainty exceeds the threshold, the most expensive first
   (``predicted ms x uncertainty x layers sharing the family``: an error there moves the
   model's prediction most).

Widths the search then settles on are confirmed by the pruner itself
(:meth:`edgeprune.latency.adaptive.AdaptiveLatency.confirm`), outside this budget.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from edgeprune.latency.lut import Point

if TYPE_CHECKING:
    from edgeprune.latency.measurer import BundleMeasurer
    from edgeprune.latency.predicted import PredictedTable
    from edgeprune.latency.settings import ProfileSettings


#: export + build of one standalone layer graph (not in the measurer's timing cost model)
BUILD_S = 0.1


def anchor_points(table: "PredictedTable") -> list[Point]:
    """The full-width point of every predicted family that is not measured yet."""
    from edgeprune.latency.predicted import PredictedLayerTable

    out = []
    for t in table.tables.values():
        f = t.family
        if isinstance(t, PredictedLayerTable) and not t.known(f.n_in, f.n_out):
            out.append(f.point(f.n_in, f.n_out))
    return out


def axis_widths(t) -> list[tuple[int, int]]:  # noqa: ANN001 - a PredictedLayerTable
    """Lattice widths on the family's varying axes, the other axis at full width."""
    f, g = t.family, t.grid
    if f.mode == "fixed":
        return [(f.n_in, f.n_out)]
    out: list[tuple[int, int]] = []
    if f.mode in ("out", "both"):
        out += [(f.n_in, c) for c in g.lattice(f.lo_out, f.n_out, f.unit_out)]
    if f.mode in ("in", "both"):
        out += [(c, f.n_out) for c in g.lattice(f.lo_in, f.n_in, f.unit_in)]
    if f.mode in ("depthwise", "tied"):
        out += [(c, c) for c in g.lattice(f.lo_out, f.n_out, f.unit_out)]
    return list(dict.fromkeys(out))


def uncertain_points(table: "PredictedTable", threshold: float, skip: Collection[str] = ()) -> list[Point]:
    """Lattice points on the varying axes above ``threshold`` relative uncertainty, the
    costliest uncertainty first; ``skip``: signatures already tried."""
    from edgeprune.latency.predicted import PredictedLayerTable

    scored: list[tuple[float, Point]] = []
    for t in table.tables.values():
        if not isinstance(t, PredictedLayerTable):
            continue
        weight = len(t.family.members)
        for ci, co in axis_widths(t):
            u = t.uncertainty(ci, co)
            if u > threshold:
                p = t.family.point(ci, co)
                if p.signature not in skip:
                    scored.append((t.ms(ci, co) * u * weight, p))
    scored.sort(key=lambda sp: -sp[0])
    return list(dict.fromkeys(p for _, p in scored))


def point_seconds(measurer: "BundleMeasurer", table: "PredictedTable", p: Point, settings: "ProfileSettings") -> float:
    """Estimated device seconds to time ``p`` (the measurer's learned cost model)."""
    layer = table.families[p.family].layer
    return BUILD_S + measurer.job_seconds(float(layer.macs(p.cin, p.cout)), settings.rounds, settings.series())


def within(points: list[Point], seconds_left: float, cost: Callable[[Point], float]) -> list[Point]:
    """The prefix of ``points`` whose estimated cost fits in ``seconds_left``."""
    out, acc = [], 0.0
    for p in points:
        c = cost(p)
        if acc + c > seconds_left:
            break
        out.append(p)
        acc += c
    return out
