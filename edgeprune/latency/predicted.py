"""A model's latency table answered by the device model: ``ms(cin, cout)`` for every
layer without measuring the model's own grid.

:class:`PredictedTable` has the interface of :class:`~edgeprune.latency.lut.LatencyTable`
(families, ``table(layer).ms``, ``complete``, ``grid``), so the predictor, its
calibration on whole-model variants, the strategies and the reports work unchanged.
For each family (layers sharing one shape, :class:`~edgeprune.latency.lut.Family`):

* a point measured in this context (any model's, the suite's, or this profile's) is
  used as measured: the file is the one source of measurements;
* any other width is the device model's prediction times the family's *correction*:
  the measured / predicted ratios of the family's measured points, weighted by how close
  they are in (log cin, log cout). A layer the suite never saw often sits a few percent
  off the regressor's surface as a whole (its own cache footprint, its own kernel
  choice); one measured width fixes that level for its neighbours, and the lattice
  features of the device model keep the staircase between them;
* a family whose op kind the device model does not know (no suite point of that kind)
  gets a measured :class:`~edgeprune.latency.lut.LayerTable` (today's full table), and
  says so: those are the only families the profile must measure densely.

Uncertainty: :meth:`PredictedLayerTable.uncertainty` is the device model's relative
spread at that width, 0 where measured, shrunk near measured points of the family. The
profiler measures where it is high, within ``--profile-budget``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from edgeprune.latency.entry import LatencyEntry
from edgeprune.latency.grid import GridSettings
from edgeprune.latency.lut import Family, FamilyTables, LayerTable, Point, families
from edgeprune.prune.space import PruneSpace

if TYPE_CHECKING:
    from edgeprune.latency.devmodel import DeviceModel

#: distance (sum of |log width ratio| over the two axes) at which a measured point's
#: correction has fallen to 1/e: at half the width it still carries ~1/4 of its weight
CORRECTION_SCALE = 0.5
#: weight of "no correction" against the measured points' ratios: a single measured
#: point right at the query (weight 1) corrects it to 95 %
CORRECTION_PRIOR = 0.05


class PredictedLayerTable:
    """``ms(ci, co)`` of one family from measured points and the device model."""

    def __init__(self, family: Family, entries: Mapping[str, LatencyEntry], model: "DeviceModel",
                 grid: GridSettings, predicted: Mapping[str, Any],
                 index: Mapping[tuple[str, str], list[tuple[int, int, str]]]) -> None:
        self.family = family
        self._index = index
        self.entries = entries
        self.model = model
        self.grid = grid
        self._pred = dict(predicted)  # signature -> Prediction (prefetched lattice)
        self._memo: dict[tuple[int, int], float] = {}
        self.axes: dict[str, Any] = {}  # no measured staircase: the device model carries the steps
        self.missing: list[Point] = []
        self.check_error: float | None = None
        self.offlattice_error: float | None = None
        self._ratios: list[tuple[float, float, float]] = []
        for ci, co, e in self.measured_points():
            p = self._prediction(ci, co)
            if e.ms > 0 and p.ms > 0 and math.isfinite(p.ms):
                self._ratios.append((math.log(ci), math.log(co), math.log(e.ms / p.ms)))

    # ---- what is measured ------------------------------------------------------------------
    def measured_points(self) -> list[tuple[int, int, LatencyEntry]]:
        """The family's widths with a complete measured entry, from the one index."""
        f = self.family
        out = []
        for ci, co, sig in self._index.get(_shape_key(f), []):
            if not (f.lo_in <= ci <= f.n_in and f.lo_out <= co <= f.n_out):
                continue
            if f.mode in ("depthwise", "tied") and ci != co:
                continue
            if f.mode == "out" and ci != f.n_in or f.mode == "in" and co != f.n_out:
                continue
            e = self.entries.get(sig)
            if e is not None and not e.partial:
                out.append((ci, co, e))
        return out

    def _prediction(self, ci: int, co: int) -> Any:
        sig = self.family.layer.signature(ci, co)
        p = self._pred.get(sig)
        if p is None:
            p = self._pred[sig] = self.model.predict(sig)
        return p

    def _correction(self, ci: int, co: int) -> tuple[float, float]:
        """(log correction, total weight of the measured points near ``(ci, co)``)."""
        if not self._ratios:
            return 0.0, 0.0
        x, y = math.log(ci), math.log(co)
        num = den = 0.0
        for xi, yi, r in self._ratios:
            w = math.exp(-(abs(x - xi) + abs(y - yi)) / CORRECTION_SCALE)
            num += w * r
            den += w
        return num / (CORRECTION_PRIOR + den), den

    # ---- LayerTable interface --------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return True

    def ms(self, ci: int, co: int) -> float:
        key = (ci, co)
        v = self._memo.get(key)
        if v is not None:
            return v
        e = self.entries.get(self.family.layer.signature(ci, co))
        if e is not None and not e.partial:
            v = e.ms
        else:
            v = self._prediction(ci, co).ms * math.exp(self._correction(ci, co)[0])
        self._memo[key] = v
        return v

    def known(self, ci: int, co: int) -> bool:
        """Measured (the predictor's notion of "rests on measurement")."""
        e = self.entries.get(self.family.layer.signature(ci, co))
        return e is not None and not e.partial

    def uncertainty(self, ci: int, co: int) -> float:
        """The device model's relative spread at ``(ci, co)``, 0 where measured, shrunk
        by the family's measured points nearby (they fix the level there)."""
        if self.known(ci, co):
            return 0.0
        p = self._prediction(ci, co)
        _, near = self._correction(ci, co)
        return float(p.uncertainty) / (1.0 + 2.0 * near)

    def refinement(self) -> list[Point]:
        return []

    def spikes(self) -> list[Point]:
        return []

    def points(self) -> list[Point]:
        return [self.family.point(ci, co) for ci, co, _ in self.measured_points()]

    def summary(self) -> dict[str, Any]:
        f = self.family
        return {"family": f.key, "mode": f.mode, "layers": list(f.members), "source": "device model",
                "points": len(self._ratios),
                "correction_pct": round(100 * (math.exp(self._correction(f.n_in, f.n_out)[0]) - 1), 2)}


