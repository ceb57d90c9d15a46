"""How a latency table is measured: :class:`ProfileSettings`, the timing and drift modes,
and the progress interface the CLI renders.

These are the typed options of ``edgeprune profile`` (and of the pruner's first-use
profile): built once by the caller and passed down to every stage that measures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgeprune.bench.settings import BenchSettings
from edgeprune.errors import ConfigError
from edgeprune.latency.grid import GridSettings

#: runtimes whose per-node profiling counters give each run's own node times
#: (edgeprune.runner.adapters.base.Model.kernel_times). Not OpenVINO: its CPU plugin's
#: PERF_COUNT real_time is a running average over every inference since the model was
#: compiled (measured: a 3x3 conv read 1280, 859, 712, 635 us on runs 1-4, i.e. 1280,
#: 438, 418, 404 us per run), so one slow first run lifts every later reading — a
#: fresh-clone CI run read 1.8 ms of "kernel" time against a 0.71 ms wall median.
KERNEL_TIMING_BACKENDS = ("onnxruntime",)
TIMINGS = ("auto", "kernel", "wall")
DRIFT_MODES = ("bundle", "local", "none")
#: where layer latencies come from: "model" = the device latency model (measured once per
#: device, ``edgeprune device-model build``) plus the few points this model needs; "full" =
#: a measured table of every layer of the model (the reference the device model is judged by)
TABLE_MODES = ("model", "full")


@dataclass(frozen=True)
class ProfileSettings:
    """How to measure. Layer points get ``rounds`` interleaved short series each;
    whole models (calibration, validation) get ``model_rounds`` longer ones."""

    grid: GridSettings = field(default_factory=GridSettings)
    threads: int | None = None  # default: the target's cores
    rounds: int = 3
    warmup: int = 3
    min_runs: int = 10
    min_time_s: float = 0.03
    max_time_s: float = 2.0
    model_rounds: int = 5
    model_min_runs: int = 10
    model_min_time_s: float = 0.25
    calibration_variants: int = 6
    chunk_s: float = 40.0  # estimated device seconds per bundle run
    timeout_s: float = 1800.0
    seed: int = 0
    keep_bundles: Path | None = None  # keep bundle dirs here (debugging); default: temp, removed
    #: how drift is removed: "bundle" (x table reference / the bundle's reference, the fast
    #: state of its REFERENCE_PER_ROUND x rounds series), "local" (each round x table
    #: reference / the reference timed next to it) or "none"
    drift: str = "bundle"
    #: time every series inside the runner's steady gate (edgeprune.runner's SteadyGate):
    #: series are timed in the device's steady state, or re-timed, or marked unsteady; a
    #: point's unsteady rounds are dropped when it has a steady one
    gate: bool = True
    #: what a layer point's time is (whole models are always wall-clock): "kernel" = the
    #: layer's own work from the runtime's per-node counters, without the per-call overhead
    #: and the layout conversions a standalone graph pays and a model does not; "wall";
    #: "auto" = kernel where the runtime has the counters (KERNEL_TIMING_BACKENDS)
    timing: str = "auto"
    #: TABLE_MODES; "model" falls back to "full" (and says so) where no device model exists
    tables: str = "model"
    #: device seconds a "model" profile may spend measuring this model's own points
    #: (anchors, uncertain widths, the end-to-end calibration); the pruner's confirmation of
    #: the widths it chose comes on top
    profile_budget_s: float = 180.0
    #: a predicted width whose relative uncertainty exceeds this is measured (within the budget)
    uncertainty: float = 0.08

    def series(self, models: bool = False) -> BenchSettings:
        """How one series is timed: of a layer point, or (``models``) of a whole model.
        The steady gate's per-device hint is added per bundle (``BenchJob.gate``)."""
        runs, secs = (self.model_min_runs, self.model_min_time_s) if models else (self.min_runs, self.min_time_s)
        return BenchSettings(warmup=self.warmup, min_runs=runs, min_time_s=secs, max_time_s=self.max_time_s,
                             threads=self.threads, timeout_s=self.timeout_s, steady_gate=self.gate)

    def check_drift(self) -> None:
        if self.drift not in DRIFT_MODES:
            raise ConfigError(f"unknown drift correction '{self.drift}'; choose {', '.join(DRIFT_MODES)}")
        if self.tables not in TABLE_MODES:
            raise ConfigError(f"unknown table mode '{self.tables}'; choose {', '.join(TABLE_MODES)}")


def layer_timing(settings: ProfileSettings, backend: str) -> str:
    """The timing mode of ``backend``'s layer points under ``settings`` (never "auto")."""
    if settings.timing not in TIMINGS:
        raise ConfigError(f"unknown timing '{settings.timing}'; choose {', '.join(TIMINGS)}")
    if settings.timing == "auto":
        return "kernel" if backend in KERNEL_TIMING_BACKENDS else "wall"
    if settings.timing == "kernel" and backend not in KERNEL_TIMING_BACKENDS:
        raise ConfigError(f"{backend} has no per-run node counters for kernel timing"
                          + (" (its PERF_COUNT times are running averages since compile)" if backend == "openvino"
                             else ""),
                          f"use --timing wall (kernel timing works with {', '.join(KERNEL_TIMING_BACKENDS)})")
    return settings.timing


class ProgressSink:
    """Receives progress events; the CLI renders them with rich. The default is silent."""

    def phase(self, description: str, total: int) -> None:  # a new bar: ``total`` jobs
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def status(self, layers_done: int, layers_total: int, points_done: int, points_total: int) -> None:
        pass

    def close(self) -> None:
        pass
