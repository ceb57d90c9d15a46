"""Reports rendered from the results database: HTML, Markdown, JSON and JUnit XML.

:func:`gather` reads one *focus run* (by default the newest nightly run, else the newest
run of any kind) plus the history of its cells within ``since``; the renderers turn
that :class:`ReportData` into

- **HTML**: one self-contained file (CSS inline, plots as base64 PNGs): a status banner,
  the summary table, latency over time per device and model with regressions marked,
  the accuracy-vs-latency Pareto front of pruned variants (when there are any), the
  per-layer latency staircases of measured lookup tables (when there are any), run
  history and the detection method;
- **Markdown** for a pull request or a chat message;
- **JSON** for scripts (stable keys);
- **JUnit XML**: one test case per cell; latency, accuracy and parity regressions are
  failures, cells that could not be measured are errors, inconclusive ones skipped.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune import __version__
from edgeprune.results.evaluate import NEW_SERIES, NO_BASELINE, Policy, judge
from edgeprune.results.store import (
    Measurement, ResultsStore, Run, VerdictRecord, cell_name, now, parse_since, parse_time,
)

FORMATS = ("html", "md", "json", "junit")
FILENAMES = {"html": "report.html", "md": "report.md", "json": "report.json", "junit": "junit.xml"}
TEMPLATES = Path(__file__).with_name("templates")

#: status of a cell in the summary, most urgent first
STATUS_ORDER = ("regression", "failed", "unknown", "improved", "new-series", "no-baseline", "ok", "skipped")
STATUS_LABEL = {
    "regression": "regression", "failed": "failed", "unknown": "inconclusive", "improved": "faster",
    "new-series": "new series", "no-baseline": "first run", "ok": "ok", "skipped": "not timed",
}
STATUS_EMOJI = {
    "regression": "🔴", "failed": "⛔", "unknown": "🟡", "improved": "🟢", "new-series": "🔵",
    "no-baseline": "⚪", "ok": "✅", "skipped": "⚪",
}
COLORS = ["#2563eb", "#d97706", "#059669", "#7c3aed", "#db2777", "#0891b2", "#65a30d", "#dc2626"]


# --------------------------------------------------------------------------- data
@dataclass
class Point:
    """One run of one cell (re-measurements pooled) on the time axis."""

    run_id: int
    time: str
    median_ms: float
    p10_ms: float
    p25_ms: float
    p75_ms: float
    samples: int
    attempts: int
    series: str | None
    accuracy: float | None
    verdict: str | None = None
    ratio: float | None = None


@dataclass
class CellRow:
    cell: tuple[str, str, str, str, str]
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
class LutCurve:
    title: str
    axis: str  # "output channels" | "input channels"
    widths: list[int]
    ms: list[float]
    lanes: int | None = None


@dataclass
class ReportData:
    title: str
    generated: str
    db: str
    since: str | None
    run: Run | None
    rows: list[CellRow]
    runs: list[Run]
    luts: list[LutCurve] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    #: (model, target, device, backend) -> [(label, median ms, accuracy, is the unpruned model)]
    pareto: dict[tuple[str, str, str, str], list[tuple[str, float, float, bool]]] = field(default_factory=dict)

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
            return "no measurements in this window"
        parts = []
        if regs:
            parts.append(f"{regs} regression{'s' * (regs != 1)}")
        if failed:
            parts.append(f"{failed} failed")
        if self.count("unknown"):
            parts.append(f"{self.count('unknown')} inconclusive")
        if self.count("improved"):
            parts.append(f"{self.count('improved')} faster")
        if not parts:
            parts.append("no regressions")
        return ", ".join(parts) + f" in {n} cell{'s' * (n != 1)}"

    @property
    def level(self) -> str:
        if self.count("regression"):
            return "bad"
        if self.count("failed") or (self.run is not None and self.run.status not in ("complete", "running")):
            return "warn"
        return "good"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "edgeprune-report", "version": 1, "title": self.title, "generated": self.generated,
            "edgeprune_version": __version__, "db": self.db, "since": self.since,
            "run": self.run.to_dict() if self.run else None, "headline": self.headline, "counts": self.counts,
            "regressions": [{"cell": r.name, "kind": v.kind, "verdict": v.verdict, "detail": v.detail,
                             "ratio": v.ratio, "ci": [v.ci_low, v.ci_high]} for r, v in self.regressions],
            "cells": [r.to_dict() for r in self.rows],
            "runs": [{k: v for k, v in r.to_dict().items() if k != "env"} for r in self.runs],
            "settings": self.settings,
        }


def _points(ms: list[Measurement], verdicts: dict[tuple[int, tuple], VerdictRecord]) -> list[Point]:
    by_run: dict[int, list[Measurement]] = {}
    for m in ms:
        if m.ok and m.times_ms:
            by_run.setdefault(int(m.run_id), []).append(m)  # type: ignore[arg-type]
    pts = []
    for rid, group in by_run.items():
        t = np.concatenate([np.asarray(x.times_ms) for x in group])
        v = verdicts.get((rid, group[0].cell))
        pts.append(Point(
            run_id=rid, time=group[0].created, median_ms=float(np.median(t)),
            p10_ms=float(np.percentile(t, 10)), p25_ms=float(np.percentile(t, 25)), p75_ms=float(np.percentile(t, 75)),
            samples=int(t.size),
            attempts=len(group), series=group[-1].series, accuracy=group[-1].accuracy,
            verdict=v.verdict if v else None, ratio=v.ratio if v else None,
        ))
    return sorted(pts, key=lambda p: p.time)


def gather(
    store: ResultsStore,
    run_id: int | None = None,
    since: str | None = "30d",
    title: str | None = None,
    lut_dirs: Iterable[Path] | None = None,
    policy: Policy | None = None,
) -> ReportData:
    """Collect what a report shows. ``run_id`` None: the newest nightly run, else the
    newest run; its cells' history reaches back ``since`` (``30d``, ``12h``, ISO date)."""
    since_iso = parse_since(since)
    run = store.run(run_id) if run_id is not None else (store.latest_run("nightly") or store.latest_run())
    runs = store.runs(since=since_iso)
    if run is not None and all(r.id != run.id for r in runs):
        runs.insert(0, run)
    all_verdicts = store.verdicts(since=since_iso)
    if run is not None:
        all_verdicts += [v for v in store.verdicts(run_id=run.id) if v.id not in {x.id for x in all_verdicts}]
    lat_by_run = {(int(v.run_id), v.cell): v for v in all_verdicts if v.kind == "latency"}  # type: ignore[arg-type]

    rows: list[CellRow] = []
    if run is not None:
        ms = store.measurements(run_id=run.id)
        stored = [v for v in all_verdicts if v.run_id == run.id]
        cells: dict[tuple, list[Measurement]] = {}
        for m in ms:
            cells.setdefault(m.cell, []).append(m)
        for cell, group in cells.items():
            vs = [v for v in stored if v.cell == cell]
            if not vs:  # a compile/bench run: judge it now against its history
                vs = judge(store, run.id, group, policy or Policy()).verdicts
                if vs and (run.id, cell) not in lat_by_run:
                    lat = next((v for v in vs if v.kind == "latency"), None)
                    if lat is not None:
                        lat_by_run[(run.id, cell)] = lat
            rows.append(CellRow(cell=cell, measurements=group, verdicts=vs))
    for r in rows:
        hist = [m for m in store.measurements(cell=r.cell, since=since_iso)]
        if run is not None:
            hist = [m for m in hist if parse_time(m.created) <= parse_time(run.finished or now())] or hist
        r.history = _points(hist + [m for m in r.measurements if m not in hist], lat_by_run)
    rows.sort(key=lambda r: (STATUS_ORDER.index(r.status), r.device, r.model, r.target, r.backend, r.variant))
    luts = load_luts(lut_dirs, {r.device for r in rows}, {r.target for r in rows})
    pareto = pareto_points(store.measurements(since=since_iso))
    return ReportData(
        title=title or ("edgeprune nightly report" if run is not None and run.kind == "nightly" else "edgeprune report"),
        generated=now(), db=str(store.path), since=since_iso, run=run, rows=rows, runs=runs[:50], luts=luts,
        settings=_settings(rows, policy), pareto=pareto,
    )


