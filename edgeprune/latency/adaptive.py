"""The latency model pruning searches with, and the two ways it learns from the device
while the search runs: :class:`AdaptiveLatency`.

A table (measured in full, or predicted by the device model, :mod:`~.predicted`) is a
belief; the device is the truth. Two things go wrong when a search trusts the belief
blindly, both measured on this project's host: a search over noisy tables picks the
widths where the tables had their luckiest low points (widths 56, 112, 120, 184 ...,
predicted 0.50x, measured 0.70x), and a predicted table is off for layers unlike the
suite. So the search's answer is checked before it is trusted:

* :meth:`confirm`: every layer point the chosen widths use is measured if it was only
  predicted, and measured again if it was timed only once (a lucky low point cannot
  decide); the table and predictor are rebuilt, and the caller searches again when the
  prediction of its choice moved;
* :meth:`verify`: the pruned variant is timed end to end next to the full model (one
  bundle, interleaved rounds: the measured *fraction* is free of the host's drift);
* :meth:`learn`: a measured variant joins the calibration variants (stored with the
  model's measurements in the table file), so the remainder model is fitted on it and
  the next search knows what this region of widths really costs.

NetAdapt measures every proposal; this measures the few the search settles on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgeprune.latency.endtoend import measure_against_full
from edgeprune.latency.entry import LatencyEntry
from edgeprune.latency.layer_bundle import layer_job
from edgeprune.latency.lut import LatencyTable, Point
from edgeprune.latency.points import REMEASURE_ROUNDS
from edgeprune.latency.predictor import LatencyPredictor, ModelMeasurements, VariantMeasurement
from edgeprune.latency.recorder import PointRecorder
from edgeprune.latency.settings import ProfileSettings
from edgeprune.prune.space import PruneSpace

if TYPE_CHECKING:
    from edgeprune.latency.measurer import BundleMeasurer
    from edgeprune.models.base import LoadedModel

Log = Callable[[str], None]


@dataclass
class VariantCheck:
    """A pruned variant timed end to end beside the full model (raw ms, same bundle).
    ``ratios`` are its per-round paired ratios to the full model (every bundle it was
    timed in); ``rounds`` the same in the profile's unit (what :meth:`AdaptiveLatency.learn`
    stores)."""

    widths: dict[str, int]
    pruned_ms: float
    full_ms: float
    predicted_fraction: float
    rounds: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    bundles: int = 1

    @property
    def fraction(self) -> float:
        return self.pruned_ms / self.full_ms

    def interval(self, confidence: float = 0.9) -> tuple[float, float]:
        """Where the true fraction lies (the median's order-statistic interval of the
        paired ratios, :func:`~edgeprune.bench.stats.median_interval`)."""
        from edgeprune.bench.stats import median_interval

        return median_interval(self.ratios, confidence) if self.ratios else (self.fraction, self.fraction)

    def to_dict(self) -> dict[str, Any]:
        lo, hi = self.interval()
        return {"measured_fraction": round(self.fraction, 4), "predicted_fraction": round(self.predicted_fraction, 4),
                "pruned_ms": round(self.pruned_ms, 4), "full_ms": round(self.full_ms, 4),
                "interval_90": [round(lo, 4), round(hi, 4)], "rounds": len(self.ratios), "bundles": self.bundles}


class AdaptiveLatency:
    """``predict`` / ``candidates`` of the current predictor, plus :meth:`confirm`,
    :meth:`verify` and :meth:`learn` (see the module docstring). ``make_table`` rebuilds
    the table from the recorder's entries (a :class:`LatencyTable` or a
    :class:`~edgeprune.latency.predicted.PredictedTable`)."""

    def __init__(self, model: "LoadedModel", space: PruneSpace, make_table: Callable[[], Any],
                 measurements: ModelMeasurements, fingerprint: str, recorder: PointRecorder,
                 measurer: "BundleMeasurer", settings: ProfileSettings, log: Log) -> None:
        self.model, self.space, self.make_table = model, space, make_table
        self.measurements = measurements
        self.fingerprint = fingerprint
        self.recorder, self.measurer, self.settings, self.log = recorder, measurer, settings, log
        self.confirmed: set[str] = set()
        self.checks: list[VariantCheck] = []
        self.points_confirmed = 0
        self._rebuild()

    def _rebuild(self) -> None:
        self.table = self.make_table()
        self.predictor = LatencyPredictor(self.space, self.table, self.measurements)

    # ---- LatencyModel --------------------------------------------------------------------
    def predict(self, widths: Mapping[str, int]) -> float:
        return self.predictor.predict(widths)

    def candidates(self, group: str) -> list[int]:
        return self.predictor.candidates(group)

    def predict_without(self, layers, widths: Mapping[str, int] | None = None) -> float:
        """The model without the named layers (depth pruning; :meth:`LatencyPredictor.predict_without`)."""
        return self.predictor.predict_without(layers, widths)

    # ---- learning from the device ---------------------------------------------------------
    def _points(self, widths: Mapping[str, int]) -> dict[str, tuple[Point, Any]]:
        """The layer points ``widths`` uses; a group with a ``unit`` is read at whole units
        (the strategies' candidates are; a width off them has no buildable layer)."""
        from edgeprune.latency.grid import snap

        groups = self.space.groups
        full = {**self.space.full_widths(), **widths}
        for g, w in full.items():
            u = groups[g].unit if g in groups else 1
            if u > 1 and w % u and w != groups[g].size:
                full[g] = snap(w, u, max(u, groups[g].min_size), groups[g].size)
        out: dict[str, tuple[Point, Any]] = {}
        for layer in self.space.layers:
            fam = self.table.family_of[layer.name]
            p = fam.point(*layer.dims(full))
            out.setdefault(p.signature, (p, fam.layer))
        return out

    def confirm(self, widths: Mapping[str, int]) -> int:
        """Measure the layer points ``widths`` uses that are only predicted, and once more
        those timed in a single batch of rounds (each point is confirmed once); rebuild.
        Returns how many points were measured."""
        entries = self.recorder.entries
        new, again = [], []
        for sig, (p, layer) in self._points(widths).items():
            if sig in self.confirmed:
                continue
            e = entries.get(sig)
            if e is None or e.partial:
                new.append(layer_job(p, layer, self.recorder.key.timing))
            elif e.remeasured == 0 and len(e.rounds) <= self.settings.rounds:
                again.append(layer_job(p, layer, self.recorder.key.timing))
            self.confirmed.add(sig)
        if not new and not again:
            return 0
        self.log(f"confirming the chosen widths: {len(new)} point(s) measured, {len(again)} re-measured")
        if new:
            self.recorder.measure(new, "new", self.settings.rounds, self.settings.series(), "confirming widths")
        if again:
            self.recorder.measure(again, "remeasure", REMEASURE_ROUNDS, self.settings.series(), "re-measuring widths")
        self.points_confirmed += len(new) + len(again)
        self._rebuild()
        return len(new) + len(again)

    def verify(self, widths: Mapping[str, int], previous: VariantCheck | None = None) -> VariantCheck:
        """Time the variant pruned to ``widths`` end to end next to the full model
        (alternating series: :mod:`~edgeprune.latency.endtoend`). With ``previous`` (a check
        of the same widths), the new rounds are pooled with its rounds: one check, timed
        longer, replacing ``previous`` (the caller asks when its verdict was not clear)."""
        import statistics

        from edgeprune.errors import BenchError

        m = measure_against_full(self.measurer, self.model, self.space, {"pruned": dict(widths)}, self.settings,
                                 "pruned model end to end" + (" (again)" if previous is not None else ""))
        if "pruned" not in m.timings:
            raise BenchError(f"cannot time the pruned model end to end: {m.errors.get('pruned', 'no result')}")
        full_pred = self.predict(self.space.full_widths())
        ratios, fraction, full_ms, bundles = m.ratios("pruned"), m.fraction("pruned"), m.full.ms, 1
        if previous is not None:
            ratios = previous.ratios + ratios
            fraction = statistics.median(ratios)
            full_ms = statistics.median([previous.full_ms, m.full.ms])
            bundles = previous.bundles + 1
            if self.checks and self.checks[-1] is previous:
                self.checks.pop()
        check = VariantCheck(dict(widths), fraction * full_ms, full_ms, self.predict(widths) / full_pred,
                             rounds=[r * self.measurements.full.ms for r in ratios], ratios=list(ratios),
                             bundles=bundles)
        self.checks.append(check)
        return check

    def learn(self, check: VariantCheck) -> None:
        """Add a measured variant to the calibration (in the profile's unit: its measured
        fraction of the full model times the full model as profiled), store it, refit."""
        rounds = check.rounds or [check.fraction * self.measurements.full.ms]
        entry = dataclasses.replace(LatencyEntry.from_rounds(rounds, runs=0),
                                    ms=check.fraction * self.measurements.full.ms)
        self.measurements.variants.append(VariantMeasurement(dict(check.widths), entry))
        self.recorder.save({}, {self.fingerprint: {**self.measurements.to_dict(), "space": self.space.to_dict()}})
        self._rebuild()

    def recalibrate(self) -> None:
        """Measure the full model and the calibration variants again, now (the machine's
        state changed since they were measured), store them and refit the remainder."""
        m = self.measurements
        got = measure_against_full(self.measurer, self.model, self.space,
                                   {f"cal{i}": v.widths for i, v in enumerate(m.variants)}, self.settings,
                                   "model + calibration variants (again)")
        full = self.recorder.unit.entry(got.full)
        self.measurements = ModelMeasurements(
            fingerprint=self.fingerprint, name=m.name, full=full,
            variants=[VariantMeasurement(v.widths, got.entry(f"cal{i}", full)) for i, v in enumerate(m.variants)
                      if f"cal{i}" in got.timings])
        self.recorder.save({}, {self.fingerprint: {**self.measurements.to_dict(), "space": self.space.to_dict()}})
        self._rebuild()

    # ---- for reports -------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {**self.predictor.describe(), "points_confirmed": self.points_confirmed,
                "variant_checks": [c.to_dict() for c in self.checks],
                "table": "predicted" if not isinstance(self.table, LatencyTable) else "measured"}
