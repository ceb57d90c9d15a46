"""Interleaved measurement rounds: time several artifacts in turns, not one after another.

On a shared or thermally throttling device the speed changes over seconds (this 2-core VM
switches between a fast and a slow state for seconds at a time). Timing backend A for 1 s
and then backend B for 1 s compares A's state with B's. Splitting each series into
``rounds`` shorter ones, in rotated order (A B C, B C A, C A B), lets every artifact see
every phase, and the per-round medians show whether a difference is larger than the noise.

:func:`expand` turns one list of jobs into the interleaved list (round 1 keeps the
verification and accuracy work, later rounds only time); :func:`merge` folds the results
back into one result per original job, with its per-round medians beside it.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Iterable

from edgeprune.bench.bundle import BenchJob, JobResult

SEP = "#r"  # job id of round k > 1: "<id>#r<k>"


def expand(jobs: list[BenchJob], rounds: int) -> list[BenchJob]:
    """``jobs`` as ``rounds`` interleaved rounds; each round times for 1/rounds of the
    requested minimum time and runs. A single job or ``rounds <= 1`` is returned as is."""
    if rounds <= 1 or len(jobs) < 2:
        return list(jobs)
    out: list[BenchJob] = []
    n = len(jobs)
    for r in range(rounds):
        order = jobs[r % n:] + jobs[: r % n]  # rotate: no artifact always runs first (or right after another)
        for j in order:
            short = dataclasses.replace(
                j, min_runs=max(1, math.ceil(j.min_runs / rounds)), min_time_s=j.min_time_s / rounds,
                max_time_s=max(j.max_time_s / rounds, 0.1),
            )
            if r > 0:  # verification and accuracy are done once, in the first round
                short = dataclasses.replace(short, id=f"{j.id}{SEP}{r + 1}", expected=None, eval=None,
                                            warmup=min(j.warmup, 3))
            out.append(short)
    return out


def base_id(job_id: str) -> str:
    return job_id.split(SEP, 1)[0]


def merge(results: dict[str, JobResult]) -> tuple[dict[str, JobResult], dict[str, list[float]]]:
    """(one result per original job id, per-round medians by id). The merged result is
    the first round's (parity, accuracy, environment) with the times of every round that
    succeeded; a failed later round does not fail the job, a failed first round does."""
    groups: dict[str, list[tuple[int, JobResult]]] = {}
    for jid, r in results.items():
        base = base_id(jid)
        k = int(jid.split(SEP, 1)[1]) if SEP in jid else 1
        groups.setdefault(base, []).append((k, r))
    merged: dict[str, JobResult] = {}
    medians: dict[str, list[float]] = {}
    for base, rs in groups.items():
        rs.sort(key=lambda kr: kr[0])
        first = next((r for k, r in rs if k == 1), None)
        if first is None:
            continue
        good = [r for _, r in rs if r.ok and r.times_ms]
        if first.ok and len(rs) > 1:
            merged[base] = dataclasses.replace(first, times_ms=[t for r in good for t in r.times_ms])
        else:
            merged[base] = first
        medians[base] = [float(statistics.median(r.times_ms)) for r in good]
    return merged, medians


#: round medians within this fraction of the fastest round are the device's fast state
FAST_STATE_TOL = 0.10


def fast_rounds(round_medians: Iterable[float], tol: float = FAST_STATE_TOL) -> list[float]:
    """The rounds in the fastest state seen: within ``tol`` of the fastest round."""
    rs = [float(r) for r in round_medians]
    if not rs:
        raise ValueError("no rounds")
    lo = min(rs)
    return [r for r in rs if r <= lo * (1 + tol)]


def fast_state_ms(round_medians: Iterable[float], tol: float = FAST_STATE_TOL) -> float:
    """The median of the rounds within ``tol`` of the fastest one.

    Why not the median of all rounds: on a device that switches into a slow state now and
    then (this 2-core VM: ~28 % of the time, 5-8 s episodes; ``benchmarks/host_noise.py``),
    the slow state *adds* time per synchronisation between inference threads, and which
    artifact's rounds it happens to hit decides a plain median. Two artifacts timed in
    interleaved rounds both get chances at the fast state, which is what a dedicated
    device always runs in. The latency tables use the same rule (``latency.entry.robust_ms``).
    """
    return float(statistics.median(fast_rounds(round_medians, tol)))


def decision_ms(round_medians: list[float], fallback: float) -> float:
    """The latency a choice is made on: the fast state of the round medians
    (:func:`fast_state_ms`), or ``fallback`` (the series median) without rounds."""
    return fast_state_ms(round_medians) if round_medians else float(fallback)


def rounds_faster(a: list[float], b: list[float]) -> tuple[int, int]:
    """(rounds in which ``a`` was faster than ``b``, rounds compared): rounds pair up by index,
    because round k of every artifact ran in the same stretch of time."""
    n = min(len(a), len(b))
    return sum(x < y for x, y in zip(a[:n], b[:n])), n