def _shape_key(f: Family) -> tuple[str, str]:
    split = f.layer.split_signature(f.layer.signature())
    return (split[0], split[3]) if split else ("", "")


def index_entries(entries: Mapping[str, LatencyEntry]) -> dict[tuple[str, str], list[tuple[int, int, str]]]:
    """Measured signatures grouped by layer shape (everything but the two widths)."""
    from edgeprune.prune.space import PrunableLayer

    idx: dict[tuple[str, str], list[tuple[int, int, str]]] = {}
    for sig in entries:
        split = PrunableLayer.split_signature(sig)
        if split is not None:
            kind, ci, co, rest = split
            idx.setdefault((kind, rest), []).append((ci, co, sig))
    return idx


class PredictedTable(FamilyTables):
    """Every family of a prune space: predicted from the device model where it knows the
    op kind, a measured :class:`LayerTable` where it does not (``measured_families``)."""

    def __init__(self, space: PruneSpace, entries: Mapping[str, LatencyEntry], model: "DeviceModel",
                 grid: GridSettings) -> None:
        self.space, self.entries, self.grid, self.model = space, entries, grid, model
        self.families, self.family_of = families(space)
        fams = self.families
        index = index_entries(entries)
        # one batched prediction for every lattice width of every family (what the
        # strategies ask for); other widths are predicted one by one, memoised
        wanted: dict[str, list[str]] = {k: [f.layer.signature(ci, co) for ci, co in lattice_widths(f, grid)]
                                        for k, f in fams.items()}
        flat = [s for sigs in wanted.values() for s in sigs]
        preds = dict(zip(flat, model.predict_many(flat))) if flat else {}
        self.tables: dict[str, Any] = {}
        self.measured_families: list[str] = []
        for k, f in fams.items():
            full = preds.get(f.layer.signature(f.n_in, f.n_out))
            if full is None or not full.known_kind or not math.isfinite(full.ms):
                self.tables[k] = LayerTable(f, entries, grid)
                self.measured_families.append(k)
            else:
                self.tables[k] = PredictedLayerTable(f, entries, model, grid, {s: preds[s] for s in wanted[k]},
                                                     index)

    def measured_space(self) -> PruneSpace:
        """The prune space restricted to the layers of measured families (for today's
        table planner, :func:`edgeprune.latency.points.complete_table`)."""
        names = {m for k in self.measured_families for m in self.families[k].members}
        return PruneSpace(groups=self.space.groups, layers=[l for l in self.space.layers if l.name in names])


def lattice_widths(f: Family, grid: GridSettings) -> list[tuple[int, int]]:
    """The (cin, cout) widths the strategies ask a family for: lattice widths on its
    varying axes (the other at full width), and for two varying axes their grid."""
    li = grid.lattice(f.lo_in, f.n_in, f.unit_in)
    lo = grid.lattice(f.lo_out, f.n_out, f.unit_out)
    if f.mode == "fixed":
        return [(f.n_in, f.n_out)]
    if f.mode == "out":
        return [(f.n_in, c) for c in lo]
    if f.mode == "in":
        return [(c, f.n_out) for c in li]
    if f.mode in ("depthwise", "tied"):
        return [(c, c) for c in lo]
    return [(a, b) for a in li for b in lo]


#: a device counts as busy when other processes keep more than this share of its CPUs busy
BUSY_SHARE = 0.25


def is_busy(busy_cpus: float | None) -> bool:
    """Whether ``busy_cpus`` (:func:`edgeprune.host.busy_cores`) makes this host busy."""
    from edgeprune import host

    return busy_cpus is not None and busy_cpus > BUSY_SHARE * host.cores()


def fit_device_model(store: Any, key: Any, entries: Mapping[str, LatencyEntry], lanes: int, device: Any,
                     log: Any) -> tuple["DeviceModel | None", str]:
    """The device model of ``key``'s context fitted on every complete point of its table
    file, or (None, why) when no device model was built there. A model whose points were
    measured while the device was busy is used with a warning that says so (its
    predictions carry that load), never silently."""
    import statistics

    from edgeprune.latency import devmodel_store
    from edgeprune.latency.devmodel import DeviceModel

    info = devmodel_store.find(store, key)
    if info is None:
        return None, (f"no device model for {key.backend} {key.backend_version} on {key.device} ({key.threads} "
                      f"thread(s), {key.timing} timing): measuring a full table of every layer. Build one once with "
                      f"`edgeprune device-model build --target {key.target} --backend {key.backend}` and new models "
                      "are profiled in minutes")
    good = {k: e for k, e in entries.items() if not e.partial and e.ms > 0}
    dm = DeviceModel.fit(good, lanes)
    busy = [e.busy for e in good.values()]
    if busy and device.kind == "local" and is_busy(statistics.median(busy)):
        log(f"warning: the device model's points were measured while other processes kept "
            f"{statistics.median(busy):.1f} CPU(s) busy: its predictions include that load; rebuild it on a quiet "
            f"device (edgeprune device-model build --target {key.target} --backend {key.backend})")
    return dm, ""


def device_model_summary(dm: "DeviceModel") -> dict[str, Any]:
    kinds = dm.kinds()
    return {"points": int(sum(kinds.values())), "kinds": dict(kinds)}