def _settings(rows: list[CellRow], policy: Policy | None) -> dict[str, Any]:
    """Detection settings the verdicts were made with (stored with them), else the policy's."""
    if policy is None:
        for r in rows:
            lat = r.verdict("latency")
            if lat is not None and (lat.data or {}).get("settings"):
                return dict(lat.data["settings"])
    return (policy or Policy()).detect.to_dict()


def pareto_points(window: list[Measurement]) -> dict[tuple[str, str, str, str], list[tuple[str, float, float, bool]]]:
    """Latest measured latency and accuracy of each variant of every (model, target,
    device, backend) that has pruned variants in the window."""
    groups = {m.cell[:4] for m in window if m.pruned and m.ok}
    out = {}
    for g in sorted(groups):
        latest: dict[str, Measurement] = {}
        for m in window:  # oldest first: the newest wins
            if m.cell[:4] == g and m.ok and m.median_ms and m.accuracy is not None:
                latest[m.variant] = m
        pts = [(v or "original", float(m.median_ms), float(m.accuracy), not m.pruned)  # type: ignore[arg-type]
               for v, m in sorted(latest.items())]
        if pts and not any(p[3] for p in pts):
            o = next(((m.variant_info or {}).get("original") or {} for m in latest.values()), {})
            lat = (o.get("latency_ms") or {}).get("median")
            if lat and o.get("accuracy") is not None:
                pts.append(("original", float(lat), float(o["accuracy"]), True))
        if len(pts) >= 2:
            out[g] = pts
    return out


