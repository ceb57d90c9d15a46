"""Measure latency tables on the device, through the same deploy bundle as ``bench``.

Every measurement here is a :class:`~edgeprune.bench.bundle.BenchJob` in a bundle run
by the on-device runner through the device's :class:`Executor` (local process or SSH):
nothing is timed on the host, so an SSH board is profiled with no extra code. One
bundle holds many small layer graphs (one runner process for all of them) and is cut
into chunks of about ``chunk_s`` seconds, so progress is reported and every finished
chunk is saved to the cache (an interrupted profile resumes where it stopped).

Measurement care on a noisy machine: each point is timed in ``rounds`` short series,
and the rounds of all points in a chunk are *interleaved* (round 1 of every point in a
random order, then round 2, ...), so a burst of load from another process hits many
points a little instead of one point a lot. A point's latency is the median of its
fast-state round medians (:func:`~edgeprune.latency.lut.robust_ms`: why, with the
measurements of this host); points whose fast level is unconfirmed or whose rounds
disagree are measured again (more rounds).

The profile loop is a fixpoint: ask the table what it still needs (planned points,
then refinement of unconfirmed intervals, then noisy points), measure that, repeat. The
plan depends only on the measured data, so a second run over the cached table finds
nothing to measure.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeprune.bench.bundle import BenchJob, JobResult, write_manifest
from edgeprune.errors import BenchError, ConfigError, ModelError
from edgeprune.latency.grid import GridSettings
from edgeprune.latency.layers import input_shapes, make_inputs, write_layer_onnx
from edgeprune.latency.lut import REMEASURE_ROUNDS, LatencyEntry, LatencyTable, Point, complete_table, robust_ms
from edgeprune.latency.predictor import LatencyPredictor, ModelMeasurements, VariantMeasurement, error_stats
from edgeprune.latency.store import LUTStore, TableFile, TableKey, target_fingerprint
from edgeprune.prune.space import PrunableLayer, PruneSpace

if TYPE_CHECKING:
    from edgeprune.config.devices import Device
    from edgeprune.config.targets import Target
    from edgeprune.models.base import LoadedModel

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- settings and progress -------------------------------------------------------------
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
    #: time every series inside the runner's steady gate (edgeprune.bench.runner.SteadyGate):
    #: series are timed in the device's steady state, or re-timed, or marked unsteady; a
    #: point's unsteady rounds are dropped when it has a steady one
    gate: bool = True
    #: what a layer point's time is (whole models are always wall-clock): "kernel" = the
    #: layer's own work from the runtime's per-node counters, without the per-call overhead
    #: and the layout conversions a standalone graph pays and a model does not; "wall";
    #: "auto" = kernel where the runtime has the counters (KERNEL_TIMING_BACKENDS)
    timing: str = "auto"


#: runtimes whose per-node profiling counters the runner reads (runner.Model.kernel_times)
KERNEL_TIMING_BACKENDS = ("onnxruntime", "openvino")
TIMINGS = ("auto", "kernel", "wall")


def layer_timing(settings: "ProfileSettings", backend: str) -> str:
    """The timing mode of ``backend``'s layer points under ``settings`` (never "auto")."""
    if settings.timing not in TIMINGS:
        raise ConfigError(f"unknown timing '{settings.timing}'; choose {', '.join(TIMINGS)}")
    if settings.timing == "auto":
        return "kernel" if backend in KERNEL_TIMING_BACKENDS else "wall"
    if settings.timing == "kernel" and backend not in KERNEL_TIMING_BACKENDS:
        raise ConfigError(f"{backend} has no per-node counters for kernel timing",
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


# ---- measuring through bundles --------------------------------------------------------------
@dataclass
class Job:
    """One thing to time: an ONNX graph writer, its inputs and a cost estimate."""

    key: str
    write_onnx: Callable[[Path], Any]
    inputs: Callable[[], list[np.ndarray]]
    input_key: str
    macs: float = 0.0
    timing: str = "wall"  # BenchJob.timing


@dataclass
class Timing:
    rounds: list[float]  # per-round median ms (raw)
    runs: int
    env: dict[str, Any] = field(default_factory=dict)
    runtime_version: str | None = None
    ref_ms: float | None = None  # the reference job, measured interleaved in the same bundle
    #: per round, the reference timed right before and after this point's series (their mean)
    ref_rounds: list[float | None] = field(default_factory=list)
    #: rounds the steady gate marked unsteady and that were dropped (a steady one existed)
    unsteady_dropped: int = 0

    @property
    def ms(self) -> float:
        return robust_ms(self.rounds)


#: A fixed mid-size conv timed in every bundle, interleaved with the points: the unit in
#: which table entries are stored. Load from other processes slows it like the points
#: around it, so dividing by it removes slow drift between bundles and between runs.
REFERENCE_LAYER = PrunableLayer("reference", "conv", 64, 64, kernel=(3, 3), padding=(1, 1), input_hw=(28, 28))
REFERENCE_KEY = "__reference__"
#: reference series per round, spread evenly through it (first and last job included): the
#: bundle's reference is the fast state of rounds x this many short series, so one series
#: caught in a slow moment cannot rescale a whole bundle, and every point has a reference
#: timed within a few jobs of it (``Timing.ref_rounds``)
REFERENCE_PER_ROUND = 4
DRIFT_MODES = ("bundle", "local", "none")


def gate_info(r: JobResult) -> dict[str, Any]:
    """What the runner's steady gate said about a job's series ({} without a gate)."""
    return ((r.env or {}).get("timing") or {}).get("gate") or {}


def keep_steady(results: list[JobResult]) -> tuple[list[JobResult], int, int]:
    """(kept, dropped, unsteady): a point's series the steady gate marked unsteady are
    dropped when at least one of its series is steady; with none steady all are kept
    (a point is never lost to the gate, its spread then says how far to trust it)."""
    steady = [r for r in results if gate_info(r).get("state") != "unsteady"]
    unsteady = len(results) - len(steady)
    return (steady, unsteady, unsteady) if steady else (results, 0, unsteady)


def reference_job(timing: str = "wall") -> Job:
    """The drift reference, timed like the table's layer points (``timing``) in every
    bundle, whole-model bundles included: its ratios must compare like with like."""
    L = REFERENCE_LAYER
    return Job(key=REFERENCE_KEY, write_onnx=lambda dst: write_layer_onnx(L, 64, 64, dst, seed=12345),
               inputs=lambda: make_inputs(L, 64), input_key=str(input_shapes(L, 64)), macs=float(L.macs(64, 64)),
               timing=timing)


def series_ms(times: list[float], timing: str) -> float:
    """One series' value: the median run; for kernel timing the interquartile mean, since
    the runtimes count node time in whole microseconds (a 10 us kernel would otherwise
    move in 10 % steps)."""
    if timing != "kernel" or len(times) < 4:
        return float(statistics.median(times))
    xs = sorted(times)
    q = len(xs) // 4
    mid = xs[q:len(xs) - q]
    return float(sum(mid) / len(mid))


class BundleMeasurer:
    """Builds artifacts for many small graphs and times them on a device in chunks."""

    def __init__(self, target: "Target", device: "Device", backend: str, settings: ProfileSettings,
                 progress: ProgressSink | None = None, log: Log = _stderr) -> None:
        from edgeprune.bench.devices import executor_for
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
        self.executor = executor_for(device)
        self.timing = layer_timing(settings, backend)  # of layer points and the reference
        self.threads = settings.threads or target.num_cores()
        self.progress = progress or ProgressSink()
        self.log = log
        # ms per MAC and fixed ms per inference, updated from measurements (for chunking/ETA)
        self._ms_per_mac = 1.0 / (max(1.0, target.peak_gflops()) * 0.25 * 1e6) * 2
        self._ms_fixed = 0.02
        self._load_s = 0.03 if backend == "onnxruntime" else 0.08
        self.bundles_run = 0
        self.device_seconds = 0.0
        self.last_env: dict[str, Any] = {}
        self.runtime_version: str | None = None
        #: the steady gate's probe level seen on this device: a hint for the next bundle's
        #: gate, so only the first bundle calibrates
        self.gate_fast_ms: float | None = None
        self.unsteady_series = 0

    def estimate_ms(self, macs: float) -> float:
        return self._ms_fixed + macs * self._ms_per_mac

    def job_seconds(self, macs: float, rounds: int, min_runs: int, min_time_s: float) -> float:
        t = self.estimate_ms(macs) / 1e3
        s = self.settings
        return rounds * (self._load_s + s.warmup * t + max(min_runs * t, min_time_s))

    def measure(self, jobs: list[Job], rounds: int, min_runs: int, min_time_s: float,
                on_chunk: Callable[[dict[str, Timing]], None] | None = None,
                description: str = "measuring", reference: bool = True) -> tuple[dict[str, Timing], dict[str, str]]:
        """Time ``jobs`` (``rounds`` interleaved series each); returns timings and errors
        by key. With ``reference``, every bundle also times :data:`REFERENCE_LAYER` and
        each timing carries that bundle's reference (``Timing.ref_ms``)."""
        timings: dict[str, Timing] = {}
        errors: dict[str, str] = {}
        chunks: list[list[Job]] = []
        cur: list[Job] = []
        acc = 0.0
        for j in jobs:
            cost = self.job_seconds(j.macs, rounds, min_runs, min_time_s)
            if cur and acc + cost > self.settings.chunk_s:
                chunks.append(cur)
                cur, acc = [], 0.0
            cur.append(j)
            acc += cost
        if cur:
            chunks.append(cur)
        ref = reference_job(self.timing) if reference else None
        self.progress.phase(description, (len(jobs) + (len(chunks) * REFERENCE_PER_ROUND if ref else 0)) * rounds)
        t0, done = time.perf_counter(), 0
        for ci, chunk in enumerate(chunks):
            if ci:  # a plain-text progress line as well (logs, CI, remote shells)
                el = time.perf_counter() - t0
                self.log(f"  {description}: {done}/{len(jobs)} timed in {el:.0f} s, "
                         f"~{el / done * (len(jobs) - done):.0f} s left")
            t, e = self._run_chunk(([ref] if ref else []) + chunk, rounds, min_runs, min_time_s)
            done += len(chunk)
            if ref is not None:
                rt = t.pop(REFERENCE_KEY, None)
                for tm in t.values():
                    tm.ref_ms = rt.ms if rt else None
                if rt is None:
                    self.log(f"warning: the reference job failed ({e.get(REFERENCE_KEY, 'no result')}); "
                             "this bundle's points are not drift-corrected")
                e.pop(REFERENCE_KEY, None)
            timings.update(t)
            errors.update(e)
            if on_chunk is not None and t:
                on_chunk(t)
        return timings, errors

    def _run_chunk(self, chunk: list[Job], rounds: int, min_runs: int, min_time_s: float
                   ) -> tuple[dict[str, Timing], dict[str, str]]:
        s = self.settings
        by_job = {j.key: j for j in chunk}
        root = s.keep_bundles
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)
        bundle = Path(tempfile.mkdtemp(prefix="lut-bundle-", dir=str(root) if root else None))
        errors: dict[str, str] = {}
        try:
            built: dict[str, tuple[str, dict[str, Any], str]] = {}  # key -> (artifact rel, options, inputs rel)
            inputs_written: dict[str, str] = {}
            from edgeprune.bench.io import save_arrays

            for i, j in enumerate(chunk):
                try:
                    src = bundle / "src" / f"{i}.onnx"
                    src.parent.mkdir(parents=True, exist_ok=True)
                    j.write_onnx(src)
                    art = self.backend.build(src, self.target, bundle / "a" / str(i), threads=self.threads)
                    src.unlink(missing_ok=True)
                except Exception as exc:  # noqa: BLE001 - one failed point must not stop the table
                    errors[j.key] = f"build failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                    continue
                if j.input_key not in inputs_written:
                    rel = f"in/{len(inputs_written)}.npz"
                    save_arrays(bundle / rel, "in", j.inputs())
                    inputs_written[j.input_key] = rel
                built[j.key] = (str(art.path.relative_to(bundle)), dict(art.options), inputs_written[j.input_key])
            rng = random.Random(f"{self.settings.seed}:{self.bundles_run}")
            keys = list(built)
            index = {k: i for i, k in enumerate(keys)}
            points = [k for k in keys if k != REFERENCE_KEY]
            has_ref = REFERENCE_KEY in built and bool(points)
            bench_jobs: list[BenchJob] = []

            def add(k: str, job_id: str, runs: int, secs: float) -> None:
                art, opts, inp = built[k]
                bench_jobs.append(BenchJob(
                    id=job_id, backend=self.backend.name, artifact=art, inputs=inp, threads=self.threads,
                    options=opts, warmup=s.warmup, min_runs=runs, min_time_s=secs, max_time_s=s.max_time_s,
                    gate=self._gate_config(), timing=by_job[k].timing,
                ))

            for r in range(rounds):
                order = points[:]
                rng.shuffle(order)  # interleave: a load burst hits many points a little
                slots = sorted({round(i * len(order) / (REFERENCE_PER_ROUND - 1))
                                for i in range(REFERENCE_PER_ROUND)}) if has_ref else []
                for pos in range(len(order) + 1):
                    if pos in slots:
                        add(REFERENCE_KEY, f"{index[REFERENCE_KEY]}.r{r}.{slots.index(pos)}",  # a short series
                            min(min_runs, s.min_runs), min(min_time_s, s.min_time_s))
                    if pos < len(order):
                        add(order[pos], f"{index[order[pos]]}.r{r}", min_runs, min_time_s)
                if not points and REFERENCE_KEY in built:  # only the reference was asked for
                    add(REFERENCE_KEY, f"{index[REFERENCE_KEY]}.r{r}", min_runs, min_time_s)
            if not bench_jobs:
                return {}, errors
            write_manifest(bundle, bench_jobs)
            results = self._run_with_progress(bundle, len(bench_jobs))
            self.bundles_run += 1
        finally:
            if root is None:
                shutil.rmtree(bundle, ignore_errors=True)

        per_key: dict[str, list[JobResult]] = {}
        for r in results:
            idx = int(r.id.split(".r")[0])
            per_key.setdefault(keys[idx], []).append(r)
        local_ref = self._local_references(bench_jobs, results, keys)
        timings: dict[str, Timing] = {}
        ratios = []
        for k, rs in per_key.items():
            good = [r for r in rs if r.ok and r.times_ms]
            if not good:
                errors[k] = next((r.error for r in rs if r.error), "no timings")
                continue
            good, dropped, unsteady = keep_steady(good)
            self.unsteady_series += unsteady
            meds = [series_ms(r.times_ms, by_job[k].timing) for r in good]
            timings[k] = Timing(rounds=meds, runs=sum(len(r.times_ms) for r in good), env=good[0].env,
                                runtime_version=good[0].runtime_version,
                                ref_rounds=[local_ref.get(r.id) for r in good], unsteady_dropped=dropped)
            self.last_env = good[0].env or self.last_env
            self.runtime_version = good[0].runtime_version or self.runtime_version
            self.device_seconds += sum(sum(r.times_ms) for r in good) / 1e3
            if by_job[k].macs > 0:  # device time per MAC, wall-clock even for kernel timing
                walls = [w for r in good if (w := (r.env.get("timing") or {}).get("wall_median_ms"))]
                ratios.append(statistics.median(walls or meds) / by_job[k].macs)
        levels = [g["fast_ms"] for r in results if (g := gate_info(r)) and g.get("fast_ms")]
        if levels:
            self.gate_fast_ms = min(levels + ([self.gate_fast_ms] if self.gate_fast_ms else []))
        if ratios:  # better cost estimates for the next chunks
            self._ms_per_mac = float(statistics.median(ratios))
        return timings, errors

    def _gate_config(self) -> dict[str, Any] | None:
        if not self.settings.gate:
            return None
        return {"fast_ms": self.gate_fast_ms} if self.gate_fast_ms else {}

    @staticmethod
    def _local_references(bench_jobs: list[BenchJob], results: list[JobResult], keys: list[str]
                          ) -> dict[str, float]:
        """Job id -> mean of the reference series timed nearest before and after it (in
        manifest order, which is the order the runner times them)."""
        ok = {r.id: float(statistics.median(r.times_ms)) for r in results if r.ok and r.times_ms}
        is_ref = [keys[int(j.id.split(".r")[0])] == REFERENCE_KEY for j in bench_jobs]
        if not any(is_ref):
            return {}
        ids = [j.id for j in bench_jobs]
        out: dict[str, float] = {}
        last: float | None = None
        before: list[float | None] = []
        for jid, ref in zip(ids, is_ref):
            if ref:
                last = ok.get(jid, last)
            before.append(last)
        nxt: float | None = None
        for i in range(len(ids) - 1, -1, -1):
            if is_ref[i]:
                nxt = ok.get(ids[i], nxt)
                continue
            near = [v for v in (before[i], nxt) if v is not None]
            if near:
                out[ids[i]] = sum(near) / len(near)
        return out

    def _run_with_progress(self, bundle: Path, n_jobs: int) -> list[JobResult]:
        """Run the bundle; while it runs, count finished jobs in results.jsonl (local
        devices write it as they go; a remote device's count arrives at the end)."""
        done = threading.Event()
        seen = [0]
        res_path = bundle / "results.jsonl"

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
            results = self.executor.run_bundle(bundle, timeout_s=self.settings.timeout_s)
        finally:
            done.set()
            th.join()
        if n_jobs > seen[0]:
            self.progress.advance(n_jobs - seen[0])
        return results


