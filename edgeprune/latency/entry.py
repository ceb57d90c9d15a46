"""One measured point of a latency table, and the one estimator of its latency.

Kept apart from the tables (:mod:`~edgeprune.latency.lut`) because the store, the
predictor's end-to-end measurements and the profiler all hold entries without needing
the table logic.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edgeprune.bench.rounds import fast_rounds, fast_state_ms


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def robust_ms(rounds: Iterable[float]) -> float:
    """The latency a table stores for a point: the median of its rounds in the fastest
    state seen (each round is the median of a short series of inferences). The one place
    this estimator is chosen.

    Why not the median of all rounds: this 2-core VM switches into a slow state for 5-8 s
    at a time (~28 % of the time, benchmarks/host_noise.py). Single-threaded work is not
    affected at all (a 1-thread conv pinned to either CPU: 0.505-0.51 ms throughout); every
    synchronisation between the two inference threads is (the hypervisor does not run both
    vCPUs at once), so the slow state *adds* time per parallel op: a 2-thread conv runs
    1.18x slower, mobilenetv2 (~60 ops) 1.65x. The median of 3-5 rounds lands in whichever
    state the majority of a point's rounds saw, different for each point, and no
    multiplicative reference can undo an additive penalty. The fast state is the one a
    dedicated board is always in, and with rounds spread over a bundle at least one of a
    point's rounds almost always catches it (all 3 slow: ~2 %); points whose fast level is
    seen only once are measured again (``LatencyEntry.spread``). Rounds within
    FAST_STATE_TOL of the fastest are that state (its own noise is a few %); their median,
    not the minimum alone, is stored, so one lucky round does not set the value.
    """
    return fast_state_ms(rounds)


@dataclass
class LatencyEntry:
    """One measured point. ``rounds`` are the medians of interleaved measurement rounds
    (each a short series of timed inferences); ``ms`` is :func:`robust_ms` of them."""

    ms: float
    rounds: list[float] = field(default_factory=list)
    runs: int = 0
    measured: str = ""
    scale: float = 1.0  # reference normalisation applied to the raw rounds (latency.series.TableUnit)
    remeasured: int = 0  # how many times more rounds were added (noisy points)
    #: rounds still owed: an interrupted run timed only some of the rounds it asked for
    #: (every one it kept is a complete series); the next profile completes the point
    #: instead of measuring it again from scratch (:func:`edgeprune.latency.points.needed`)
    partial: int = 0
    #: CPUs other processes kept busy on the (local) device while this point was timed
    #: (:func:`edgeprune.host.busy_cores`; 0 = idle or unknown): a table or device model
    #: measured busy is known as such and never reused silently as quiet
    busy: float = 0.0
    #: which board measured it, where a table is shared by the boards of one kind
    #: (``Device.table_device``; "" where the table is one device's own); boards that
    #: added rounds later are appended ("pi-a,pi-b")
    device: str = ""

    @property
    def spread(self) -> float:
        """How uncertain ``ms`` is: (max - min) / median of the fast-state rounds, or, when
        only one round reached the fast state, the gap from it to the next round (the fast
        level is then unconfirmed, and a large gap gets the point measured again). 0 for
        one round."""
        if len(self.rounds) < 2:
            return 0.0
        fast = fast_rounds(self.rounds)
        if len(fast) == 1:
            lo, nxt = sorted(self.rounds)[:2]
            return (nxt - lo) / lo if lo > 0 else 0.0
        mid = statistics.median(fast)
        return (max(fast) - min(fast)) / mid if mid > 0 else 0.0

    def merged(self, rounds: list[float], runs: int, scale: float = 1.0) -> "LatencyEntry":
        allr = list(self.rounds) + list(rounds)
        return LatencyEntry(ms=robust_ms(allr), rounds=allr, runs=self.runs + runs, measured=now_iso(),
                            scale=scale, remeasured=self.remeasured + 1, busy=self.busy, device=self.device)

    def completed(self, rounds: list[float], runs: int, scale: float = 1.0, partial: int = 0) -> "LatencyEntry":
        """This point cut short by an interruption, with the ``rounds`` it still owed
        added (``partial``: how many are still owed if this run was cut short too).
        Not a re-measurement: the point keeps its allowance for noisy re-measurements."""
        allr = list(self.rounds) + list(rounds)
        return LatencyEntry(ms=robust_ms(allr), rounds=allr, runs=self.runs + runs, measured=now_iso(),
                            scale=scale, remeasured=self.remeasured, partial=partial, busy=self.busy,
                            device=self.device)

    @classmethod
    def from_rounds(cls, rounds: list[float], runs: int, scale: float = 1.0, partial: int = 0) -> "LatencyEntry":
        return cls(ms=robust_ms(rounds), rounds=list(rounds), runs=runs, measured=now_iso(), scale=scale,
                   partial=partial)

    def rescaled(self, factor: float) -> "LatencyEntry":
        return LatencyEntry(ms=self.ms * factor, rounds=[r * factor for r in self.rounds], runs=self.runs,
                            measured=self.measured, scale=self.scale * factor, remeasured=self.remeasured,
                            partial=self.partial, busy=self.busy, device=self.device)

    def by(self, device: str) -> "LatencyEntry":
        """This entry with ``device`` among the boards that measured it ("" changes nothing)."""
        if not device or device in self.device.split(","):
            return self
        return dataclasses.replace(self, device=f"{self.device},{device}" if self.device else device)

    def to_dict(self) -> dict[str, Any]:
        d = {"ms": round(self.ms, 6), "rounds": [round(r, 6) for r in self.rounds], "runs": self.runs,
             "measured": self.measured, "scale": round(self.scale, 6)}
        if self.remeasured:
            d["remeasured"] = self.remeasured
        if self.partial:
            d["partial"] = self.partial
        if self.busy:
            d["busy"] = round(self.busy, 2)
        if self.device:
            d["device"] = self.device
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LatencyEntry":
        rounds = [float(r) for r in d.get("rounds", [])]
        # ``ms`` is derived: recomputed from the stored rounds, so tables written with an
        # older estimator read the same way as new ones
        return cls(ms=robust_ms(rounds) if rounds else float(d["ms"]), rounds=rounds, runs=int(d.get("runs", 0)),
                   measured=str(d.get("measured", "")), scale=float(d.get("scale", 1.0)),
                   remeasured=int(d.get("remeasured", 0)), partial=int(d.get("partial", 0)),
                   busy=float(d.get("busy", 0.0)), device=str(d.get("device", "")))
