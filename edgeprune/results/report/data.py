"""What a report shows, independent of how it is rendered: :class:`ReportData` (the
focus run's cells, their history, the runs, latency-table staircases, Pareto points)
and the status of each cell, most urgent first."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeprune import __version__
from edgeprune.results.evaluate import NEW_SERIES, NO_BASELINE
from edgeprune.results.records import Cell, Measurement, Run, VerdictRecord, cell_name

#: status of a cell in the summary, most urgent first
STATUS_ORDER = ("regression", "failed", "unknown", "improved", "new-series", "no-baseline", "ok", "skipped")
STATUS_LABEL = {
    "regression": "regression", "failed": "failed", "unknown": "inconclusive", "improved": "faster",
    "new-series": "new series", "no-baseline": "no baseline yet", "ok": "ok", "skipped": "not timed",
}
STATUS_EMOJI = {
    "regression": "🔴", "failed": "⛔", "unknown": "🟡", "improved": "🟢", "new-series": "🔵",
    "no-baseline": "⚪", "ok": "✅", "skipped": "⚪",
}

#: (model, target, device, backend) -> [(label, median ms, accuracy, is the unpruned model)]
ParetoPoints = dict[tuple[str, str, str, str], list[tuple[str, float, float, bool]]]


@dataclass
class Point:
    """One run of one cell (re-measurements pooled) on the time axis: the median and
    the 10th percentile the plot's band reaches down to."""

    run_id: int
    time: str
    median_ms: float
    p10_ms: float
    samples: int
    attempts: int
    series: str | None
    accuracy: float | None
    verdict: str | None = None
    ratio: float | None = None


@dataclass
class StairAxis:
    """One varying channel axis of a layer's latency table, as the predictor uses it.

    ``widths``/``ms``: the measured points (each the fast-state median of its rounds);
    ``rounds``: every round behind each point, so the noise of a point shows as noise;
    ``curve_*``: what the predictor answers for every width (measured, or linear inside
    an interval), ``tol`` the relative difference the table treats as noise,
    ``estimated`` the intervals no measurement confirmed, ``spikes`` points that stick
    out from two agreeing neighbours while their own rounds disagree (likely a burst of
    noise), ``confirmed`` points that stick out too but on which several rounds agree
    (real: e.g. a faster kernel at that width), ``steps`` the fast side of each located
    step."""

    label: str  # "output channels (input 32)"
    full: int  # the layer's width in the model
    widths: list[int]
    ms: list[float]
    rounds: list[list[float]]
    curve_widths: list[int]
    curve_ms: list[float]
    tol: float
    estimated: list[tuple[int, int]] = field(default_factory=list)
    spikes: list[int] = field(default_factory=list)
    confirmed: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)


@dataclass
class LayerStairs:
    """The latency table of one layer of the reported model (layers with the same shape
    share one table: ``layers`` lists them all)."""

    layers: list[str]
    shape: str  # "conv 3×3 32→64 @ 16×16"
    mode: str  # which widths vary: out, in, both, depthwise, tied
    full_ms: float | None
    axes: list[StairAxis]

    @property
    def title(self) -> str:
        more = f" (+{len(self.layers) - 1} same-shape layer{'s' * (len(self.layers) > 2)})" if len(self.layers) > 1 else ""
        return f"{self.layers[0]}{more} · {self.shape}"


@dataclass
class StairSet:
    """The staircases of one model in one latency table (target, device, backend)."""

    model: str
    context: str  # "onnxruntime 1.32.0 on host/local · 2 threads · kernel timing"
    updated: str
    layers: list[LayerStairs]
    total_layers: int  # layers of the model (``layers`` may be the costliest of them)
    lanes: int = 8