def warn_if_busy(device: "Device", log: Log) -> float | None:
    """On a local device, say so when other processes keep the CPUs busy: jobs longer
    than a scheduler time slice then get preempted, which inflates long inferences much
    more than short ones (the table stops adding up). Returns the CPUs other processes
    kept busy (sampled now, while this process waits; see :mod:`edgeprune.bench.host_load`)."""
    import os

    from edgeprune.bench.host_load import busy_cores

    if device.kind != "local":
        return None
    busy = busy_cores()
    cores = os.cpu_count() or 1
    if busy > 0.25 * cores:
        log(f"warning: other processes keep {busy:.1f} of {cores} CPUs busy: timings are inflated and "
            "noisy, long inferences more than short ones; for a table you can trust, profile on an idle device")
    return busy


# ---- the model's prune space ---------------------------------------------------------------
def space_of(model: "LoadedModel", keep_layers: tuple[str, ...] = ()) -> PruneSpace:
    """The prune space of a torch model (an ONNX-only model cannot be pruned)."""
    if model.module is None:
        raise ModelError(
            f"{model.spec} is an ONNX model: its layers cannot be re-built at other widths",
            "profile needs a torch model: zoo:NAME, module:factory + --weights, TorchScript or torch.export",
        )
    import torch

    from edgeprune.prune.graph import build_space

    return build_space(model.module, [torch.from_numpy(np.ascontiguousarray(x)) for x in model.example_inputs],
                       keep_layers=keep_layers)


