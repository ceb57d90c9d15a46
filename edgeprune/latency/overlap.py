"""Do the boards of a farm agree? The overlap points every board measures, and the check
that reports (and keeps out of the table) a board that disagrees beyond noise.

A device model built over several boards of one kind (:mod:`edgeprune.flows.farm`) gives
each board a share of the suite, so no point is measured twice and nothing in the table
says whether the boards were alike. So every board first measures the same few
**overlap points** (:func:`overlap_points`), each in bundles that also time the reference
layer (``Timing.ref_ms``), and :func:`compare_boards` compares them two ways:

* **speed** (raw ms, the reference layer among the points): a board slower than its
  siblings beyond noise is throttled (thermal, a CPU quota), busy (another process on its
  cores) or set up otherwise (the powersave governor). The reference timed in each bundle
  corrects a *steady* difference, but such a state is rarely steady -- it ramps with
  temperature, a neighbour comes and goes -- so the board is kept out;
* **in reference units** (a point's time over the reference layer of its bundle): what
  the table stores, so what the model would learn. A board whose points relate otherwise
  to the reference (a runtime configured otherwise, a core shared with another process,
  which stretches long inferences more than short ones) would bias the model: kept out.

A board kept out is **excluded**: reported (log line, the sidecar's ``farm``, ``show``),
it measures nothing more, and its overlap points never reach the table. (The farm looks
twice before it excludes: :func:`edgeprune.flows.farm` measures the overlap again when this
check flags a board, and keeps out only a board flagged both times.)

Each comparison takes, point by point, the board's log value minus the median log value
over every board (with two boards: the other one); the board's deviation is the median
over the points. The **noise** is the scatter of the per-point log differences between two
boards around their median (normalised MAD over sqrt(2)): a uniform difference moves the
median, not the scatter. With three boards or more it is that of the quietest farm left
when one board is set aside, so an odd board whose difference is not uniform cannot pass
for noise and widen the tolerance meant to catch it; never below half the median spread
of the points' own rounds. The **tolerance** is ``K x 1.2533 x sqrt(2) x noise / sqrt(points)``
(K standard errors of a median of that many differences), never under a floor (3 % in
reference units, 10 % in speed: boards of one kind differ that much steadily): no fixed
threshold alone decides, a noisy farm gets a wider one. Two boards cannot outvote each
other: when they differ, the slower is kept out (boards run slow for many reasons, fast
for few). With three or more, a check that would keep out half of them or more refuses
the farm (they are not of one kind) instead of choosing.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeprune.latency.suite import SuitePoint

#: overlap points per suite size: each costs (boards - 1) extra measurements
OVERLAP_POINTS = {"full": 10, "tiny": 6}
#: the overlap points' work, in units of the reference layer's (min, max)
OVERLAP_MACS = (1 / 16, 4.0)
#: boards within this relative deviation in reference units agree however quiet the farm
#: (the reference, timed in the same bundle, removes what boards of one kind differ by)
FLOOR = 0.03
#: ... and within this one in speed (raw ms): boards of one kind differ by a few % of
#: clock and silicon, steadily; a board this much slower than its siblings is throttled,
#: busy or set up otherwise, and rarely steadily so
SPEED_FLOOR = 0.10
#: standard errors of the deviation before a board disagrees
K = 4.0
#: the normal scale of a median absolute deviation, and a median's standard error / a mean's
MAD_SCALE = 1.4826
MEDIAN_SE = 1.2533


def overlap_points(lanes: int, n: int) -> list["SuitePoint"]:
    """``n`` points every board measures, from the *full* suite whatever the build's size:
    tier-0 points, never held-out ones, between :data:`OVERLAP_MACS` times the reference
    layer's work -- long enough that timer resolution and per-call overhead do not swamp a
    board's difference (microsecond points scatter by tens of % on any host), short enough
    to cost seconds -- evenly spaced over their cost (log MACs), a kind not yet chosen
    preferred nearby, so the overlap sees short and long inferences of several kinds
    (a shared core stretches long ones more). Deterministic for a given ``lanes``."""
    from edgeprune.latency.layer_bundle import REFERENCE_LAYER
    from edgeprune.latency.suite import suite_points

    ref = float(REFERENCE_LAYER.macs(REFERENCE_LAYER.in_channels, REFERENCE_LAYER.out_channels))
    lo, hi = OVERLAP_MACS
    pool = sorted((p for p in suite_points(lanes, "full") if p.tier == 0 and not p.holdout
                   and lo * ref <= p.macs <= hi * ref), key=lambda p: (p.macs, p.signature))
    if len(pool) <= n:
        return list(pool)
    picks: list[SuitePoint] = []
    kinds: set[str] = set()
    for i in range(n):
        at = round(i * (len(pool) - 1) / max(1, n - 1))
        near = sorted(range(len(pool)), key=lambda j: (abs(j - at), j))[: max(1, len(pool) // n)]
        cand = [pool[j] for j in near if pool[j] not in picks]
        fresh = [p for p in cand if p.kind not in kinds]
        if cand:
            p = (fresh or cand)[0]
            picks.append(p)
            kinds.add(p.kind)
    return sorted(picks, key=lambda p: p.macs)


@dataclass
class BoardVerdict:
    """One board in the overlap check. Deviations are relative (0.1 = 10 % above the others)."""

    board: str
    points: int  # overlap points it measured
    deviation: float | None  # in reference units
    speed: float | None  # raw: its time over the others' (1.3 = 30 % slower)
    ref_ms: float | None  # its reference layer, raw ms (median over its bundles)
    state: str = "agrees"  # agrees | excluded
    why: str = ""
    #: per overlap point, its time over the reference layer (what the table would store)
    values: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        d["values"] = {k: round(v, 5) for k, v in self.values.items()}
        return d


@dataclass
class OverlapCheck:
    """What :func:`compare_boards` found; ``to_dict`` is the sidecar's ``farm.check``."""

    boards: dict[str, BoardVerdict] = field(default_factory=dict)
    points: list[str] = field(default_factory=list)
    noise: float = 0.0
    tolerance: float = FLOOR
    speed_noise: float = 0.0
    speed_tolerance: float = SPEED_FLOOR
    reference_board: str = ""  # the board closest to the others: its overlap points go into the table
    refused: str = ""  # set when the boards disagree too much to choose (half or more would be excluded)

    @property
    def excluded(self) -> list[str]:
        return [b for b, v in self.boards.items() if v.state == "excluded"]

    def to_dict(self) -> dict[str, Any]:
        return {"points": list(self.points), "noise": round(self.noise, 4), "tolerance": round(self.tolerance, 4),
                "speed_noise": round(self.speed_noise, 4), "speed_tolerance": round(self.speed_tolerance, 4),
                "reference_board": self.reference_board, "refused": self.refused,
                "boards": {b: v.to_dict() for b, v in self.boards.items()}}

    def lines(self) -> list[str]:
        """One line per board that does not simply agree, for the log and ``show``."""
        out = []
        for v in self.boards.values():
            if v.state != "agrees":
                out.append(f"board '{v.board}' {v.state.upper()}: {v.why}")
        return out


