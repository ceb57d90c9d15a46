"""How long and how carefully to measure: the one place timing defaults live.

:class:`BenchSettings` is what a user chooses (CLI options, nightly matrix cells,
benchmarks); :meth:`BenchSettings.job` turns it into the timing fields of a
:class:`~edgeprune.bench.bundle.BenchJob`, so a job never repeats a default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeprune.bench.bundle import BenchJob

DEFAULT_WARMUP = BenchJob.__dataclass_fields__["warmup"].default
DEFAULT_MIN_RUNS = BenchJob.__dataclass_fields__["min_runs"].default
DEFAULT_MIN_TIME_S = BenchJob.__dataclass_fields__["min_time_s"].default
DEFAULT_MAX_TIME_S = BenchJob.__dataclass_fields__["max_time_s"].default


@dataclass(frozen=True)
class BenchSettings:
    """How long and how carefully to measure. Both a minimum count and a minimum
    duration must be reached, so fast models get many runs and slow ones enough time."""

    warmup: int = DEFAULT_WARMUP
    min_runs: int = DEFAULT_MIN_RUNS
    min_time_s: float = DEFAULT_MIN_TIME_S
    max_time_s: float = DEFAULT_MAX_TIME_S
    threads: int | None = None
    timeout_s: float = 1800.0
    eval_samples: int | None = None
    #: with several artifacts, their timing is split into this many interleaved rounds
    #: (edgeprune.bench.rounds): a choice between them then compares like with like
    rounds: int = 3
    #: time inside the runner's steady gate: off by default for compile, whose
    #: artifacts are few and long-timed; on for noisy devices
    steady_gate: bool = False
    #: a device busy with another run: wait for it (True) or fail at once (``--no-wait``)
    wait_for_device: bool = True

    @property
    def gate(self) -> dict[str, Any] | None:
        """``BenchJob.gate`` for these settings (``{}`` = the gate with its defaults)."""
        return {} if self.steady_gate else None

    def job(self, **fields: Any) -> BenchJob:
        """A job with these settings' timing fields; ``fields`` give the rest (id,
        backend, artifact, inputs, ...) and may override a timing field."""
        timing = dict(warmup=self.warmup, min_runs=self.min_runs, min_time_s=self.min_time_s,
                      max_time_s=self.max_time_s, gate=self.gate)
        return BenchJob(**{**timing, **fields})
