"""From the runner's results to table points: one value per series, a point's rounds,
the drift reference, and the table's unit.

* A series' value is its median run; for kernel timing the interquartile mean
  (:func:`series_ms`: the runtimes count node time in whole microseconds).
* A point's series the steady gate marked unsteady are dropped when it has a steady
  one (:func:`keep_steady`).
* Each series is paired with the reference series timed right before and after it
  (:func:`local_references`); each bundle's reference is the fast state of all its
  reference series (``Timing.ref_ms``, set by the measurer).
* :class:`TableUnit` rescales raw rounds into the table's unit: raw x (the table's
  reference ms / the reference measured next to them), which removes slow drift
  between bundles and between runs.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edgeprune.bench.bundle import BenchJob, JobResult
from edgeprune.latency.entry import LatencyEntry, robust_ms
from edgeprune.latency.layer_bundle import REFERENCE_KEY, LayerBundle


@dataclass
class Timing:
    """One job's measurement: its per-round values (raw ms) and the references near them."""

    rounds: list[float]  # per-round value (series_ms) in ms, raw
    runs: int
    ref_ms: float | None = None  # the reference job, measured interleaved in the same bundle
    #: per round, the reference timed right before and after this point's series (their mean)
    ref_rounds: list[float | None] = field(default_factory=list)
    #: rounds asked for but never timed: the bundle was interrupted before them
    short: int = 0
    #: per series, its value over the mean of the bundle's anchor timed right before and
    #: after it (:func:`~edgeprune.latency.layer_bundle.build_bundle`): one machine state
    #: on both sides, so every series counts, also those the steady gate marked unsteady
    ratios: list[float] = field(default_factory=list)

    @property
    def ms(self) -> float:
        return robust_ms(self.rounds)

    @property
    def fraction(self) -> float | None:
        """This job relative to the bundle's anchor: the median of :attr:`ratios` (None
        without an anchor). The median, not the fast state: a pair is timed in one state,
        so every ratio estimates the same thing and the median drops the pairs a state
        change split."""
        xs = self.ratios
        return float(statistics.median(xs)) if xs else None


def gate_info(r: JobResult) -> dict[str, Any]:
    """What the runner's steady gate said about a job's series ({} without a gate)."""
    return ((r.env or {}).get("timing") or {}).get("gate") or {}


def keep_steady(results: list[JobResult]) -> tuple[list[JobResult], int, int]:
    """(kept, dropped, unsteady): a point's series the steady gate marked unsteady are
    dropped when at least one of its series is steady; with none steady all are kept
    (a point is never lost to the gate, its spread then says how far to trust it)."""
    steady = [r for r in results if gate_info(r).get("state") != "unsteady"]
    unsteady = len(results) - len(steady)
    return (steady, unsteady, unsteady) if steady else (results, 0, unsteady)


def series_ms(times: list[float], timing: str) -> float:
    """One series' value: the median run; for kernel timing the interquartile mean, since
    the runtimes count node time in whole microseconds (a 10 us kernel would otherwise
    move in 10 % steps)."""
    if timing != "kernel" or len(times) < 4:
        return float(statistics.median(times))
    xs = sorted(times)
    q = len(xs) // 4
    mid = xs[q:len(xs) - q]
    return float(sum(mid) / len(mid))


def local_references(bench_jobs: list[BenchJob], results: Iterable[JobResult], keys: list[str],
                     key: str = REFERENCE_KEY) -> dict[str, float]:
    """Job id -> mean of the series of ``key`` (the reference, or a bundle's anchor) timed
    nearest before and after it (in manifest order, which is the order the runner times
    them). ``keys`` maps a job id's index to its key
    (:class:`~edgeprune.latency.layer_bundle.LayerBundle`)."""
    ok = {r.id: float(statistics.median(r.times_ms)) for r in results if r.ok and r.times_ms}
    is_ref = [keys[int(j.id.split(".r")[0])] == key for j in bench_jobs]
    if not any(is_ref):
        return {}
    ids = [j.id for j in bench_jobs]
    out: dict[str, float] = {}
    last: float | None = None
    before: list[float | None] = []
    for jid, ref in zip(ids, is_ref):
        if ref:
            last = ok.get(jid, last)
        before.append(last)
    nxt: float | None = None
    for i in range(len(ids) - 1, -1, -1):
        if is_ref[i]:
            nxt = ok.get(ids[i], nxt)
            continue
        near = [v for v in (before[i], nxt) if v is not None]
        if near:
            out[ids[i]] = sum(near) / len(near)
    return out


