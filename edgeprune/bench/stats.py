"""Robust summary statistics of per-inference latencies (milliseconds)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    """Summary of one measurement series. All times in milliseconds.

    Percentiles use numpy's linear interpolation; ``std`` is the sample standard
    deviation (ddof=1, 0 for a single run) and ``cv = std / mean`` (coefficient of
    variation, a unitless noise figure: 0.02 means 2 %).
    """

    median: float
    mean: float
    min: float
    max: float
    p90: float
    p99: float
    std: float
    cv: float
    runs: int

    @classmethod
    def from_times(cls, times_ms: Sequence[float] | np.ndarray) -> "LatencyStats":
        t = np.asarray(times_ms, dtype=np.float64).ravel()
        if t.size == 0:
            raise ValueError("no latency samples: cannot compute statistics of an empty series")
        if not np.all(np.isfinite(t)):
            raise ValueError("latency samples contain NaN or infinity")
        p50, p90, p99 = np.percentile(t, [50.0, 90.0, 99.0], method="linear")
        mean = float(t.mean())
        std = float(t.std(ddof=1)) if t.size > 1 else 0.0
        return cls(
            median=float(p50),
            mean=mean,
            min=float(t.min()),
            max=float(t.max()),
            p90=float(p90),
            p99=float(p99),
            std=std,
            cv=std / mean if mean > 0 else 0.0,
            runs=int(t.size),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LatencyStats":
        names = {f.name for f in fields(cls)}
        missing = names - set(d)
        if missing:
            raise ValueError(f"latency stats are missing field(s): {', '.join(sorted(missing))}")
        return cls(**{k: (int(d[k]) if k == "runs" else float(d[k])) for k in names})


def median_interval(values: Sequence[float], confidence: float = 0.9) -> tuple[float, float]:
    """A distribution-free confidence interval for the median of ``values``: the order
    statistics ``(x_(k), x_(n-k+1))`` with the largest ``k`` whose binomial coverage
    ``1 - 2 P(B(n, 1/2) < k)`` is at least ``confidence``. Why not a bootstrap or a normal
    interval: the per-round ratios this is used on are few (5-15) and skewed by the host's
    slow states, where both under-cover; order statistics need neither symmetry nor size.
    With too few values for that coverage (n < 5 at 0.9) the interval is (min, max)."""
    from math import comb

    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    n = x.size
    if n == 0:
        raise ValueError("no values: cannot bound the median of an empty series")
    k, below = 1, 1 / 2.0**n  # below = P(B(n, 1/2) < k): the coverage of (x_(k), x_(n-k+1)) is 1 - 2 below
    while k + 1 <= (n + 1) // 2:
        nxt = below + comb(n, k) / 2.0**n
        if 1 - 2 * nxt < confidence:
            break
        k, below = k + 1, nxt
    return float(x[k - 1]), float(x[n - k])
