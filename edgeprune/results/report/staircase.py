"""Per-layer latency staircases for the report, read from measured latency tables.

The tables are read through the latency layer's own store (:class:`LUTStore`), so a
change of the table format or layout is made in one place; layer signatures are split
by their inverse (:meth:`PrunableLayer.split_signature`). Only tables measured for the
report's devices or targets are drawn (all, when the report has no cells); per layer
family the axis with the most measured widths is drawn. The section is optional: with
no tables it is left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from edgeprune.latency.store import LUTStore, TableFile
from edgeprune.prune.space import PrunableLayer
from edgeprune.results.report.data import LutCurve

#: fewer measured widths than this on an axis is not a staircase worth drawing
MIN_WIDTHS = 4


def load_luts(lut_dirs: Iterable[Path] | None, devices: set[str], targets: set[str],
              max_curves: int = 6) -> list[LutCurve]:
    """The ``max_curves`` staircases with the most measured widths, from the tables
    under ``lut_dirs`` (default: the latency-table cache)."""
    stores = [LUTStore(Path(p)) for p in lut_dirs] if lut_dirs is not None else [LUTStore()]
    curves: list[tuple[int, LutCurve]] = []
    for store in stores:
        for table in store.tables():
            k = table.key
            if devices and k.device not in devices and k.target not in targets:
                continue
            curves += _curves(table)
    curves.sort(key=lambda c: -c[0])
    return [c for _, c in curves[:max_curves]]


def _curves(table: TableFile) -> list[tuple[int, LutCurve]]:
    """(measured widths, curve) of the best axis of each layer family in one table."""
    k = table.key
    ctx = f"{k.backend} {k.backend_version} on {k.device}/{k.target}"
    families: dict[str, dict[tuple[int, int], float]] = {}
    for sig, entry in table.entries.items():
        parts = PrunableLayer.split_signature(sig)
        if parts is None:
            continue
        kind, cin, cout, shape = parts
        families.setdefault(f"{kind} {shape}", {})[(cin, cout)] = entry.ms
    out = []
    for fam, pts in families.items():
        best: tuple[int, LutCurve] | None = None
        for axis, fixed_in in (("output channels", True), ("input channels", False)):
            groups: dict[int, list[tuple[int, float]]] = {}
            for (ci, co), ms in pts.items():
                fixed, var = (ci, co) if fixed_in else (co, ci)
                groups.setdefault(fixed, []).append((var, ms))
            for fixed, xs in groups.items():
                if len(xs) >= MIN_WIDTHS and (best is None or len(xs) > best[0]):
                    xs.sort()
                    other = "in" if fixed_in else "out"
                    best = (len(xs), LutCurve(title=f"{fam} ({other} {fixed}) — {ctx}", axis=axis,
                                              widths=[x for x, _ in xs], ms=[y for _, y in xs]))
        if best:
            out.append(best)
    return out