def model_fingerprint(model: "LoadedModel", space: PruneSpace) -> str:
    """Architecture identity: prune space, input shapes and the module structure."""
    d = {"space": space.to_dict(), "inputs": [list(s) for s in model.input_shapes],
         "arch": repr(model.module) if model.module is not None else model.spec}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _keep_first(space: PruneSpace, widths: Mapping[str, int]) -> dict[str, list[int]]:
    return {g: list(range(int(w))) for g, w in widths.items() if g in space.groups and int(w) < space.groups[g].size}


def variant_job(model: "LoadedModel", space: PruneSpace, widths: Mapping[str, int] | None, key: str) -> Job:
    """A job timing ``model`` pruned to ``widths`` (None = the full model), end to end."""
    from edgeprune.compile.export import export_onnx
    from edgeprune.models.base import LoadedModel as LM

    def write(path: Path) -> None:
        module = model.module
        if widths:
            from edgeprune.prune.graph import apply_widths

            module = apply_widths(model.module, space, _keep_first(space, widths))
        lm = LM(name=f"{model.name}-variant", spec=model.spec, input_names=model.input_names,
                example_inputs=model.example_inputs, output_names=model.output_names, module=module)
        export_onnx(lm, path)

    macs = space.macs(widths or space.full_widths())
    return Job(key=key, write_onnx=write, inputs=lambda: list(model.example_inputs), input_key="model", macs=macs)


