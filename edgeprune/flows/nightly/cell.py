"""One cell of a nightly run: compile and measure it, store every batch the moment it
exists, measure again while the verdict asks for it, and judge.

The first batch comes from :func:`~edgeprune.flows.compile.compile_model` (export, build,
time, verify). When the artifact of a baseline run is kept (:mod:`.keep`), the next
batches are *paired* (:mod:`.pair`): that artifact and tonight's, timed in alternating
rounds by one runner process, so the verdict compares two artifacts under the same load
(:mod:`edgeprune.results.paired`) instead of tonight against other nights. Without a kept
artifact, later batches re-time tonight's artifact alone and the history judges. Every
batch of tonight's artifact becomes a row through :meth:`Measurement.from_backend_result`,
so first and repeated batches carry the same facts; a good night keeps its artifact for
the nights after it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeprune.bench.device_lock import device_lock
from edgeprune.errors import EdgepruneError
from edgeprune.flows.nightly.keep import ArtifactKeep
from edgeprune.flows.nightly.matrix import Cell
from edgeprune.results.evaluate import (
    CellOutcome, Paired, Policy, another_batch, batches_judged, judge, reference_candidates,
)
from edgeprune.results.records import Measurement
from edgeprune.results.record import measurements_from_summary
from edgeprune.results.store import ResultsStore

if TYPE_CHECKING:
    from edgeprune.bench.bundle import BenchJob, JobResult
    from edgeprune.compile.summary import BackendResult, CompileSummary
    from edgeprune.config.devices import Device

Log = Callable[[str], None]


def retimed(b: "BackendResult", jr: "JobResult", round_medians: list[float]) -> "BackendResult":
    """``b`` with the times and checks of a new run of the same artifact (build facts,
    tolerance and precision are the artifact's and stay)."""
    from edgeprune.bench.stats import LatencyStats

    return dataclasses.replace(
        b, error=None, latency_ms=LatencyStats.from_times(jr.times_ms), runs=len(jr.times_ms),
        times_ms=list(jr.times_ms), round_medians_ms=list(round_medians), verified=jr.verified,
        max_abs_diff=jr.max_abs_diff, accuracy=jr.accuracy, threads=jr.threads, env=jr.env,
        backend_version=b.backend_version or jr.runtime_version,
    )


class CellRunner:
    """Measures and judges cells into one run of a store. One instance is shared by the
    device threads: loaded models are cached (one load per model spec), the store
    serialises its writers."""

    def __init__(self, store: ResultsStore, run_id: int, policy: Policy, work_dir: Path, *,
                 devices_file: Path | None, accept_new_host_key: bool, host_env: dict[str, Any],
                 stop: threading.Event, say: Callable[[Cell | None, str], None],
                 keep: ArtifactKeep | None = None) -> None:
        self.store, self.run_id, self.policy, self.work_dir = store, run_id, policy, work_dir
        self.keep = keep  # kept artifacts of earlier nights (None: none kept, history verdicts only)
        self.devices_file, self.accept_new_host_key = devices_file, accept_new_host_key
        self.host_env, self.stop, self.say = host_env, stop, say
        self._models: dict[str, Any] = {}
        self._model_locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def _model(self, spec: str):
        from edgeprune.models.spec import load_model

        with self._locks_lock:
            lock = self._model_locks.setdefault(spec, threading.Lock())
        with lock:
            if spec not in self._models:
                self._models[spec] = load_model(spec, log=lambda m: self.say(None, m))
            return self._models[spec]

    def _timing(self, cell: Cell, device: "Device"):
        """The lock a cell holds over its build and timing: this host's for local devices
        (:mod:`edgeprune.bench.device_lock`, the one ``measure`` takes again inside; the
        SSH executor keeps its board to one run at a time itself)."""
        if device.kind == "local":
            return device_lock(device, log=lambda m: self.say(cell, m))
        return contextlib.nullcontext()

    def _judged(self, attempts: list[Measurement], paired: Paired | None = None) -> CellOutcome:
        return judge(self.store, self.run_id, attempts, self.policy, paired)

    def _stored(self, outcome: CellOutcome) -> CellOutcome:
        for v in outcome.verdicts:
            self.store.add_verdict(self.run_id, v)
        return outcome

    def failed(self, cell: Cell, error: str) -> CellOutcome:
        """Store a cell that could not be measured, and its FAILED verdict."""
        m = Measurement(model=cell.model, backend=cell.backend, target=cell.target, device=cell.device, ok=False,
                        error=error)
        self.store.add_measurement(self.run_id, m)
        return self._stored(self._judged([m]))

    def run(self, cell: Cell) -> CellOutcome | None:
        """Compile, measure (again while the verdict asks for it), judge and store one
        cell; None when the run was interrupted meanwhile (nothing to judge)."""
        from edgeprune.config.devices import get_device
        from edgeprune.config.targets import get_target
        from edgeprune.flows.compile import CompileOptions, compile_model

        t0 = time.monotonic()
        self.say(cell, f"{cell.name}: compiling and measuring ...")
        try:
            device = get_device(cell.device, self.devices_file, self.accept_new_host_key)
            target = get_target(cell.target)
            model = self._model(cell.model)
            out_dir = self.work_dir / cell.slug
            opts = CompileOptions(backends=(cell.backend,), bench=cell.bench.settings())
            with self._timing(cell, device):
                summary = compile_model(model, target, device, out_dir, opts, log=lambda m: self.say(cell, "  " + m))
        except EdgepruneError as exc:
            if self.stop.is_set():  # the interrupt killed it: not a failure of the cell
                return None
            self.say(cell, f"{cell.name}: FAILED: {exc}")
            return self.failed(cell, str(exc))
        if self.stop.is_set():
            return None
        local = device.kind == "local"
        first = measurements_from_summary(summary, self.host_env, local, backends=[cell.backend])[0]
        self.store.add_measurement(self.run_id, first)
        attempts = [first]
        bundle_dir = out_dir / "bundle"
        paired, pairing = self._pairing(first, bundle_dir)
        ctx = (cell, device, summary, out_dir, first, local)
        if pairing is not None and not self.stop.is_set():
            if not self._paired_batch(ctx, pairing, paired, attempts):
                paired = Paired(note=f"timing the baseline's artifact failed ({paired.note})")
        outcome = self._judged(attempts, paired)
        while (why := another_batch(outcome, self.policy)) and not self.stop.is_set():
            self.say(cell, f"{cell.name}: {outcome.latency.detail.split(';')[0]} -> {why} "  # type: ignore[union-attr]
                           f"(batch {batches_judged(outcome) + 1} of at most {self.policy.max_remeasure + 1})")
            if paired.batches:
                if not self._paired_batch(ctx, pairing, paired, attempts):  # type: ignore[arg-type]
                    break
            else:
                again = self._remeasure(cell, device, summary, bundle_dir, first, len(attempts), local)
                if again is None:
                    break
                self.store.add_measurement(self.run_id, again)
                attempts.append(again)
            outcome = self._judged(attempts, paired)
        self._stored(outcome)
        self._keep_artifact(cell, first, bundle_dir)
        lat = outcome.latency
        med = f"{first.median_ms:.3f} ms" if first.median_ms else "no latency"
        flags = [v.kind + " " + v.verdict for v in outcome.verdicts if v.regression]
        how = f" {lat.data.get('method')}" if lat and lat.data.get("method") else ""
        busy = " (device busy)" if lat and lat.data.get("busy") else ""
        self.say(cell, f"{cell.name}: {med}, latency {lat.verdict if lat else '–'}{busy}"
                       + (f" ({lat.ratio:.3f}x{how})" if lat and lat.ratio else "")
                       + (f", REGRESSION: {', '.join(flags)}" if flags else "")
                       + f" [{time.monotonic() - t0:.0f} s]")
        return outcome

    # ------------------------------------------------------------------ the paired method
    def _pairing(self, first: Measurement, bundle_dir: Path
                 ) -> tuple[Paired, tuple[tuple["BenchJob", Path], tuple["BenchJob", Path]] | None]:
        """(what the verdict gets, ((tonight's job, its bundle), (the baseline's kept job,
        its folder)) or None with the reason in ``Paired.note``)."""
        from edgeprune.bench.measure import Bundle

        if not self.policy.retime or self.keep is None:
            return Paired(note="re-timing the baseline's artifact is off (baseline.retime: false)"), None
        if not (first.ok and first.times_ms and first.artifact_hash) or first.emulated:
            return Paired(note="tonight's artifact was not timed"), None
        candidates = reference_candidates(self.store, first, self.run_id, self.policy)
        if not candidates:
            return Paired(note="no earlier run of this series to pair with"), None
        for ref in candidates:
            kept = self.keep.get(first.cell, ref.artifact_hash)
            if kept is not None:
                break
        else:
            return Paired(note="the baseline's artifact is not kept (it is from before artifacts were kept, "
                               f"or was removed from {self.keep.root})"), None
        try:
            new_job = next(j for j in Bundle.load(bundle_dir).jobs if j.id == first.backend)
        except (StopIteration, EdgepruneError):
            return Paired(note="tonight's bundle has no job to pair"), None
        return Paired(reference=ref), ((new_job, bundle_dir), kept)

    def _paired_batch(self, ctx: tuple, pairing: tuple, paired: Paired, attempts: list[Measurement]) -> bool:
        """Time one paired batch; on success its pairs join ``paired`` and tonight's half
        is stored as the cell's next attempt. False (the reason in ``paired.note``) if not."""
        from edgeprune.flows.nightly.pair import paired_bundle, time_paired

        cell, device, summary, out_dir, first, local = ctx
        try:
            bundle = paired_bundle(out_dir / "paired", pairing[0], pairing[1], cell.bench.settings(),
                                   self.policy.pair_rounds)
            with self._timing(cell, device):
                batch, jr, medians = time_paired(device, bundle, timeout_s=cell.bench.timeout_s,
                                                 log=lambda m: self.say(cell, "  " + m))
        except (EdgepruneError, OSError) as exc:
            self.say(cell, f"{cell.name}: paired timing failed: {exc}")
            paired.note = str(exc)
            return False
        if not batch.rounds:
            paired.note = "no round timed both artifacts"
            return False
        b = next(b for b in summary.backends if b.name == cell.backend)
        again = Measurement.from_backend_result(summary, retimed(b, jr, medians), host_env=self.host_env,
                                                local=local, model_hash=first.model_hash, attempt=len(attempts))
        self.store.add_measurement(self.run_id, again)
        attempts.append(again)
        paired.batches.append(batch)
        return True

    def _keep_artifact(self, cell: Cell, first: Measurement, bundle_dir: Path) -> None:
        """Keep tonight's artifact for the nights after it (a good measurement only: an
        artifact whose outputs were wrong is never a baseline)."""
        from edgeprune.bench.measure import Bundle

        if self.keep is None or not self.policy.retime or not first.good or self.stop.is_set():
            return
        try:
            job = next(j for j in Bundle.load(bundle_dir).jobs if j.id == first.backend)
        except (StopIteration, EdgepruneError):
            return
        if self.keep.add(first.cell, first.artifact_hash, job, bundle_dir) is None:
            self.say(cell, f"{cell.name}: note: could not keep the artifact in {self.keep.root} "
                           "(tomorrow's verdict falls back to the history)")

    def _remeasure(self, cell: Cell, device: "Device", summary: "CompileSummary", bundle_dir: Path,
                   first: Measurement, attempt: int, local: bool) -> Measurement | None:
        """Time the already-built artifact of ``cell`` again (a fresh runner process)."""
        from edgeprune.bench.measure import Bundle, measure_on

        try:
            # the manifest on disk is the one the first batch ran (rounds already laid
            # out): time it again as it is
            bundle = Bundle.load(bundle_dir)
            with self._timing(cell, device):
                measured = measure_on(device, bundle, rounds=1, timeout_s=cell.bench.timeout_s, only=[cell.backend],
                                      log=lambda m: self.say(cell, "  " + m))
        except EdgepruneError as exc:
            self.say(cell, f"{cell.name}: re-measurement failed: {exc}")
            return None
        jr = measured.results.get(cell.backend)
        if jr is None or not jr.ok or not jr.times_ms:
            self.say(cell, f"{cell.name}: re-measurement failed: {jr.error if jr else 'no result'}")
            return None
        b = next(b for b in summary.backends if b.name == cell.backend)
        again = retimed(b, jr, measured.round_medians.get(cell.backend, []))
        return Measurement.from_backend_result(summary, again, host_env=self.host_env, local=local,
                                               model_hash=first.model_hash, attempt=attempt)