@dataclass
class CellRow:
    cell: Cell
    measurements: list[Measurement]  # this run's attempts, oldest first
    verdicts: list[VerdictRecord]
    history: list[Point] = field(default_factory=list)

    @property
    def name(self) -> str:
        return cell_name(self.cell)

    @property
    def model(self) -> str:
        return self.cell[0]

    @property
    def target(self) -> str:
        return self.cell[1]

    @property
    def device(self) -> str:
        return self.cell[2]

    @property
    def backend(self) -> str:
        return self.cell[3]

    @property
    def variant(self) -> str:
        return self.cell[4]

    def verdict(self, kind: str) -> VerdictRecord | None:
        return next((v for v in self.verdicts if v.kind == kind), None)

    @property
    def m(self) -> Measurement:
        ok = [x for x in self.measurements if x.ok]
        return ok[0] if ok else self.measurements[-1]

    @property
    def pooled(self) -> np.ndarray:
        return np.concatenate([np.asarray(x.times_ms) for x in self.measurements if x.ok and x.times_ms] or [np.zeros(0)])

    @property
    def median_ms(self) -> float | None:
        t = self.pooled
        return float(np.median(t)) if t.size else None

    @property
    def p90_ms(self) -> float | None:
        t = self.pooled
        return float(np.percentile(t, 90)) if t.size else None

    @property
    def cv(self) -> float | None:
        t = self.pooled
        return float(t.std(ddof=1) / t.mean()) if t.size > 1 and t.mean() > 0 else None

    @property
    def failed(self) -> bool:
        return not any(x.ok for x in self.measurements)

    @property
    def regressions(self) -> list[VerdictRecord]:
        return [v for v in self.verdicts if v.regression]

    @property
    def status(self) -> str:
        if self.regressions:
            return "regression"
        if self.failed:
            return "failed"
        lat = self.verdict("latency")
        v = lat.verdict if lat else None
        return {"UNKNOWN": "unknown", "FASTER": "improved", NEW_SERIES: "new-series", NO_BASELINE: "no-baseline",
                "SKIPPED": "skipped"}.get(v or "", "ok")

    @property
    def error(self) -> str | None:
        return None if not self.failed else (self.measurements[-1].error or "failed")

    def to_dict(self) -> dict[str, Any]:
        m = self.m
        return {
            "cell": self.name, "model": self.model, "target": self.target, "device": self.device,
            "backend": self.backend, "variant": self.variant, "status": self.status,
            "median_ms": self.median_ms, "p90_ms": self.p90_ms, "cv": self.cv,
            "samples": int(self.pooled.size), "attempts": len(self.measurements),
            "accuracy": m.accuracy, "parity_verified": m.verified, "parity_max_diff": m.parity_max_diff,
            "backend_version": m.backend_version, "emulated": m.emulated, "model_hash": m.model_hash,
            "artifact_hash": m.artifact_hash, "measurement_ids": [x.id for x in self.measurements],
            "error": self.error,
            "verdicts": {v.kind: {k: val for k, val in v.to_dict().items() if k not in ("cell", "cell_name")}
                         for v in self.verdicts},
            "history": [p.__dict__ for p in self.history],
        }


@dataclass
class ReportData:
    title: str
    generated: str
    db: str
    since: str | None
    run: Run | None
    rows: list[CellRow]
    runs: list[Run]
    staircases: list[StairSet] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # why an optional section is missing
    settings: dict[str, Any] = field(default_factory=dict)
    pareto: ParetoPoints = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(1 for r in self.rows if r.status == status)

    @property
    def counts(self) -> dict[str, int]:
        return {s: self.count(s) for s in STATUS_ORDER}

    @property
    def regressions(self) -> list[tuple[CellRow, VerdictRecord]]:
        return [(r, v) for r in self.rows for v in r.regressions]

    @property
    def headline(self) -> str:
        n = len(self.rows)
        regs, failed = self.count("regression"), self.count("failed")
        if not n:
            if self.run is not None:
                return f"run #{self.run.id} ({self.run.kind}) {self.run.status}: nothing measured"
            return "no measurements in this window"
        parts = []
        if regs:
            parts.append(f"{regs} regression{'s' * (regs != 1)}")
        if failed:
            parts.append(f"{failed} failed")
        if self.count("unknown"):
            parts.append(f"{self.count('unknown')} inconclusive")
        if self.count("skipped"):
            parts.append(f"{self.count('skipped')} not timed")
        if self.count("improved"):
            parts.append(f"{self.count('improved')} faster")
        if not parts and all(r.status in ("no-baseline", "new-series") for r in self.rows):
            return f"{n} cell{'s' * (n != 1)} measured, too few earlier runs to judge yet"
        if not parts:
            parts.append("no regressions")
        return ", ".join(parts) + f" in {n} cell{'s' * (n != 1)}"

    @property
    def level(self) -> str:
        """The banner's colour, by the worst verdict: ``bad`` (red) for a regression, a
        cell that could not be measured or a failed run; ``warn`` (amber) for an inconclusive or untimed
        cell or a run that did not complete; ``info`` (neutral) when every cell is a first
        run or a new series (nothing to compare with yet); ``good`` (green) otherwise."""
        if self.count("regression") or self.count("failed") or (self.run is not None and self.run.status == "failed"):
            return "bad"
        if self.count("unknown") or self.count("skipped") or (
                self.run is not None and self.run.status not in ("complete", "running")):
            return "warn"
        if self.rows and all(r.status in ("no-baseline", "new-series") for r in self.rows):
            return "info"
        return "good"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "edgeprune-report", "version": 1, "title": self.title, "generated": self.generated,
            "edgeprune_version": __version__, "db": self.db, "since": self.since,
            "run": self.run.to_dict() if self.run else None, "headline": self.headline, "level": self.level,
            "counts": self.counts,
            "regressions": [{"cell": r.name, "kind": v.kind, "verdict": v.verdict, "detail": v.detail,
                             "ratio": v.ratio, "ci": [v.ci_low, v.ci_high]} for r, v in self.regressions],
            "cells": [r.to_dict() for r in self.rows],
            "runs": [{k: v for k, v in r.to_dict().items() if k != "env"} for r in self.runs],
            "settings": self.settings,
        }