def random_widths(space: PruneSpace, rng: random.Random, candidates: Callable[[str], list[int]] | None,
                  low: float = 0.3) -> dict[str, int]:
    """A random pruned configuration: a global keep ratio in [low, 1], jittered per group;
    snapped to the group's candidates when given (what a latency-aware pruner produces)."""
    base = rng.uniform(low, 1.0)
    out: dict[str, int] = {}
    for g in space.prunable_groups():
        r = min(1.0, max(0.05, base * rng.uniform(0.75, 1.25)))
        w = max(max(1, g.min_size), min(g.size, int(round(r * g.size))))
        if candidates is not None:
            cands = candidates(g.id)
            w = min(cands, key=lambda c: (abs(c - w), -c))
        out[g.id] = int(w)
    return out


# ---- the profile --------------------------------------------------------------------------------
@dataclass
class ProfileResult:
    predictor: LatencyPredictor
    table: LatencyTable
    key: TableKey
    table_path: Path
    points_used: int
    points_measured: int
    points_reused: int
    model_measured: bool
    seconds: float
    bundles: int
    failures: dict[str, str]
    model: str
    fingerprint: str
    reference_ms: float | None = None
    #: series the steady gate marked unsteady (re-timing did not find the steady state)
    unsteady_series: int = 0

    def layer_rows(self) -> list[dict[str, Any]]:
        p = self.predictor
        full = p.space.full_widths()
        rows = []
        for layer in p.space.layers:
            t = self.table.table(layer.name)
            ci, co = layer.dims(full)
            groups = [g for g in (layer.in_group, layer.out_group) if g]
            rows.append({
                "layer": layer.name, "kind": layer.kind + (" dw" if layer.depthwise else ""),
                "shape": f"{ci}->{co}" + (f" @{layer.input_hw[0]}x{layer.input_hw[1]}" if layer.input_hw else ""),
                "mode": t.family.mode, "ms": t.ms(ci, co), "points": len(t.points()),
                "steps": {name: st.steps() for name, st in t.axes.items()},
                "candidates": {g: p.candidates(g) for g in dict.fromkeys(groups) if g in p.space.groups},
                "check_error": t.check_error, "shared_with": [m for m in t.family.members if m != layer.name],
            })
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "fingerprint": self.fingerprint, "key": self.key.to_dict(),
            "table": str(self.table_path), "points_used": self.points_used, "points_measured": self.points_measured,
            "points_reused": self.points_reused, "model_measured": self.model_measured,
            "seconds": round(self.seconds, 2), "bundles": self.bundles, "failures": self.failures,
            "reference_ms": self.reference_ms, "unsteady_series": self.unsteady_series,
            "families": len(self.table.families), "layers": len(self.predictor.space.layers),
            "predictor": self.predictor.describe(),
            "tables": [t.summary() for t in self.table.tables.values()],
        }