def _deviations(values: Mapping[str, Mapping[str, float]]) -> dict[str, tuple[float, int]]:
    """board -> (deviation in log units, points compared): the median over the points of
    the board's log value minus the points' reference, the median log value over every
    board (with two boards: the other one). Module docstring."""
    boards = [b for b, v in values.items() if v]
    out = {}
    for b in boards:
        diffs = []
        for sig, v in values[b].items():
            pool = [math.log(values[o][sig]) for o in boards if values[o].get(sig, 0) > 0
                    and (len(boards) > 2 or o != b)]
            if v > 0 and len(pool) >= (2 if len(boards) > 2 else 1):
                diffs.append(math.log(v) - statistics.median(pool))
        if diffs:
            out[b] = (statistics.median(diffs), len(diffs))
    return out


def _pair_noise(values: Mapping[str, Mapping[str, float]], boards: Sequence[str]) -> tuple[float, int] | None:
    """(median over the pairs of ``boards`` of the normalised MAD of their per-point log
    differences around its median, over sqrt(2), median points per pair); None without a pair."""
    pairs, sizes = [], []
    for i, a in enumerate(boards):
        for b in boards[i + 1:]:
            d = [math.log(values[a][s]) - math.log(values[b][s]) for s in values[a]
                 if values[a][s] > 0 and values[b].get(s, 0) > 0]
            if len(d) > 1:
                mid = statistics.median(d)
                pairs.append(MAD_SCALE * statistics.median(abs(x - mid) for x in d) / math.sqrt(2))
                sizes.append(len(d))
    return (statistics.median(pairs), int(statistics.median(sizes))) if pairs else None