# --------------------------------------------------------------------------- LUT files
def _lut_roots(lut_dirs: Iterable[Path] | None) -> list[Path]:
    if lut_dirs is not None:
        return [Path(p) for p in lut_dirs]
    try:
        from edgeprune.latency.store import cache_root

        return [cache_root()]
    except Exception:  # noqa: BLE001 - the latency tables are optional here
        base = os.environ.get("EDGEPRUNE_CACHE")
        return [(Path(base).expanduser() if base else Path.home() / ".cache" / "edgeprune") / "lut"]


_SIG = re.compile(r"^(?P<kind>[a-z]+)-i(?P<cin>\d+)-o(?P<cout>\d+)-(?P<rest>.*)$")


def load_luts(lut_dirs: Iterable[Path] | None, devices: set[str], targets: set[str], max_curves: int = 6) -> list[LutCurve]:
    """Staircases (latency vs channel count) from edgeprune latency-table files.

    Only tables measured for the report's devices/targets (all, when the report has no
    cells); per layer family the axis with the most measured widths is drawn. Unknown
    or unreadable files are skipped: this section is shown only when tables exist.
    """
    curves: list[tuple[int, LutCurve]] = []
    for root in _lut_roots(lut_dirs):
        if not root.is_dir():
            continue
        for f in sorted(root.rglob("*.json")):
            try:
                doc = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(doc, dict) or doc.get("format") != "edgeprune-lut":
                continue
            key = doc.get("key") or {}
            if devices and key.get("device") not in devices and key.get("target") not in targets:
                continue
            fams: dict[str, dict[tuple[int, int], float]] = {}
            for sig, e in (doc.get("entries") or {}).items():
                m = _SIG.match(str(sig))
                if not m or not isinstance(e, dict) or "ms" not in e:
                    continue
                fams.setdefault(f"{m['kind']} {m['rest']}", {})[(int(m["cin"]), int(m["cout"]))] = float(e["ms"])
            ctx = (f"{key.get('backend', '?')} {key.get('backend_version', '')} "
                   f"on {key.get('device', '?')}/{key.get('target', '?')}")
            for fam, pts in fams.items():
                best: tuple[int, LutCurve] | None = None
                for axis, fixed_idx in (("output channels", 0), ("input channels", 1)):
                    groups: dict[int, list[tuple[int, float]]] = {}
                    for (ci, co), ms in pts.items():
                        fixed, var = (ci, co) if fixed_idx == 0 else (co, ci)
                        groups.setdefault(fixed, []).append((var, ms))
                    for fixed, xs in groups.items():
                        if len(xs) >= 4 and (best is None or len(xs) > best[0]):
                            xs.sort()
                            other = "in" if fixed_idx == 0 else "out"
                            best = (len(xs), LutCurve(title=f"{fam} ({other} {fixed}) — {ctx}", axis=axis,
                                                      widths=[x for x, _ in xs], ms=[y for _, y in xs]))
                if best:
                    curves.append(best)
    curves.sort(key=lambda c: -c[0])
    return [c for _, c in curves[:max_curves]]


