"""Reading what a report shows out of the results database (:func:`gather`).

The *focus run* is the one asked for, else the newest nightly run, else the newest run
of any kind (with the other shards of its night, when CI runners ran the matrix in
``--shard`` slices: :mod:`edgeprune.results.shards`); the history of its cells reaches
back ``since``. A compile/bench run has
no stored verdicts: its cells are judged here, against their history, so every report
says the same thing about a cell whichever command produced it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.results.evaluate import Policy, judge
from edgeprune.results.records import Cell, Measurement, VerdictRecord, now, parse_time
from edgeprune.results.report.data import STATUS_ORDER, CellRow, ParetoPoints, Point, ReportData
from edgeprune.results.report.staircase import load_staircases
from edgeprune.results.shards import sibling_shards
from edgeprune.results.store import ResultsStore, parse_since


def _points(ms: list[Measurement], verdicts: dict[tuple[int, Cell], VerdictRecord]) -> list[Point]:
    by_run: dict[int, list[Measurement]] = {}
    for m in ms:
        if m.ok and m.times_ms:
            by_run.setdefault(int(m.run_id), []).append(m)  # type: ignore[arg-type]
    pts = []
    for rid, group in by_run.items():
        t = np.concatenate([np.asarray(x.times_ms) for x in group])
        v = verdicts.get((rid, group[0].cell))
        pts.append(Point(
            run_id=rid, time=group[0].created, median_ms=float(np.median(t)), p10_ms=float(np.percentile(t, 10)),
            samples=int(t.size), attempts=len(group), series=group[-1].series, accuracy=group[-1].accuracy,
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
    newest run; its cells' history reaches back ``since`` (``30d``, ``12h``, ISO date).
    ``lut_dirs``: latency-table roots to draw the reported models' layer staircases from
    (default: the LUT cache)."""
    since_iso = parse_since(since)
    run = store.run(run_id) if run_id is not None else (store.latest_run("nightly") or store.latest_run())
    runs = store.runs(since=since_iso)
    if run is not None and all(r.id != run.id for r in runs):
        runs.insert(0, run)
    all_verdicts = store.verdicts(since=since_iso)
    focus = [run, *sibling_shards(store, run)] if run is not None else []  # a sharded night: every shard's cells
    for f in focus:
        all_verdicts += [v for v in store.verdicts(run_id=f.id) if v.id not in {x.id for x in all_verdicts}]
    lat_by_run = {(int(v.run_id), v.cell): v for v in all_verdicts if v.kind == "latency"}  # type: ignore[arg-type]

    rows: list[CellRow] = []
    if run is not None:
        ids = {r.id for r in focus}
        ms = [m for r in focus for m in store.measurements(run_id=r.id)]
        stored = [v for v in all_verdicts if v.run_id in ids]
        cells: dict[Cell, list[Measurement]] = {}
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
            until = max(parse_time(f.finished or now()) for f in focus)
            hist = [m for m in hist if parse_time(m.created) <= until] or hist
        r.history = _points(hist + [m for m in r.measurements if m not in hist], lat_by_run)
    rows.sort(key=lambda r: (STATUS_ORDER.index(r.status), r.device, r.model, r.target, r.backend, r.variant))
    notes: list[str] = []
    if len(focus) > 1:
        which = ", ".join(f"#{f.id}" for f in sorted(focus, key=lambda f: f.id))
        notes.append(f"one night of {len(focus)} shards of the matrix (--shard I/N on several runners): runs {which}")
    stairs = load_staircases(lut_dirs, {r.cell[:4] for r in rows}, notes)
    pareto = pareto_points(store.measurements(since=since_iso))
    return ReportData(
        title=title or ("edgeprune nightly report" if run is not None and run.kind == "nightly" else "edgeprune report"),
        generated=now(), db=str(store.path), since=since_iso, run=run, rows=rows, runs=runs[:50], staircases=stairs,
        settings=_settings(rows, policy), pareto=pareto, notes=notes,
    )


def _settings(rows: list[CellRow], policy: Policy | None) -> dict[str, Any]:
    """Detection settings the verdicts were made with (stored with them), else the policy's."""
    if policy is None:
        for r in rows:
            lat = r.verdict("latency")
            if lat is not None and (lat.data or {}).get("settings"):
                return dict(lat.data["settings"])
    return (policy or Policy()).detect.to_dict()


def pareto_points(window: list[Measurement]) -> ParetoPoints:
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


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated (lower latency and higher accuracy), by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front