def table_key(target: "Target", device: "Device", backend: str, threads: int, timing: str = "wall") -> TableKey:
    from edgeprune.compile.backends import get_backend

    return TableKey(target=target.name, target_fingerprint=target_fingerprint(target, backend), device=device.name,
                    backend=backend, backend_version=get_backend(backend).version(), threads=int(threads),
                    timing=timing)


def profile_model(
    model: "LoadedModel",
    target: "Target",
    device: "Device",
    backend: str,
    settings: ProfileSettings = ProfileSettings(),
    store: LUTStore | None = None,
    *,
    space: PruneSpace | None = None,
    refresh: bool = False,
    pinned: Path | None = None,
    progress: ProgressSink | None = None,
    log: Log = _stderr,
) -> ProfileResult:
    """Measure (or reuse) the latency table of every prunable layer of ``model`` on
    ``device`` with ``backend``, then the model end to end, and return the predictor.

    Entries are stored in the table's reference unit: raw times x (the table's reference
    ms / the reference measured in the same bundle). The table's reference is its first
    measurement of :data:`REFERENCE_LAYER`, so every later bundle, run or model lands on
    the same scale."""
    t0 = time.perf_counter()
    if settings.drift not in DRIFT_MODES:
        raise ConfigError(f"unknown drift correction '{settings.drift}'; choose {', '.join(DRIFT_MODES)}")
    store = store or LUTStore()
    space = space if space is not None else space_of(model)
    threads = settings.threads or target.num_cores()
    key = table_key(target, device, backend, threads, layer_timing(settings, backend))
    if pinned is not None:
        tf = store.load_pinned(pinned, key)
        path = Path(pinned)
    else:
        tf = store.load(key, log=log)
        path = store.path_for(key)
    if refresh:
        tf = TableFile(key=key, path=path)
    entries: dict[str, LatencyEntry] = dict(tf.entries)
    reused_before = set(entries)
    progress = progress or ProgressSink()
    measurer = BundleMeasurer(target, device, backend, settings, progress=progress, log=log)
    state: dict[str, Any] = {"env": dict(tf.env), "ref": tf.reference_ms, "warned": False}
    measured: set[str] = set()

    def scale_of(tm: Timing) -> float:
        if tm.ref_ms is None or tm.ref_ms <= 0:
            return 1.0
        if state["ref"] is None:
            state["ref"] = tm.ref_ms  # the first reference of this table defines its unit
        return state["ref"] / tm.ref_ms

    def in_unit(tm: Timing) -> tuple[list[float], float]:
        """(rounds in the table's unit, the bundle's scale). ``drift="local"`` rescales each
        round by the reference timed next to it; ``bundle`` by the bundle's reference."""
        f = scale_of(tm)
        if settings.drift == "none":
            return list(tm.rounds), 1.0
        if settings.drift == "local" and state["ref"] and len(tm.ref_rounds) == len(tm.rounds):
            return [r * (state["ref"] / lr if lr else f) for r, lr in zip(tm.rounds, tm.ref_rounds)], f
        return [r * f for r in tm.rounds], f

    def save(new: Mapping[str, LatencyEntry], models: Mapping[str, dict[str, Any]] | None = None) -> TableFile:
        if measurer.last_env:
            state["env"] = {k: v for k, v in measurer.last_env.items() if k != "timing"}
        ref = {"signature": REFERENCE_LAYER.signature(), "ms": state["ref"]} if state["ref"] else None
        merged, factor = store.save(path, key, new, models, state["env"], ref)
        if factor != 1.0:  # a concurrent profiler defined the unit first: adopt it
            log(f"adopting the reference unit of {path} (written concurrently by another profiler)")
            for k in new:
                entries[k] = merged.entries[k]
            state["ref"] = merged.reference_ms
        return merged

    def layer_job(p: Point, table: LatencyTable) -> Job:
        layer = table.families[p.family].layer
        return Job(key=p.signature, write_onnx=lambda dst, l=layer, p=p: write_layer_onnx(l, p.cin, p.cout, dst),
                   inputs=lambda l=layer, p=p: make_inputs(l, p.cin), input_key=str(input_shapes(layer, p.cin)),
                   macs=float(layer.macs(p.cin, p.cout)), timing=key.timing)

    def status(table: LatencyTable, todo: list[Point], remeasure: bool) -> None:
        if not state["warned"]:
            state["warned"] = True
            warn_if_busy(device, log)
        used = len(table.used_signatures())
        done_f = sum(t.complete and not t.refinement() for t in table.tables.values())
        progress.status(done_f, len(table.tables), used, used + len(todo))
        if remeasure:
            log(f"re-measuring {len(todo)} noisy point(s)")
        else:
            log(f"{'refining' if measured else 'measuring'}: {len(todo)} point(s) on {device.name} with {backend} "
                f"({len(table.tables)} layer table(s), {len(entries)} point(s) cached)")

    def measure(todo: list[Point], remeasure: bool) -> dict[str, str]:
        table = LatencyTable(space, entries, settings.grid)
        jobs = [layer_job(p, table) for p in todo]

        def on_chunk(timings: dict[str, Timing]) -> None:
            new = {}
            for k, tm in timings.items():
                rounds, f = in_unit(tm)
                old = entries.get(k)
                e = old.merged(rounds, tm.runs, f) if (old is not None and remeasure) else \
                    LatencyEntry.from_rounds(rounds, tm.runs, f)
                entries[k] = new[k] = e
                measured.add(k)
            save(new)

        rounds = settings.rounds if not remeasure else REMEASURE_ROUNDS
        _, errs = measurer.measure(jobs, rounds, settings.min_runs, settings.min_time_s, on_chunk,
                                   description="layer points" if not remeasure else "noisy points")
        for k, e in errs.items():
            log(f"could not measure {k}: {e}")
        return errs

    table, failures = complete_table(space, entries, settings.grid, measure, status)
    if not table.complete:
        missing = [p.signature for t in table.tables.values() for p in t.missing]
        raise BenchError(f"latency table incomplete: {len(missing)} point(s) could not be measured, e.g. {missing[0]}: "
                         f"{failures.get(missing[0], 'unknown error')}")

    # ---- the model end to end: full width + calibration variants ----
    fp = model_fingerprint(model, space)
    cached = tf.models.get(fp) if not refresh else None
    meas = ModelMeasurements.from_dict(fp, cached) if cached else None
    model_measured = False
    n = settings.calibration_variants if space.prunable_groups() else 0
    if meas is None or len(meas.variants) < n:  # none yet, or more calibration asked for than stored
        base = LatencyPredictor(space, table)
        rng = random.Random(f"calibration:{settings.seed}")
        variants = [random_widths(space, rng, base.candidates) for _ in range(n)]
        jobs = [variant_job(model, space, None, "full")] + [variant_job(model, space, w, f"cal{i}")
                                                            for i, w in enumerate(variants)]
        log(f"measuring {model.name} end to end: full width + {n} calibration variant(s)")
        timings, errs = measurer.measure(jobs, settings.model_rounds, settings.model_min_runs,
                                         settings.model_min_time_s, description="model + calibration variants")
        if "full" not in timings:
            raise BenchError(f"cannot measure {model.name} end to end: {errs.get('full', 'no result')}")

        def entry(tm: Timing) -> LatencyEntry:
            rounds, f = in_unit(tm)
            return LatencyEntry.from_rounds(rounds, tm.runs, f)

        meas = ModelMeasurements(
            fingerprint=fp, name=model.spec, full=entry(timings["full"]),
            variants=[VariantMeasurement(w, entry(timings[f"cal{i}"])) for i, w in enumerate(variants)
                      if f"cal{i}" in timings],
        )
        for k, e in errs.items():
            log(f"calibration variant {k} failed: {e}")
        merged = save({}, {fp: meas.to_dict()})
        meas = ModelMeasurements.from_dict(fp, merged.models[fp])  # in the file's unit
        model_measured = True
    predictor = LatencyPredictor(space, table, meas)
    progress.close()
    used = table.used_signatures()
    return ProfileResult(
        predictor=predictor, table=table, key=key, table_path=path, points_used=len(used),
        points_measured=len(measured), points_reused=len(used & (reused_before - measured)),
        model_measured=model_measured, seconds=time.perf_counter() - t0, bundles=measurer.bundles_run,
        failures=failures, model=model.spec, fingerprint=fp, reference_ms=state["ref"],
        unsteady_series=measurer.unsteady_series,
    )