# --------------------------------------------------------------------------- plots
def _fig_to_b64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", facecolor="white")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _style(ax) -> None:
    ax.grid(True, color="#e5e7eb", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color("#9ca3af")
    ax.tick_params(colors="#374151", labelsize=8.5)


def _mpl():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    return plt, mdates


def latency_figures(data: ReportData) -> list[dict[str, str]]:
    """One PNG per (device, model): median latency of each target/backend over time over
    a band down to the 10th percentile (the fast end the verdicts compare by default;
    the slow tail of a busy machine would flatten everything), regressions marked ▲
    (red), improvements ▼ (green), inconclusive ◆ (amber), environment changes dashed."""
    plt, mdates = _mpl()
    groups: dict[tuple[str, str], list[CellRow]] = {}
    for r in data.rows:
        if r.history:
            groups.setdefault((r.device, r.model), []).append(r)
    out = []
    for (device, model), rows in sorted(groups.items()):
        fig, ax = plt.subplots(figsize=(9.2, 3.1))
        _style(ax)
        span = 0.0
        breaks: set = set()
        for i, r in enumerate(sorted(rows, key=lambda r: (r.target, r.backend, r.variant))):
            color = COLORS[i % len(COLORS)]
            pts = r.history
            xs = [parse_time(p.time) for p in pts]
            if xs:
                span = max(span, (max(xs) - min(xs)).total_seconds())
            med = [p.median_ms for p in pts]
            label = f"{r.backend} · {r.target}" + (f" · {r.variant}" if r.variant else "")
            ax.fill_between(xs, [p.p10_ms for p in pts], med, color=color, alpha=0.15, lw=0)
            ax.plot(xs, med, "-o", color=color, ms=3.5, lw=1.6, label=label)
            for j in range(1, len(pts)):
                if pts[j].series != pts[j - 1].series:
                    breaks.add(xs[j].replace(second=0, microsecond=0))
            for x, p in zip(xs, pts):
                if p.verdict == "SLOWER":
                    ax.plot([x], [p.median_ms], marker="^", ms=11, color="#dc2626", mec="white", mew=1.2, zorder=5)
                    if p.ratio:
                        ax.annotate(f"{p.ratio - 1:+.1%}", (x, p.median_ms), textcoords="offset points", xytext=(0, 9),
                                    ha="center", fontsize=8, color="#b91c1c", fontweight="bold")
                elif p.verdict == "FASTER":
                    ax.plot([x], [p.median_ms], marker="v", ms=10, color="#059669", mec="white", mew=1.2, zorder=5)
                elif p.verdict == "UNKNOWN":
                    ax.plot([x], [p.median_ms], marker="D", ms=7, color="#d97706", mec="white", mew=1, zorder=5)
        for x in sorted(breaks):
            ax.axvline(x, color="#6b7280", ls="--", lw=0.9)
            ax.annotate("environment changed", (x, 0.98), xycoords=("data", "axes fraction"), fontsize=7,
                        color="#6b7280", rotation=90, ha="right", va="top")
        ax.set_ylabel("latency (ms)", fontsize=9, color="#374151")
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(0.0, lo - 0.05 * (hi - lo)), hi + 0.12 * (hi - lo))
        xmin, xmax = ax.get_xlim()
        pad = max((xmax - xmin) * 0.04, 60 / 86400)  # at least a minute each side (units: days)
        ax.set_xlim(xmin - pad, xmax + pad)
        fmt = "%b %d" if span > 3 * 86400 else "%b %d %H:%M" if span > 3 * 3600 else "%H:%M:%S" if span < 600 else "%H:%M"
        ax.xaxis.set_major_formatter(mdates.DateFormatter(fmt))
        if span > 86400:
            ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=8))
        else:  # minutes or hours apart (tests, demos, CI re-runs): plain evenly spaced ticks
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
        fig.autofmt_xdate(rotation=0, ha="center")
        ax.legend(fontsize=8, frameon=False, loc="upper left", ncol=min(4, len(rows)))
        out.append({"title": f"{model} on {device}", "png": _fig_to_b64(fig)})
    return out


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated (lower latency and higher accuracy), by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def pareto_figures(data: ReportData) -> list[dict[str, str]]:
    """Accuracy vs measured latency of pruned variants, per (model, target, device, backend)."""
    plt, _ = _mpl()
    out = []
    for key, pts in data.pareto.items():
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        _style(ax)
        front = pareto_front([(x, y) for _, x, y, _ in pts])
        fx = [pts[i][1] for i in front]
        fy = [pts[i][2] for i in front]
        ax.step(fx, fy, where="post", color="#2563eb", lw=1.4, alpha=0.8, label="Pareto front")
        for i, (label, x, y, orig) in enumerate(pts):
            on = i in front
            ax.scatter([x], [y], s=150 if orig else 46, marker="*" if orig else "o",
                       color="#111827" if orig else ("#2563eb" if on else "#9ca3af"), zorder=4,
                       edgecolor="white", linewidth=0.8)
            ax.annotate(label.replace("pruned ", ""), (x, y), textcoords="offset points", xytext=(6, 4), fontsize=7.5,
                        color="#374151")
        ax.set_xlabel("measured median latency (ms)", fontsize=9)
        ax.set_ylabel("accuracy (%)", fontsize=9)
        ax.legend(fontsize=8, frameon=False, loc="lower right")
        out.append({"title": f"{key[0]} · {key[3]} on {key[2]}/{key[1]}", "png": _fig_to_b64(fig)})
    return out


