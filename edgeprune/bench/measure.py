"""``measure``: time a bundle's jobs on one or more devices, in interleaved rounds.

This is the one way edgeprune times anything on a device: ``compile`` and ``bench``,
fleet runs over several boards, nightly re-measurement, the latency profiler's layer
bundles and every script in ``benchmarks/`` call :func:`measure` (or, for a single
device, :func:`measure_on`). It writes the manifest, expands the jobs into rounds
(:mod:`edgeprune.bench.rounds`), runs the device's executor and folds the rounds back.

A device that fails is recorded in its :class:`Measurements` (``error``) and the
others carry on: one unreachable board never throws away another's numbers.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from edgeprune.bench import rounds as _rounds
from edgeprune.bench.bundle import BenchJob, JobResult, write_manifest
from edgeprune.bench.device_lock import device_lock
from edgeprune.bench.devices import executor_for
from edgeprune.bench.executor import RunnerInterrupted
from edgeprune.config.devices import Device
from edgeprune.errors import EdgepruneError, Interrupted
from edgeprune.signals import StopFlag

Log = Callable[[str], None]


def _quiet(msg: str) -> None:
    pass


@dataclass
class Bundle:
    """A deploy bundle on the host: its folder and the jobs its manifest will hold."""

    dir: Path
    jobs: list[BenchJob] = field(default_factory=list)

    def write(self) -> Path:
        return write_manifest(self.dir, self.jobs)

    @classmethod
    def load(cls, path: Path) -> "Bundle":
        """An existing bundle (e.g. a nightly baseline's) with the jobs of its manifest."""
        import json

        from edgeprune.errors import BenchError

        try:
            data = json.loads((Path(path) / "manifest.json").read_text())
        except (OSError, ValueError) as exc:
            raise BenchError(f"{path} is not a deploy bundle ({exc})", "rebuild it with edgeprune compile") from None
        return cls(Path(path), [BenchJob.from_dict(j) for j in data.get("jobs", [])])


@dataclass
class Measurements:
    """What one device measured: one merged result per job id, and per-round medians."""

    device: Device
    results: dict[str, JobResult] = field(default_factory=dict)
    round_medians: dict[str, list[float]] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0  # wall time of the device run

    @property
    def ok(self) -> bool:
        return self.error is None


class DeviceInterrupted(Interrupted):
    """Stopped while timing on ``measurements.device``: the runner there was stopped, and
    ``measurements`` holds every job it finished (rounds folded as usual)."""

    def __init__(self, stop: Interrupted, measurements: Measurements) -> None:
        super().__init__(stop.signum, f"{len(measurements.results)} measured job(s) kept")
        self.measurements = measurements


class MeasureInterrupted(Interrupted):
    """:func:`measure` stopped: every device's runner was stopped, and ``measurements``
    (by device name) holds what each had finished."""

    def __init__(self, stop: Interrupted, measurements: dict[str, Measurements]) -> None:
        n = sum(len(m.results) for m in measurements.values())
        super().__init__(stop.signum, f"{n} measured job(s) on {len(measurements)} device(s) kept")
        self.measurements = measurements


def measure_on(device: Device, bundle: Bundle, *, rounds: int = 1, timeout_s: float = 1800.0,
               only: Sequence[str] | None = None, log: Log = _quiet, wait: bool = True,
               stop: StopFlag | None = None) -> Measurements:
    """Run ``bundle`` on ``device`` in ``rounds`` interleaved rounds, holding the
    device's lock (:mod:`edgeprune.bench.device_lock`; ``wait=False`` fails at once when
    another run holds it). Stopped (a signal, or ``stop`` from the main thread):
    :class:`DeviceInterrupted` with the jobs that finished.

    Device errors are raised (a caller timing one device wants to know at once); use
    :func:`measure` for several devices, where they are recorded instead.
    """
    jobs = _rounds.expand(bundle.jobs, rounds)
    write_manifest(bundle.dir, jobs)
    n = len({_rounds.base_id(j.id) for j in jobs})
    k = len(jobs) // max(n, 1)
    log(f"benchmarking {n} artifact(s) on device '{device.name}'" + (f" in {k} interleaved rounds" if k > 1 else "")
        + " ...")
    wanted = None
    if only:
        keep = set(only)
        wanted = [j.id for j in jobs if _rounds.base_id(j.id) in keep]
    # SSH boards are locked on the board by their executor; this host's CPU is locked here
    lock = (device_lock(device, wait=wait, log=log, stop=stop) if device.kind == "local"
            else contextlib.nullcontext())
    try:
        with lock:
            raw = executor_for(device).run_bundle(bundle.dir, timeout_s=timeout_s, only=wanted, stop=stop)
    except RunnerInterrupted as halt:
        merged, medians = _rounds.merge({r.id: r for r in halt.results})
        raise DeviceInterrupted(halt, Measurements(device=device, results=merged, round_medians=medians,
                                                   error=f"interrupted ({halt})")) from None
    except KeyboardInterrupt as exc:  # before the runner started (waiting for the lock)
        halt = Interrupted.of(exc)
        raise DeviceInterrupted(halt, Measurements(device=device, error=f"interrupted ({halt})")) from None
    merged, medians = _rounds.merge({r.id: r for r in raw})
    return Measurements(device=device, results=merged, round_medians=medians)


def check_distinct(devices: Sequence[Device]) -> None:
    """Each device once: two threads timing one board would measure each other."""
    names = [d.name for d in devices]
    if len(set(names)) != len(names):
        raise EdgepruneError(f"device given twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")


def measure(bundles: dict[str, Bundle] | Bundle, devices: Sequence[Device], *, rounds: int = 1,
            timeout_s: float = 1800.0, log: Log = _quiet, max_parallel: int | None = None, wait: bool = True,
            ) -> dict[str, Measurements]:
    """Measure on every device in parallel (one thread per device; each executor keeps
    its board to one run at a time). ``bundles`` is one bundle for all devices or one
    per device name (a bundle folder is written by the run, so parallel devices each
    need their own). Returns measurements by device name; failures are recorded.

    Stopped by a signal: every device's runner is stopped and :class:`MeasureInterrupted`
    carries what each device had finished."""
    check_distinct(devices)
    per_device = bundles if isinstance(bundles, dict) else {d.name: bundles for d in devices}
    if len(devices) > 1 and len({id(per_device[d.name]) for d in devices}) < len(devices):
        raise ValueError("measure: several devices need one bundle folder each")
    log_lock = threading.Lock()
    stop = StopFlag() if len(devices) > 1 else None  # worker threads cannot receive the signal themselves

    def run(dev: Device) -> Measurements:
        def dlog(msg: str) -> None:
            with log_lock:
                log(f"[{dev.name}] {msg}" if len(devices) > 1 else msg)

        t0 = time.monotonic()
        try:
            m = measure_on(dev, per_device[dev.name], rounds=rounds, timeout_s=timeout_s, log=dlog, wait=wait,
                           stop=stop)
        except EdgepruneError as exc:
            dlog(f"benchmark failed: {exc}")
            m = Measurements(device=dev, error=str(exc))
        except DeviceInterrupted as halt:
            if stop is None:  # one device, in this thread: the stop goes up with its measurements
                halt.measurements.seconds = time.monotonic() - t0
                raise MeasureInterrupted(halt, {dev.name: halt.measurements}) from None
            m = halt.measurements
        m.seconds = time.monotonic() - t0
        return m

    if stop is None:
        return {devices[0].name: run(devices[0])}
    with ThreadPoolExecutor(max_workers=max_parallel or len(devices)) as pool:
        futures = [pool.submit(run, d) for d in devices]
        try:
            return {m.device.name: m for m in (f.result() for f in futures)}
        except KeyboardInterrupt as exc:
            halt = Interrupted.of(exc)
            log(f"stopping the runs on {len(devices)} devices (finished jobs are kept) ...")
            stop.set(halt.signum)
            done = [f.result() for f in futures]  # each stops its runner and returns what it finished
            raise MeasureInterrupted(halt, {m.device.name: m for m in done}) from None