# ---- validation -----------------------------------------------------------------------------------
@dataclass
class ValidationReport:
    """Predicted vs measured latency of random pruned variants.

    The unpruned model is measured in the same rounds as the variants (interleaved), and
    ``stats`` compare predictions with measurements rescaled to the profiling session by
    it: ``measured x (full model at profiling / full model now)``, i.e. the error of the
    predicted *latency relative to the unpruned model*, which is what pruning budgets use
    (``--budget 0.5`` = half the unpruned latency). This removes the machine's drift
    between profiling and validation with a reference that is the same kind of work, run
    as long, as the variants. ``unit_stats`` use the bundle's small reference layer
    instead, and ``raw_stats`` the raw times, which on a shared machine also contain the
    drift (``drift``: how much faster or slower the full model runs now than at profiling)."""

    model: str
    backend: str
    method: str
    widths_mode: str
    variants: list[dict[str, Any]]
    stats: dict[str, float]
    raw_stats: dict[str, float]
    flops_stats: dict[str, float]
    unit_stats: dict[str, float]
    full_ms_profile: float
    full_ms_now: float | None
    drift: float | None
    seconds: float
    busy_cpus: float | None = None  # CPUs other processes kept busy when validation started (local)
    full_rounds_ms: list[float] = field(default_factory=list)  # the unpruned model's raw rounds (validation)
    unsteady_series: int = 0  # series the steady gate marked unsteady

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.stats,
            "variants": self.variants,
            "model": self.model, "backend": self.backend, "calibration": self.method, "widths": self.widths_mode,
            "raw": self.raw_stats, "flops_predictor": self.flops_stats, "reference_unit": self.unit_stats,
            "full_ms_at_profile": self.full_ms_profile, "full_ms_now": self.full_ms_now, "drift": self.drift,
            "full_rounds_ms": [round(r, 4) for r in self.full_rounds_ms], "unsteady_series": self.unsteady_series,
            "seconds": round(self.seconds, 2), "busy_cpus": None if self.busy_cpus is None else round(self.busy_cpus, 2),
        }