def lut_figures(data: ReportData) -> list[dict[str, str]]:
    plt, _ = _mpl()
    out = []
    for c in data.luts:
        fig, ax = plt.subplots(figsize=(6.2, 3.0))
        _style(ax)
        ax.step(c.widths, c.ms, where="post", color="#7c3aed", lw=1.3, alpha=0.6)
        ax.plot(c.widths, c.ms, "o", color="#7c3aed", ms=3)
        ax.set_xlabel(c.axis, fontsize=9)
        ax.set_ylabel("latency (ms)", fontsize=9)
        lanes = 8
        for w in range(lanes, max(c.widths) + 1, lanes):
            if w >= min(c.widths):
                ax.axvline(w, color="#e5e7eb", lw=0.6, zorder=0)
        out.append({"title": c.title, "png": _fig_to_b64(fig)})
    return out


# --------------------------------------------------------------------------- text helpers
def fmt_ms(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.3f}" if v < 10 else f"{v:.2f}" if v < 100 else f"{v:.1f}"


def fmt_change(v: VerdictRecord | None) -> str:
    if v is None or v.ratio is None:
        return "–"
    s = f"{v.ratio - 1:+.1%}"
    if v.ci_low is not None and v.ci_high is not None:
        s += f" [{v.ci_low - 1:+.1%}, {v.ci_high - 1:+.1%}]"
    return s


def fmt_pct(v: VerdictRecord | None) -> str:
    return "–" if v is None or v.ratio is None else f"{v.ratio - 1:+.1%}"


def fmt_ci(v: VerdictRecord | None) -> str:
    if v is None or v.ci_low is None or v.ci_high is None:
        return ""
    return f"[{v.ci_low - 1:+.1%}, {v.ci_high - 1:+.1%}]"


def fmt_accuracy(r: CellRow) -> str:
    acc = r.m.accuracy
    if acc is None:
        return "–"
    v = r.verdict("accuracy")
    drop = (v.data or {}).get("drop") if v else None
    return f"{acc:.2f}%" + (f" ({-drop:+.2f})" if drop is not None and abs(drop) >= 0.005 else "")


