"""What a profile and a validation return: :class:`ProfileResult` (the predictor and how
the table was obtained), :class:`ValidationReport` (predicted vs measured variants), and
:class:`ProfileInterrupted` (what an interrupted profile kept).

Plain records with ``to_dict`` for ``--json``; the orchestration that fills them is
:mod:`edgeprune.flows.profile`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeprune.errors import Interrupted, signal_name
from edgeprune.latency.lut import LatencyTable
from edgeprune.latency.predictor import LatencyPredictor
from edgeprune.latency.store import TableKey

if TYPE_CHECKING:
    from edgeprune.latency.adaptive import AdaptiveLatency


@dataclass
class ProfileResult:
    predictor: LatencyPredictor
    table: LatencyTable
    key: TableKey
    table_path: Path
    points_used: int
    points_measured: int
    points_reused: int
    model_measured: bool
    seconds: float
    bundles: int
    failures: dict[str, str]
    model: str
    fingerprint: str
    reference_ms: float | None = None
    #: series the steady gate marked unsteady (re-timing did not find the steady state)
    unsteady_series: int = 0
    #: points an interrupted run had timed in only some rounds, completed by this one
    points_completed: int = 0
    #: where the layer latencies come from: "model" (the device model + this model's own
    #: points) or "full" (a measured table of every layer; settings.TABLE_MODES)
    tables: str = "full"
    #: the latency model pruning searches with (confirms widths, verifies variants)
    adaptive: "AdaptiveLatency | None" = None
    notes: list[str] = field(default_factory=list)
    device_model: dict[str, Any] | None = None  # points per op kind of the device model used

    def note(self) -> str:
        """One line on how the table was obtained (for a pruning run's notes and the
        results database)."""
        k = self.key
        done = f" ({self.points_completed} completed after an interrupted run)" if self.points_completed else ""
        src = "device model + latency table" if self.tables == "model" else "latency table"
        return (f"{src} ({k.backend} {k.backend_version}, {k.threads} thread(s), {k.timing} timing on "
                f"{k.target}/{k.device}): {self.points_used} point(s) used, {self.points_measured} measured now{done}, "
                f"{self.points_reused} reused in {self.seconds:.0f} s; {self.table_path}")

    def layer_rows(self) -> list[dict[str, Any]]:
        p = self.predictor
        full = p.space.full_widths()
        rows = []
        for layer in p.space.layers:
            t = self.table.table(layer.name)
            ci, co = layer.dims(full)
            groups = [g for g in (layer.in_group, layer.out_group) if g]
            rows.append({
                "layer": layer.name, "kind": layer.kind + (" dw" if layer.depthwise else ""),
                "shape": f"{ci}->{co}" + (f" @{layer.input_hw[0]}x{layer.input_hw[1]}" if layer.input_hw else ""),
                "mode": t.family.mode, "ms": t.ms(ci, co), "points": len(t.points()),
                "steps": {name: st.steps() for name, st in t.axes.items()},
                "candidates": {g: p.candidates(g) for g in dict.fromkeys(groups) if g in p.space.groups},
                "check_error": t.check_error, "shared_with": [m for m in t.family.members if m != layer.name],
            })
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "fingerprint": self.fingerprint, "key": self.key.to_dict(),
            "table": str(self.table_path), "points_used": self.points_used, "points_measured": self.points_measured,
            "points_reused": self.points_reused, "points_completed": self.points_completed,
            "model_measured": self.model_measured,
            "seconds": round(self.seconds, 2), "profile_seconds": round(self.seconds, 2), "table_source": self.tables,
            "device_model": self.device_model, "notes": list(self.notes),
            "bundles": self.bundles, "failures": self.failures,
            "reference_ms": self.reference_ms, "unsteady_series": self.unsteady_series,
            "families": len(self.table.families), "layers": len(self.predictor.space.layers),
            "predictor": self.predictor.describe(),
            "tables": [t.summary() for t in self.table.tables.values()],
        }


@dataclass
class ValidationReport:
    """Predicted vs measured latency of random pruned variants.

    The unpruned model is measured in the same rounds as the variants (interleaved), and
    ``stats`` compare predictions with measurements rescaled to the profiling session by
    it: ``measured x (full model at profiling / full model now)``, i.e. the error of the
    predicted *latency relative to the unpruned model*, which is what pruning budgets use
    (``--budget 0.5`` = half the unpruned latency). This removes the machine's drift
    between profiling and validation with a reference that is the same kind of work, run
    as long, as the variants. ``unit_stats`` use the bundle's small reference layer
    instead, and ``raw_stats`` the raw times, which on a shared machine also contain the
    drift (``drift``: how much faster or slower the full model runs now than at profiling)."""

    model: str
    backend: str
    method: str
    widths_mode: str
    variants: list[dict[str, Any]]
    stats: dict[str, float]
    raw_stats: dict[str, float]
    flops_stats: dict[str, float]
    unit_stats: dict[str, float]
    full_ms_profile: float
    full_ms_now: float | None
    drift: float | None
    seconds: float
    busy_cpus: float | None = None  # CPUs other processes kept busy when validation started (local)
    full_rounds_ms: list[float] = field(default_factory=list)  # the unpruned model's raw rounds (validation)
    unsteady_series: int = 0  # series the steady gate marked unsteady
    #: the drift that had the model's end-to-end calibration measured again (None: it was not)
    recalibrated_drift: float | None = None
    #: how the profile judged here was obtained: seconds, points measured for this model, source
    profile_seconds: float | None = None
    points_measured: int | None = None
    tables: str = "full"

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.stats,
            "profile_seconds": None if self.profile_seconds is None else round(self.profile_seconds, 2),
            "points_measured": self.points_measured, "table_source": self.tables,
            "recalibrated_drift": self.recalibrated_drift,
            "variants": self.variants,
            "model": self.model, "backend": self.backend, "calibration": self.method, "widths": self.widths_mode,
            "raw": self.raw_stats, "flops_predictor": self.flops_stats, "reference_unit": self.unit_stats,
            "full_ms_at_profile": self.full_ms_profile, "full_ms_now": self.full_ms_now, "drift": self.drift,
            "full_rounds_ms": [round(r, 4) for r in self.full_rounds_ms], "unsteady_series": self.unsteady_series,
            "seconds": round(self.seconds, 2), "busy_cpus": None if self.busy_cpus is None else round(self.busy_cpus, 2),
        }


class ProfileInterrupted(Interrupted):
    """A profile stopped by Ctrl-C, SIGTERM or SIGHUP. Every point it measured is already
    in the table file (``table_path``), those timed in only some rounds marked so the
    next run completes them: a rerun measures only what is missing."""

    def __init__(self, stop: Interrupted, stage: str, table_path: Path, kept: int, cut_short: int, cached: int) -> None:
        self.stage, self.table_path = stage, table_path
        self.points_kept, self.points_cut_short, self.points_cached = kept, cut_short, cached
        if kept:
            what = f"{kept} measured point(s) kept in the latency table; a rerun measures only the rest"
        else:
            what = f"no point measured yet; the latency table keeps its {cached} point(s)"
        super().__init__(stop.signum, what)

    def summary(self) -> str:
        short = (f" ({self.points_cut_short} timed in only some rounds: the next run completes them)"
                 if self.points_cut_short else "")
        return (f"interrupted while {self.stage}: {self.points_kept} point(s) measured by this run kept in "
                f"{self.table_path}{short}")

    def to_dict(self) -> dict[str, Any]:
        return {"interrupted": self.stage, "signal": signal_name(self.signum), "table": str(self.table_path),
                "points_kept": self.points_kept, "points_cut_short": self.points_cut_short,
                "points_cached_before": self.points_cached}
