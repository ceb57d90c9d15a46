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