def fmt_parity(r: CellRow) -> str:
    m = r.m
    if m.verified is None:
        return "–"
    d = f"{m.parity_max_diff:.1e}" if m.parity_max_diff is not None else ""
    return ("pass" if m.verified else "FAIL") + (f" ({d})" if d else "")


def env_lines(env: dict[str, Any]) -> list[tuple[str, str]]:
    libs = env.get("libraries") or {}
    items = [
        ("CPU", f"{env.get('cpu_model') or env.get('cpu') or '?'} · {env.get('cores') or '?'} cores"
                + (f" ({env['cores_usable']} usable)" if env.get("cores_usable") not in (None, env.get("cores")) else "")),
        ("governor", env.get("governor") or "not exposed"),
        ("OS", env.get("distro") or env.get("platform") or env.get("os") or "?"),
        ("kernel", env.get("kernel") or "?"),
        ("Python", env.get("python") or "?"),
        ("libraries", ", ".join(f"{k} {v}" for k, v in sorted(libs.items())) or "–"),
    ]
    return items


# --------------------------------------------------------------------------- renderers
def render_html(data: ReportData) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=jinja2.select_autoescape(["html", "j2"]),
                             trim_blocks=True, lstrip_blocks=True)
    env.filters.update(ms=fmt_ms, change=fmt_change, pct=fmt_pct, ci=fmt_ci, accuracy=fmt_accuracy, parity=fmt_parity)
    run = data.run
    return env.get_template("report.html.j2").render(
        d=data, run=run, rows=data.rows, counts=data.counts, label=STATUS_LABEL,
        latency_figs=latency_figures(data), pareto_figs=pareto_figures(data), lut_figs=lut_figures(data),
        env=env_lines(run.env) if run else [], version=__version__,
        generated=parse_time(data.generated).strftime("%Y-%m-%d %H:%M UTC"),
        started=parse_time(run.started).strftime("%Y-%m-%d %H:%M:%S UTC") if run else "",
        duration=(f"{run.duration_s:.0f} s" if run and run.duration_s is not None else "still running" if run else ""),
        since=parse_time(data.since).strftime("%Y-%m-%d") if data.since else "the beginning",
    )


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def render_markdown(data: ReportData) -> str:
    run = data.run
    emoji = {"bad": "🔴", "warn": "🟠", "good": "✅"}[data.level]
    lines = [f"## {emoji} {data.title}: {data.headline}", ""]
    if run is not None:
        rev = f", git `{run.git_revision[:10]}`" if run.git_revision else ""
        lines.append(f"Run **#{run.id}** ({run.kind}, {run.status}) started {run.started[:19].replace('T', ' ')} UTC"
                     f"{rev}, edgeprune {run.edgeprune_version}.")
        lines.append("")
    if data.regressions:
        lines.append("**Regressions**")
        lines.append("")
        for r, v in data.regressions:
            what = v.detail.split(";")[0] if v.kind == "latency" else v.detail
            lines.append(f"- `{_md_escape(r.name)}` — {v.kind}: {_md_escape(what)}")
        lines.append("")
    failed = [r for r in data.rows if r.status == "failed"]
    if failed:
        lines.append("**Failed cells**")
        lines.append("")
        for r in failed:
            lines.append(f"- `{_md_escape(r.name)}`: {_md_escape((r.error or '')[:300])}")
        lines.append("")
    lines += [
        f"| | cell | median ms | change ({data.settings.get('statistic', 'p10')}) [99% CI] | verdict | accuracy | parity |",
        "|---|---|---:|---|---|---:|---|",
    ]
    for r in data.rows:
        lat = r.verdict("latency")
        lines.append(
            f"| {STATUS_EMOJI[r.status]} | `{_md_escape(r.model)}` {_md_escape(r.backend)} · {_md_escape(r.target)}/"
            f"{_md_escape(r.device)}{' · ' + _md_escape(r.variant) if r.variant else ''} | {fmt_ms(r.median_ms)} | "
            f"{fmt_change(lat)} | {STATUS_LABEL[r.status]}"
            f"{' (' + str(len(r.measurements)) + ' batches)' if len(r.measurements) > 1 else ''} | {fmt_accuracy(r)} | "
            f"{fmt_parity(r)} |"
        )
    s = data.settings
    lines += [
        "",
        f"<sub>Latency verdicts: ratio of {'medians' if s.get('statistic', 'p10') == 'median' else s['statistic'] + ' latencies'}"
        f" vs the last good runs of the same environment; "
        f"regression = ≥ +{s.get('min_effect', 0.03):.0%} with the {s.get('confidence', 0.99):.0%} interval above 1 "
        f"(between-run noise modelled) and Mann–Whitney p < {s.get('alpha', 0.01):g}. "
        f"Generated {data.generated[:16].replace('T', ' ')} UTC from `{data.db}`.</sub>",
        "",
    ]
    return "\n".join(lines)