def validate(
    model: "LoadedModel",
    result: ProfileResult,
    target: "Target",
    device: "Device",
    backend: str,
    n: int = 20,
    settings: ProfileSettings = ProfileSettings(),
    widths_mode: str = "candidates",
    progress: ProgressSink | None = None,
    log: Log = _stderr,
) -> ValidationReport:
    """Measure ``n`` random pruned variants end to end and compare with the predictor
    (and with a FLOPs-proportional predictor anchored at the same measured full model).
    Variants are drawn with a seed distinct from the calibration variants;
    ``widths_mode`` is ``candidates`` (snapped to the fast side of the steps, as the
    pruner does) or ``any`` (arbitrary widths)."""
    t0 = time.perf_counter()
    pred = result.predictor
    space = pred.space
    if not space.prunable_groups():
        raise ModelError(f"{model.spec} has no prunable channel group: nothing to validate")
    if widths_mode not in ("candidates", "any"):
        raise ValueError(f"widths_mode must be 'candidates' or 'any', not {widths_mode!r}")
    rng = random.Random(f"validation:{settings.seed}:{widths_mode}")
    cands = pred.candidates if widths_mode == "candidates" else None
    configs = [random_widths(space, rng, cands) for _ in range(n)]
    measurer = BundleMeasurer(target, device, backend, settings, progress=progress, log=log)
    load = warn_if_busy(device, log)
    jobs = [variant_job(model, space, None, "full")] + [variant_job(model, space, w, f"v{i}")
                                                        for i, w in enumerate(configs)]
    log(f"validating: {n} random pruned variant(s) of {model.name} measured end to end (+ the full model)")
    timings, errs = measurer.measure(jobs, settings.model_rounds, settings.model_min_runs, settings.model_min_time_s,
                                     description="validation variants")
    ref = result.reference_ms
    full = timings.get("full")
    if full is None:
        raise BenchError(f"cannot measure {model.name} end to end: {errs.get('full', 'no result')}")
    full_profile = pred.calibration.full_ms

    def unit(tm: Timing) -> float:  # the bundle's reference layer -> the table's unit
        return tm.ms * (ref / tm.ref_ms if (ref and tm.ref_ms) else 1.0)

    def vs_full(tm: Timing) -> float:
        """``tm`` rescaled to the profiling session by the full model timed in the same
        interleaved rounds (both estimated with :func:`robust_ms`)."""
        return tm.ms / full.ms * full_profile

    rows, pairs, raw_pairs, unit_pairs, fpairs = [], [], [], [], []
    for i, w in enumerate(configs):
        tm = timings.get(f"v{i}")
        if tm is None:
            log(f"variant {i} failed: {errs.get(f'v{i}', 'no result')}")
            continue
        meas = vs_full(tm)
        p, pf = pred.predict(w), pred.predict_flops(w)
        pairs.append((p, meas))
        raw_pairs.append((p, tm.ms))
        unit_pairs.append((p, unit(tm)))
        fpairs.append((pf, meas))
        rows.append({"widths": w, "measured_ms": round(meas, 4), "predicted_ms": round(p, 4),
                     "error_pct": round(100 * (p - meas) / meas, 3), "raw_measured_ms": round(tm.ms, 4),
                     "unit_measured_ms": round(unit(tm), 4),
                     "flops_predicted_ms": round(pf, 4), "flops_error_pct": round(100 * (pf - meas) / meas, 3),
                     "macs_fraction": round(space.macs(w) / space.macs(), 4),
                     "rounds_ms": [round(r, 4) for r in tm.rounds], "reference_ms": tm.ref_ms})
    if not pairs:
        raise BenchError("no validation variant could be measured")
    full_now = unit(full)
    drift = full.ms / full_profile
    if progress:
        progress.close()
    return ValidationReport(
        model=model.spec, backend=backend, method=pred.calibration.method, widths_mode=widths_mode, variants=rows,
        stats=error_stats(pairs), raw_stats=error_stats(raw_pairs), flops_stats=error_stats(fpairs),
        unit_stats=error_stats(unit_pairs), full_ms_profile=full_profile, full_ms_now=full_now, drift=drift,
        seconds=time.perf_counter() - t0, busy_cpus=load, full_rounds_ms=list(full.rounds),
        unsteady_series=measurer.unsteady_series,
    )