def _noise(values: Mapping[str, Mapping[str, float]], floor_noise: float) -> tuple[float, int]:
    """(noise of one board's log value of one point, points per comparison).

    Between two boards, the per-point log differences scatter around their median by both
    boards' noise (a uniform difference moves the median, not the scatter). One odd board
    whose difference is *not* uniform would pass for noise in every pair it is in, so with
    three boards or more the farm's noise is that of the quietest farm left when one board
    is set aside (the minimum over the boards left out): the odd one cannot widen the
    tolerance that is to catch it. Never below ``floor_noise`` (the rounds' own spread)."""
    boards = [b for b, v in values.items() if v]
    if len(boards) > 2:
        fits = [f for b in boards if (f := _pair_noise(values, [o for o in boards if o != b])) is not None]
    else:
        fits = [f for f in [_pair_noise(values, boards)] if f is not None]
    if not fits:
        return floor_noise, 1
    noise, n = min(fits)
    return max(noise, floor_noise), n


def _tolerance(noise: float, points: int, floor: float) -> float:
    """K standard errors of a board's deviation (a median of ``points`` differences, each of
    two boards' noise), never under ``floor``; log units."""
    return max(math.log1p(floor), K * MEDIAN_SE * noise * math.sqrt(2) / math.sqrt(max(points, 1)))


def compare_boards(normalized: Mapping[str, Mapping[str, float]], raw: Mapping[str, Mapping[str, float]],
                   refs: Mapping[str, float | None], spreads: Sequence[float] = ()) -> OverlapCheck:
    """The overlap check over the boards that measured the overlap points.

    ``normalized[board][signature]``: a point's time over the reference layer of its bundle;
    ``raw[board][signature]``: its time in ms (the reference layer included, under its own
    key); ``refs[board]``: the board's reference layer in ms; ``spreads``: the relative
    spreads of the points' rounds (``LatencyEntry.spread``), the noise floor when boards
    agree better than their own rounds repeat."""
    boards = sorted(set(normalized) | set(raw))
    check = OverlapCheck(points=sorted({s for v in normalized.values() for s in v}))
    floor_noise = statistics.median(spreads) / 2 if spreads else 0.0
    norm, speed = _deviations(normalized), _deviations(raw)
    noise, n_norm = _noise(normalized, floor_noise)
    snoise, n_raw = _noise(raw, floor_noise)
    tol, stol = _tolerance(noise, n_norm, FLOOR), _tolerance(snoise, n_raw, SPEED_FLOOR)
    check.noise, check.tolerance = math.expm1(noise), math.expm1(tol)
    check.speed_noise, check.speed_tolerance = math.expm1(snoise), math.expm1(stol)
    for b in boards:
        n, s = norm.get(b), speed.get(b)
        v = BoardVerdict(board=b, points=len(normalized.get(b, {})), deviation=math.expm1(n[0]) if n else None,
                         speed=math.exp(s[0]) if s else None, ref_ms=refs.get(b), values=dict(normalized.get(b, {})))
        why = []
        if s is not None and abs(s[0]) > stol:
            why.append(f"it takes {v.speed:.2f}x the other boards' time (tolerance ±{check.speed_tolerance:.1%}, "
                       f"from the measured noise {check.speed_noise:.1%}): throttled, a busy core, another governor?")
        if n is not None and abs(n[0]) > tol:
            why.append(f"its points differ from the other boards' by {v.deviation:+.1%} in reference units "
                       f"(tolerance ±{check.tolerance:.1%}, from the measured noise {check.noise:.1%})")
        if why:
            v.state, v.why = "excluded", "; ".join(why)
        check.boards[b] = v
    if len(boards) == 2 and len(check.excluded) == 2:  # two boards cannot outvote each other
        slower = max(boards, key=lambda b: check.boards[b].speed or 1.0)
        faster = check.boards[next(b for b in boards if b != slower)]
        faster.state, faster.why = "agrees", f"it differs from '{slower}', the slower of the two, which is kept out"
        check.boards[slower].why += "; of two boards that differ, the slower is kept out"
    out = check.excluded
    if len(boards) > 2 and len(out) * 2 >= len(boards):
        check.refused = (f"{len(out)} of {len(boards)} boards disagree beyond noise ({', '.join(out)}): "
                         "they do not measure alike, so no majority says which are right")
    kept = [b for b in boards if check.boards[b].state != "excluded"]
    if kept:
        check.reference_board = min(kept, key=lambda b: (abs((norm.get(b) or (0.0,))[0]), b))
    return check