def render_json(data: ReportData) -> str:
    return json.dumps(data.to_dict(), indent=2, default=str)


def render_junit(data: ReportData) -> str:
    """JUnit XML: a test case per cell; regressions fail, unmeasured cells error."""
    host = (data.run.host or "") if data.run else ""
    suite = ET.Element("testsuite", name=data.title, timestamp=data.generated[:19], hostname=host)
    failures = errors = skipped = 0
    total_time = 0.0
    props = ET.SubElement(suite, "properties")
    if data.run is not None:
        for k, v in (("run_id", data.run.id), ("status", data.run.status), ("git_revision", data.run.git_revision),
                     ("edgeprune_version", data.run.edgeprune_version)):
            ET.SubElement(props, "property", name=k, value="" if v is None else str(v))
    for r in data.rows:
        t = float(r.pooled.sum() / 1000.0)
        total_time += t
        tc = ET.SubElement(suite, "testcase", classname=f"edgeprune.{r.device}.{r.target}",
                           name=f"{r.model} [{r.backend}{' ' + r.variant if r.variant else ''}]", time=f"{t:.3f}")
        lat = r.verdict("latency")
        if r.failed:
            errors += 1
            e = ET.SubElement(tc, "error", message=(r.error or "failed")[:500], type="MeasurementFailed")
            e.text = r.error or ""
        elif r.regressions:
            failures += 1
            msg = "; ".join(f"{v.kind} {v.verdict}: {v.detail.split(';')[0]}" for v in r.regressions)
            f = ET.SubElement(tc, "failure", message=msg[:500], type="Regression")
            f.text = "\n".join(f"{v.kind}: {v.detail}" for v in r.regressions)
        elif lat is not None and lat.verdict == "UNKNOWN":
            skipped += 1
            ET.SubElement(tc, "skipped", message=f"latency inconclusive: {lat.detail.split(';')[0]}"[:500])
        out = [f"median {fmt_ms(r.median_ms)} ms, p90 {fmt_ms(r.p90_ms)} ms over {r.pooled.size} runs"]
        out += [f"{v.kind}: {v.verdict} — {v.detail}" for v in r.verdicts]
        ET.SubElement(tc, "system-out").text = "\n".join(out)
    suite.set("tests", str(len(data.rows)))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    suite.set("skipped", str(skipped))
    suite.set("time", f"{total_time:.3f}")
    root = ET.Element("testsuites", name="edgeprune", tests=str(len(data.rows)), failures=str(failures),
                      errors=str(errors), skipped=str(skipped), time=f"{total_time:.3f}")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


RENDERERS = {"html": render_html, "md": render_markdown, "json": render_json, "junit": render_junit}


def render(data: ReportData, fmt: str) -> str:
    if fmt not in RENDERERS:
        from edgeprune.errors import ConfigError

        raise ConfigError(f"unknown report format '{fmt}'. Choose from: {', '.join(FORMATS)}")
    return RENDERERS[fmt](data)


def write_reports(data: ReportData, out_dir: Path, formats: Iterable[str] = FORMATS) -> dict[str, Path]:
    """Write each format to ``out_dir`` (atomically); returns format -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for fmt in formats:
        path = out_dir / FILENAMES[fmt]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(render(data, fmt), encoding="utf-8")
        tmp.replace(path)
        paths[fmt] = path
    return paths
