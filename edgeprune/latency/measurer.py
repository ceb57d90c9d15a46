"""Time many small graphs on a device, in bundles of about ``chunk_s`` device seconds.

Every measurement is a :class:`~edgeprune.bench.bundle.BenchJob` in a bundle run by the
on-device runner through :func:`edgeprune.bench.measure.measure_on` (local process or
SSH): nothing is timed on the host, so an SSH board is profiled with no extra code. One
bundle holds many layer graphs (one runner process for all of them, built by
:mod:`~edgeprune.latency.layer_bundle`) and is cut into chunks, so progress is reported
with an ETA and every finished chunk can be saved (an interrupted profile resumes where
it stopped). The chunk sizes come from a cost model that learns the device's ms per MAC
from each chunk's results.

Interrupted (Ctrl-C, SIGTERM, SIGHUP) while a chunk runs: the series the runner had
finished (complete lines of the bundle's results.jsonl; the executor stops the runner)
are folded like a whole chunk and handed to ``on_chunk`` before the interruption goes
on up as :class:`ChunkInterrupted`, so a point timed in some of its rounds is kept with
the rounds it still owes (``Timing.short``).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeprune.bench.bundle import JobResult, read_results
from edgeprune.bench.measure import Bundle, MeasureInterrupted, measure_on
from edgeprune.bench.settings import BenchSettings
from edgeprune.errors import ConfigError, Interrupted
from edgeprune.latency.layer_bundle import (REFERENCE_KEY, REFERENCE_PER_ROUND, Job, LayerBundle, build_bundle,
                                            reference_job, shorter)
from edgeprune.latency.series import Timing, fold
from edgeprune.latency.settings import ProfileSettings, ProgressSink, layer_timing

if TYPE_CHECKING:
    from edgeprune.config.devices import Device
    from edgeprune.config.targets import Target

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class ChunkInterrupted(Interrupted):
    """Stopped while a chunk was timed; ``timings`` are what it had finished (already
    given to ``on_chunk``), each with the rounds it still owes (``Timing.short``)."""

    def __init__(self, stop: Interrupted, timings: dict[str, Timing]) -> None:
        super().__init__(stop.signum)  # what is kept is the caller's to say (on_chunk saved it, or nothing did)
        self.timings = timings


class BundleMeasurer:
    """Builds artifacts for many small graphs and times them on a device in chunks."""

    def __init__(self, target: "Target", device: "Device", backend: str, settings: ProfileSettings,
                 progress: ProgressSink | None = None, log: Log = _stderr) -> None:
        from edgeprune.compile.backends import get_backend

        self.target, self.device, self.settings = target, device, settings
        self.backend = get_backend(backend)
        ok, why = self.backend.supports(target)
        if not ok:
            raise ConfigError(f"backend {backend} cannot build for target {target.name}: {why}")
        if device.kind == "local" and not target.is_native:
            raise ConfigError(
                f"target {target.name} ({target.arch}, accelerator {target.accelerator}) cannot run on device "
                f"'{device.name}', and a latency table must be measured on the target",
                f"pass --device with a {target.name} board (see `edgeprune devices`)",
            )
        self.timing = layer_timing(settings, backend)  # of layer points and the reference
        self.threads = settings.threads or target.num_cores()
        self.progress = progress or ProgressSink()
        self.log = log
        # ms per MAC and fixed ms per inference, updated from measurements (for chunking/ETA)
        self._ms_per_mac = 1.0 / (max(1.0, target.peak_gflops()) * 0.25 * 1e6) * 2
        self._ms_fixed = 0.02
        self._load_s = 0.03 if backend == "onnxruntime" else 0.08
        self.bundles_run = 0
        self.last_env: dict[str, Any] = {}
        #: the steady gate's probe level seen on this device: a hint for the next bundle's
        #: gate, so only the first bundle calibrates
        self.gate_fast_ms: float | None = None
        self.unsteady_series = 0

    # ---- cost model ----------------------------------------------------------------------
    def estimate_ms(self, macs: float) -> float:
        return self._ms_fixed + macs * self._ms_per_mac

    def job_seconds(self, macs: float, rounds: int, series: BenchSettings) -> float:
        t = self.estimate_ms(macs) / 1e3
        return rounds * (self._load_s + series.warmup * t + max(series.min_runs * t, series.min_time_s))

    def _chunks(self, jobs: list[Job], rounds: int, series: BenchSettings, anchor: Job | None = None
                ) -> list[list[Job]]:
        chunks: list[list[Job]] = []
        cur: list[Job] = []
        acc = 0.0
        extra = self.job_seconds(anchor.macs, rounds, series) if anchor is not None else 0.0  # timed before each
        for j in jobs:
            cost = self.job_seconds(j.macs, rounds, series) + extra
            if cur and acc + cost > self.settings.chunk_s:
                chunks.append(cur)
                cur, acc = [], 0.0
            cur.append(j)
            acc += cost
        if cur:
            chunks.append(cur)
        return chunks

    # ---- measuring ---------------------------------------------------------------------------
    def measure(self, jobs: list[Job], rounds: int, series: BenchSettings,
                on_chunk: Callable[[dict[str, Timing]], None] | None = None,
                description: str = "measuring", reference: bool = True, anchor: Job | None = None
                ) -> tuple[dict[str, Timing], dict[str, str]]:
        """Time ``jobs`` (``rounds`` interleaved series each, timed as ``series`` says);
        returns timings and errors by key. With ``reference``, every bundle also times
        :data:`~edgeprune.latency.layer_bundle.REFERENCE_LAYER` and each timing carries that
        bundle's reference (``Timing.ref_ms``). ``anchor`` is timed in every bundle next to
        every job (``Timing.ratios``, ``Timing.fraction``); its own timing, the
        series of all bundles, is returned under its key. ``on_chunk`` gets each chunk's
        timings as soon as it is measured (to save them), and, when a stop signal cuts a
        chunk, the series that chunk finished, before :class:`ChunkInterrupted` is raised."""
        timings: dict[str, Timing] = {}
        errors: dict[str, str] = {}
        chunks = self._chunks(jobs, rounds, series, anchor)
        ref = reference_job(self.timing) if reference else None
        per_round = len(jobs) + (len(chunks) * REFERENCE_PER_ROUND if ref else 0) + (
            len(jobs) + len(chunks) if anchor is not None else 0)
        self.progress.phase(description, per_round * rounds)
        t0, done = time.perf_counter(), 0
        for ci, chunk in enumerate(chunks):
            if ci:  # a plain-text progress line as well (logs, CI, remote shells)
                el = time.perf_counter() - t0
                self.log(f"  {description}: {done}/{len(jobs)} timed in {el:.0f} s, "
                         f"~{el / done * (len(jobs) - done):.0f} s left")
            stop: ChunkInterrupted | None = None
            try:
                t, e = self._run_chunk(([ref] if ref else []) + ([anchor] if anchor else []) + chunk, rounds,
                                       series, anchor.key if anchor else None)
            except ChunkInterrupted as cut:  # keep what the chunk finished, then stop
                stop, t, e = cut, cut.timings, {}
            done += len(chunk)
            if ref is not None:
                rt = t.pop(REFERENCE_KEY, None)
                for tm in t.values():
                    tm.ref_ms = rt.ms if rt else None
                if rt is None and t:
                    self.log(f"warning: the reference job failed ({e.get(REFERENCE_KEY, 'no result')}); "
                             "this bundle's points are not drift-corrected")
                e.pop(REFERENCE_KEY, None)
            if anchor is not None and anchor.key in t and anchor.key in timings:  # one timing of all bundles
                t[anchor.key] = _merged(timings[anchor.key], t[anchor.key])
            timings.update(t)
            errors.update(e)
            if on_chunk is not None and t:
                on_chunk(t)
            if stop is not None:
                raise stop
        return timings, errors

    def _run_chunk(self, chunk: list[Job], rounds: int, series: BenchSettings, anchor: str | None = None
                   ) -> tuple[dict[str, Timing], dict[str, str]]:
        root = self.settings.keep_bundles
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="lut-bundle-", dir=str(root) if root else None))
        try:
            lb = build_bundle(folder, chunk, self.backend, self.target, self.threads, rounds, series,
                              shorter(series, self.settings.series()), self._gate_config(),
                              seed=f"{self.settings.seed}:{self.bundles_run}", anchor=anchor)
            if not lb.bundle.jobs:
                return {}, lb.errors
            try:
                results = self._run_with_progress(lb.bundle)
            except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP: keep the finished series
                raise ChunkInterrupted(Interrupted.of(exc), self._finished(lb, exc, rounds)) from None
            self.bundles_run += 1
        finally:
            if root is None:
                shutil.rmtree(folder, ignore_errors=True)
        f = fold(lb, results)
        self.unsteady_series += f.unsteady
        self.last_env = f.env or self.last_env
        if f.gate_fast_ms:
            self.gate_fast_ms = min(f.gate_fast_ms, self.gate_fast_ms or f.gate_fast_ms)
        if f.ms_per_mac is not None:  # better cost estimates for the next chunks
            self._ms_per_mac = f.ms_per_mac
        return f.timings, f.errors

    def _finished(self, lb: LayerBundle, stop: BaseException, rounds: int) -> dict[str, Timing]:
        """The timings of an interrupted bundle: the results the executor brought back
        with the interruption, else (stopped outside the runner, or by an executor that
        brings none) the complete lines of the bundle's results.jsonl on this host."""
        if isinstance(stop, MeasureInterrupted):
            results = stop.measurements.results
        else:
            results = {r.id: r for r in read_results(lb.bundle.dir)}
        if not results:
            return {}
        self.bundles_run += 1
        f = fold(lb, results, asked=rounds)
        self.unsteady_series += f.unsteady
        self.last_env = f.env or self.last_env
        return f.timings

    def _gate_config(self) -> dict[str, Any] | None:
        if not self.settings.gate:
            return None
        return {"fast_ms": self.gate_fast_ms} if self.gate_fast_ms else {}

    def _run_with_progress(self, bundle: Bundle) -> dict[str, JobResult]:
        """Run the bundle; while it runs, count finished jobs in results.jsonl (local
        devices write it as they go; a remote device's count arrives at the end)."""
        done = threading.Event()
        seen = [0]
        res_path = bundle.dir / "results.jsonl"

        def watch() -> None:
            while not done.wait(0.5):
                try:
                    n = res_path.read_bytes().count(b"\n") if res_path.exists() else 0
                except OSError:
                    continue
                if n > seen[0]:
                    self.progress.advance(n - seen[0])
                    seen[0] = n

        th = threading.Thread(target=watch, daemon=True)
        th.start()
        try:
            results = measure_on(self.device, bundle, timeout_s=self.settings.timeout_s).results
        finally:
            done.set()
            th.join()
        if len(bundle.jobs) > seen[0]:
            self.progress.advance(len(bundle.jobs) - seen[0])
        return results


def _merged(a: Timing, b: Timing) -> Timing:
    """The anchor's series of two bundles as one timing (the reference of the first)."""
    return Timing(rounds=a.rounds + b.rounds, runs=a.runs + b.runs, ref_ms=a.ref_ms,
                  ref_rounds=a.ref_rounds + b.ref_rounds, short=a.short + b.short)


def warn_if_busy(device: "Device", log: Log) -> float | None:
    """On a local device, say so when other processes keep the CPUs busy: jobs longer
    than a scheduler time slice then get preempted, which inflates long inferences much
    more than short ones (the table stops adding up). Returns the CPUs other processes
    kept busy (sampled now, while this process waits; see :func:`edgeprune.host.busy_cores`)."""
    from edgeprune import host

    if device.kind != "local":
        return None
    busy = host.busy_cores()
    cores = host.cores()
    if busy > 0.25 * cores:
        log(f"warning: other processes keep {busy:.1f} of {cores} CPUs busy: timings are inflated and "
            "noisy, long inferences more than short ones; for a table you can trust, profile on an idle device")
    return busy
