"""Which points to measure next, until a latency table needs nothing more.

The tables (:mod:`~edgeprune.latency.lut`) say what each one lacks: points an
interrupted profile timed in only some rounds, planned grid points not measured yet,
refinement of intervals not confirmed to lie on one step, spikes; this
module turns that into the next batch of layer shapes to time, and runs the fixpoint
loop around a ``measure`` callback. The plan depends only on the measured entries, so a
second profile over a cached table finds nothing to measure.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Collection, Mapping

from edgeprune.latency.entry import LatencyEntry
from edgeprune.latency.grid import GridSettings
from edgeprune.latency.lut import LatencyTable, Point
from edgeprune.prune.space import PruneSpace

#: a point is re-measured (more interleaved rounds) when its rounds disagree by more than
#: this (and much more than is typical for the table), at most MAX_REMEASURE times
REMEASURE_SPREAD = 0.15
MAX_REMEASURE = 2
#: rounds added per re-measurement
REMEASURE_ROUNDS = 3


def cut_short(table: LatencyTable) -> list[Point]:
    """Points of ``table`` an interrupted run timed in only some of their rounds
    (``LatencyEntry.partial``): they are completed, not measured again from scratch."""
    out: dict[str, Point] = {}
    for t in table.tables.values():
        for p in t.points():
            e = table.entries.get(p.signature)
            if e is not None and e.partial:
                out.setdefault(p.signature, p)
    return list(out.values())


def needed(table: LatencyTable, skip: Collection[str] = ()) -> list[Point]:
    """What to measure next (empty when the table is final), leaving out ``skip``
    (points that failed): points cut short by an interrupted run and missing planned
    points, then refinement points (planned from complete points only)."""
    seen: dict[str, Point] = {p.signature: p for p in cut_short(table) if p.signature not in skip}
    for t in table.tables.values():
        for p in t.missing:
            if p.signature not in skip:
                seen.setdefault(p.signature, p)
    if not seen:
        for t in table.tables.values():
            for p in t.refinement():
                if p.signature not in table.entries and p.signature not in skip:
                    seen.setdefault(p.signature, p)
    return list(seen.values())


def noisy(table: LatencyTable) -> list[Point]:
    """Measured points whose interleaved rounds disagree: measure them again."""
    out: dict[str, Point] = {}
    entries = table.entries
    used = [entries[s] for s in table.used_signatures()]
    typical = statistics.median([e.spread for e in used]) if used else 0.0
    # on a busy machine every point is noisy: only re-measure the outliers among them
    limit = max(REMEASURE_SPREAD, 3 * typical)
    for t in table.tables.values():
        spikes = {p.signature for p in t.spikes()}
        for p in t.points():
            e = entries.get(p.signature)
            if e is None or e.remeasured >= MAX_REMEASURE or e.partial:
                continue
            # a spike (sticks out of two agreeing neighbours) gets one second look
            if e.spread > limit or (p.signature in spikes and e.remeasured == 0):
                out.setdefault(p.signature, p)
    return list(out.values())


Measure = Callable[[list[Point], bool], Mapping[str, str]]


def complete_table(
    space: PruneSpace,
    entries: dict[str, LatencyEntry],
    grid: GridSettings,
    measure: Measure,
    status: Callable[[LatencyTable, list[Point], bool], None] | None = None,
    max_iterations: int = 200,
) -> tuple[LatencyTable, dict[str, str]]:
    """Measure until the table needs nothing more: points an interrupted run cut short
    and planned points, then refinement, then noisy points. ``measure(points, remeasure)``
    must add what it measured to ``entries`` (completing a cut-short entry's rounds)
    and return ``{signature: error}`` for points it could not measure (never retried).
    The plan depends only on ``entries``, so a cached table needs no measurement.
    Returns the final table and the failures."""
    failures: dict[str, str] = {}
    for _ in range(max_iterations):  # a fixpoint; the bound only guards against a planning bug
        table = LatencyTable(space, entries, grid)
        todo = needed(table, failures)
        remeasure = False
        if not todo:
            todo = [p for p in noisy(table) if p.signature not in failures]
            remeasure = True
        if not todo:
            return table, failures
        if status is not None:
            status(table, todo, remeasure)
        failures.update(measure(todo, remeasure))
    return LatencyTable(space, entries, grid), failures