@dataclass
class Folded:
    """A bundle's results folded per job, and what they teach about the device."""

    timings: dict[str, Timing] = field(default_factory=dict)  # by Job.key, the reference's included
    errors: dict[str, str] = field(default_factory=dict)  # by Job.key: build and run failures
    unsteady: int = 0  # series the steady gate marked unsteady
    env: dict[str, Any] | None = None  # what the device reported (the last job with an environment)
    ms_per_mac: float | None = None  # median device wall ms per MAC (the next chunks' cost estimate)
    gate_fast_ms: float | None = None  # the fastest steady-gate probe level seen


def fold(lb: LayerBundle, results: Mapping[str, JobResult], asked: int | None = None) -> Folded:
    """One :class:`Timing` per job of ``lb`` from the runner's results by job id.

    ``asked``: the rounds each job was to get, when the bundle was interrupted: a job
    keeps the complete series it has and its ``Timing.short`` says how many it still
    owes; jobs never reached are absent."""
    out = Folded(errors=dict(lb.errors))
    per_key: dict[str, list[JobResult]] = {}
    ids = {j.id for j in lb.bundle.jobs}
    for r in results.values():
        if r.id in ids:
            per_key.setdefault(lb.key_of(r.id), []).append(r)
    local_ref = local_references(lb.bundle.jobs, results.values(), lb.keys)
    local_anchor = local_references(lb.bundle.jobs, results.values(), lb.keys, lb.anchor) if lb.anchor else {}
    ratios = []
    for k, rs in per_key.items():
        good = [r for r in rs if r.ok and r.times_ms]
        owed = max(0, asked - len(good)) if asked is not None and k != REFERENCE_KEY else 0  # a cut series is owed
        if not good:
            out.errors[k] = next((r.error for r in rs if r.error), "no timings")
            continue
        job = lb.jobs[k]
        paired = [series_ms(r.times_ms, job.timing) / local_anchor[r.id] for r in good if local_anchor.get(r.id)]
        good, _, unsteady = keep_steady(good)
        out.unsteady += unsteady
        meds = [series_ms(r.times_ms, job.timing) for r in good]
        out.timings[k] = Timing(rounds=meds, runs=sum(len(r.times_ms) for r in good),
                                ref_rounds=[local_ref.get(r.id) for r in good], short=owed, ratios=paired)
        out.env = good[0].env or out.env
        if job.macs > 0:  # device time per MAC, wall-clock even for kernel timing
            walls = [w for r in good if (w := (r.env.get("timing") or {}).get("wall_median_ms"))]
            ratios.append(statistics.median(walls or meds) / job.macs)
    levels = [g["fast_ms"] for r in results.values() if (g := gate_info(r)) and g.get("fast_ms")]
    out.gate_fast_ms = min(levels) if levels else None
    out.ms_per_mac = float(statistics.median(ratios)) if ratios else None
    return out


@dataclass
class TableUnit:
    """The unit a table's entries are stored in: its first measurement of the reference
    layer (``ref_ms``; None until a bundle reports one). ``drift`` is
    :attr:`~edgeprune.latency.settings.ProfileSettings.drift`."""

    drift: str
    ref_ms: float | None = None

    def scale(self, tm: Timing) -> float:
        """The factor into the table's unit by the bundle's reference (the first reference
        of this table defines the unit)."""
        if tm.ref_ms is None or tm.ref_ms <= 0:
            return 1.0
        if self.ref_ms is None:
            self.ref_ms = tm.ref_ms
        return self.ref_ms / tm.ref_ms

    def rounds(self, tm: Timing) -> tuple[list[float], float]:
        """(rounds in the table's unit, the bundle's scale). ``drift="local"`` rescales each
        round by the reference timed next to it; ``bundle`` by the bundle's reference."""
        f = self.scale(tm)
        if self.drift == "none":
            return list(tm.rounds), 1.0
        if self.drift == "local" and self.ref_ms and len(tm.ref_rounds) == len(tm.rounds):
            return [r * (self.ref_ms / lr if lr else f) for r, lr in zip(tm.rounds, tm.ref_rounds)], f
        return [r * f for r in tm.rounds], f

    def entry(self, tm: Timing) -> LatencyEntry:
        rounds, f = self.rounds(tm)
        return LatencyEntry.from_rounds(rounds, tm.runs, f)
