"""``build_device_model`` and ``show``: the orchestrators behind ``edgeprune device-model``.

build: load the table file of the measurement context -> complete the suite points an
interrupted build cut short -> measure the missing suite points in priority order
(:func:`edgeprune.latency.suite.suite_points`) until done or the time budget is spent
-> one more look at this build's noisy points, budget allowing -> fit the device model
on every point of the file and report its error on the held-out shapes -> write the
sidecar (:mod:`edgeprune.latency.devmodel_store`).

Why the points go into the *table* file: a device model is fitted on every point of its
context, and a model's profile in the same context adds its points there too, so the
suite and the models' tables teach one another. The one writer is
:class:`~edgeprune.latency.recorder.PointRecorder`: every chunk is saved as it finishes,
so a build stopped by Ctrl-C / SIGTERM loses nothing and the next build resumes (skips
what is there, completes what was cut short). Devices are reached only through the
measurer's bundles, so an SSH board builds its device model with no extra code.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeprune.durations import format_duration
from edgeprune.errors import ConfigError, Interrupted
from edgeprune.latency import devmodel_store as dms
from edgeprune.latency.layer_bundle import REFERENCE_PER_ROUND
from edgeprune.latency.measurer import BundleMeasurer, warn_if_busy
from edgeprune.latency.points import REMEASURE_ROUNDS, REMEASURE_SPREAD
from edgeprune.latency.recorder import PointRecorder
from edgeprune.latency.settings import ProfileSettings, ProgressSink, layer_timing
from edgeprune.latency.store import LUTStore, TableKey, table_key
from edgeprune.latency.suite import SUITE_VERSION, SuitePoint, is_holdout, suite_points

if TYPE_CHECKING:
    from edgeprune.config.devices import Device
    from edgeprune.config.targets import Target
    from edgeprune.latency.entry import LatencyEntry

Log = Callable[[str], None]

#: seconds of measuring per batch at most: the budget is checked (and the ETA logged)
#: between batches
BATCH_S = 120.0
#: export + build seconds per point before the device model of the cost is learnt
#: (the profiler's rates on this host: ~3 small points/s with ONNX Runtime, ~1.5 with OpenVINO)
BUILD_S = {"onnxruntime": 0.15, "openvino": 0.45}


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class DeviceModelBuild:
    """What a build did. ``info`` is the sidecar it wrote."""

    info: dms.DeviceModelInfo
    table_path: Path
    measured: int = 0  # suite points measured by this build
    completed: int = 0  # points an interrupted build had cut short, completed now
    remeasured: int = 0
    cached: int = 0  # suite points already in the table file
    remaining: int = 0  # suite points still missing (the budget stopped the build)
    failed: dict[str, str] = field(default_factory=dict)  # by this build
    seconds: float = 0.0
    estimated_s: float = 0.0  # what the suite left to measure was estimated to take
    stopped_by_budget: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"table": str(self.table_path), "sidecar": str(self.info.path), "measured": self.measured,
                "completed": self.completed, "remeasured": self.remeasured, "cached": self.cached,
                "remaining": self.remaining, "failed": self.failed, "seconds": round(self.seconds, 2),
                "estimated_s": round(self.estimated_s, 1), "stopped_by_budget": self.stopped_by_budget,
                "device_model": self.info.to_dict()}


class DeviceModelInterrupted(Interrupted):
    """A build stopped by Ctrl-C, SIGTERM or SIGHUP: every point it measured is already in
    the table file (those timed in only some rounds marked), so a rerun resumes."""

    def __init__(self, stop: Interrupted, table_path: Path, kept: int, cut_short: int, remaining: int) -> None:
        self.table_path, self.points_kept, self.points_cut_short = table_path, kept, cut_short
        self.remaining = remaining
        short = f" ({cut_short} timed in only some rounds)" if cut_short else ""
        super().__init__(stop.signum, f"{kept} suite point(s) measured by this build kept{short} in {table_path}; "
                                      f"`edgeprune device-model build` again measures only the other {remaining}")


class _OneBar(ProgressSink):
    """One progress bar over every batch of the build (the measurer starts a phase per
    call), so its ETA is the whole build's."""

    def __init__(self, inner: ProgressSink, description: str, total: int) -> None:
        self.inner, self.description, self.total = inner, description, total
        self.started = False

    def phase(self, description: str, total: int) -> None:
        if not self.started:
            self.started = True
            self.inner.phase(self.description, self.total)

    def advance(self, n: int = 1) -> None:
        self.inner.advance(n)

    def status(self, layers_done: int, layers_total: int, points_done: int, points_total: int) -> None:
        self.inner.status(layers_done, layers_total, points_done, points_total)


def _context(target: "Target", device: "Device", backend: str, settings: ProfileSettings,
             store: LUTStore | None) -> tuple[LUTStore, TableKey]:
    store = store or LUTStore()
    threads = settings.threads or target.num_cores()
    return store, table_key(target, device, backend, threads, layer_timing(settings, backend))


def build_device_model(target: "Target", device: "Device", backend: str, settings: ProfileSettings = ProfileSettings(),
                       *, time_budget_s: float | None = None, store: LUTStore | None = None,
                       progress: ProgressSink | None = None, log: Log = _stderr, size: str = "full",
                       ) -> DeviceModelBuild:
    """Measure the calibration suite of ``target`` on ``device`` with ``backend`` into
    the context's table file (what is there is kept), fit the device model and write its
    sidecar. ``time_budget_s`` (None: no limit) bounds the measuring: the build stops
    between batches, in priority order, and says how many points remain (state
    ``budget``); fitting adds seconds. ``size="tiny"`` is the tests' suite.

    Interrupted: raises :class:`DeviceModelInterrupted` (exit 130/143/129) after writing
    the sidecar (state ``interrupted``, the seconds spent added)."""
    t0 = time.perf_counter()
    settings.check_drift()
    if time_budget_s is not None and not (math.isfinite(time_budget_s) and time_budget_s > 0):
        raise ConfigError(f"the time budget must be a positive number of seconds, got {time_budget_s}")
    store, key = _context(target, device, backend, settings, store)
    path = store.path_for(key)
    tf = store.load(key, log=log)
    lanes = target.fp32_lanes()
    points = suite_points(lanes, size)
    try:
        prev = dms.find(store, key)
    except ConfigError as exc:
        log(f"warning: {exc}; it is replaced by this build")
        prev = None
    skip = dict(prev.failed) if prev is not None and prev.suite_version == SUITE_VERSION else {}
    progress = progress or ProgressSink()
    bar = _OneBar(progress, "device-model suite", 0)
    measurer = BundleMeasurer(target, device, backend, settings, progress=bar, log=log)
    local = device.kind == "local"
    rec = PointRecorder(store, path, key, tf, measurer, settings.drift, log,
                        busy_probe=(lambda: warn_if_busy(device, lambda m: None)) if local else None)
    entries = rec.entries
    cut = [p for p in points if (e := entries.get(p.signature)) is not None and e.partial]
    todo = [p for p in points if p.signature not in entries and p.signature not in skip]
    cached = sum(1 for p in points if p.signature in entries) - len(cut)
    series = settings.series()
    overhead = BUILD_S.get(backend, 0.3)

    def est(p: SuitePoint, rounds: int = settings.rounds) -> float:
        return measurer.job_seconds(p.macs, rounds, series) + overhead

    estimated = sum(est(p) for p in todo) + sum(est(p, entries[p.signature].partial) for p in cut)
    log(f"device model of {target.name} on {device.name} with {backend} {key.backend_version} "
        f"({key.threads} thread(s), {key.timing} timing): suite v{SUITE_VERSION} has {len(points)} point(s); "
        f"{cached} in the table, {len(cut)} to complete, {len(todo)} to measure (~{format_duration(estimated)} estimated)"
        + (f", {len(skip)} skipped (could not be built before)" if skip else ""))
    if todo or cut:
        warn_if_busy(device, log)
    bar.total = settings.rounds * (len(todo) + len(cut)) + REFERENCE_PER_ROUND * settings.rounds * max(
        1, math.ceil(estimated / min(settings.chunk_s, BATCH_S)))
    failed: dict[str, str] = {}
    state = {"scale": 1.0, "spent": 0.0, "est": 0.0}
    stopped = False

    def run(batch: list[SuitePoint], mode: str, rounds: int, what: str) -> None:
        s0 = time.perf_counter()
        errs = rec.measure([p.job(key.timing) for p in batch], mode, rounds, series, what)
        state["spent"] += time.perf_counter() - s0
        state["est"] += sum(est(p, rounds) for p in batch)
        state["scale"] = max(0.2, state["spent"] / state["est"]) if state["est"] > 0 else 1.0
        for k, e in errs.items():
            log(f"could not measure {k}: {e}")
        failed.update(errs)

    def left() -> float:
        return math.inf if time_budget_s is None else time_budget_s - (time.perf_counter() - t0)

    try:
        by_rounds: dict[int, list[SuitePoint]] = {}
        for p in cut:  # only the rounds each still owes
            by_rounds.setdefault(max(1, min(entries[p.signature].partial, settings.rounds)), []).append(p)
        if cut:
            log(f"completing {len(cut)} point(s) an interrupted build timed in only some rounds")
        for rounds, batch in sorted(by_rounds.items()):
            run(batch, "complete", rounds, "points cut short")
        i = 0
        while i < len(todo):
            room = min(left(), BATCH_S)
            batch, acc = [], 0.0
            while i + len(batch) < len(todo):
                cost = est(todo[i + len(batch)]) * state["scale"]
                if acc + cost > room and (batch or cost > left()):
                    break
                batch.append(todo[i + len(batch)])
                acc += cost
            if not batch:
                stopped = True
                break
            run(batch, "new", settings.rounds, "suite points")
            i += len(batch)
            bar.status(0, 0, len(rec.measured), len(todo) + len(cut))
            rest = sum(est(p) for p in todo[i:]) * state["scale"]
            log(f"  device model: {i}/{len(todo)} suite point(s) measured in {format_duration(state['spent'])}"
                + (f", ~{format_duration(rest)} left" if i < len(todo) else ""))
        noisy = _noisy([p for p in todo[:i] if p.signature in entries], entries)
        if noisy and sum(est(p, REMEASURE_ROUNDS) for p in noisy) * state["scale"] <= left():
            log(f"re-measuring {len(noisy)} noisy point(s)")
            run(noisy, "remeasure", REMEASURE_ROUNDS, "noisy points")
        progress.close()
        final = store.load(key).entries  # every point of the file: other profiles' too
        fp = _fingerprint(final, lanes)
        if prev is not None and prev.fitted_on == fp and prev.fit:
            log(f"the {len(final)} point(s) of {path.name} are those the device model was fitted on: fit kept")
            fit = (prev.fit, prev.holdout, fp)
        else:
            log(f"fitting the device model on {len(final)} point(s) of {path.name}")
            fit = (*_fit(final, lanes), fp)
    except KeyboardInterrupt as exc:  # measuring or fitting: the points are in the table file
        progress.close()
        stop = Interrupted.of(exc)
        remaining = sum(1 for p in points if (e := entries.get(p.signature)) is None or e.partial)
        try:
            _write(store, key, points, lanes, size, SUITE_VERSION, "interrupted", time.perf_counter() - t0,
                   rec.entries, {**skip, **failed}, local, None)
        except (OSError, ConfigError) as err:  # the points are saved; only the build's record is not
            log(f"warning: could not record the interrupted build: {err}")
        raise DeviceModelInterrupted(stop, path, len(rec.measured), rec.cut_short, remaining) from None
    all_failed = {**skip, **failed}
    remaining = [p for p in points if p.signature not in entries and p.signature not in all_failed]
    stopped = stopped or bool(remaining)
    info = _write(store, key, points, lanes, size, SUITE_VERSION, "budget" if stopped else "complete",
                  time.perf_counter() - t0, final, all_failed, local, fit)
    return DeviceModelBuild(info=info, table_path=path, measured=len(rec.measured - rec.completed),
                            completed=len(rec.completed), remeasured=sum(1 for k in rec.measured
                                                                         if entries[k].remeasured),
                            cached=cached, remaining=len(remaining), failed=failed,
                            seconds=time.perf_counter() - t0, estimated_s=estimated, stopped_by_budget=stopped)


def _noisy(points: list[SuitePoint], entries: dict[str, "LatencyEntry"]) -> list[SuitePoint]:
    """Points of this build whose rounds disagree far more than is typical: one more
    look (never a point measured by an earlier build, so a rebuild measures nothing)."""
    spreads = [entries[p.signature].spread for p in points]
    if not spreads:
        return []
    limit = max(REMEASURE_SPREAD, 3 * statistics.median(spreads))
    return [p for p in points if entries[p.signature].spread > limit and not entries[p.signature].partial
            and not entries[p.signature].remeasured]


def _fingerprint(entries: dict[str, "LatencyEntry"], lanes: int) -> str:
    """What a fit depends on: every point's signature and rounds, and the lanes."""
    h = hashlib.sha256(f"lanes={lanes}".encode())
    for k in sorted(entries):
        e = entries[k]
        h.update(f"|{k}:{e.partial}:{','.join(f'{r:.6g}' for r in e.rounds) or f'{e.ms:.6g}'}".encode())
    return h.hexdigest()[:16]


def _fit(entries: dict[str, "LatencyEntry"], lanes: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the lattice model's description, the holdout report lattice vs smooth).

    Fitted with one OpenMP thread: scikit-learn's gradient boosting spins its threads
    between many tiny tree fits, and on a 2-core host that other work keeps busy the
    suite's fit took ~9x longer with the default threads than with one (188 s vs 21 s,
    same points, same model)."""
    from edgeprune.latency.devmodel import DeviceModel, holdout_report

    if not any(not e.partial and e.ms > 0 for e in entries.values()):
        return {}, {}
    with _one_thread():
        model = DeviceModel.fit(entries, lanes, features="lattice")
        return model.describe(), holdout_report(entries, lanes, is_holdout)


def _one_thread() -> contextlib.AbstractContextManager:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn requires it
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="openmp")


def _busy(points: list[SuitePoint], entries: dict[str, "LatencyEntry"], local: bool) -> dict[str, Any]:
    """How busy the device was while the suite points were timed (entries' ``busy``)."""
    from edgeprune import host

    vals = [entries[p.signature].busy for p in points if p.signature in entries]
    if not local:
        return {"max": None, "median": None, "cpus": None, "state": "unknown (remote device: not sampled)"}
    if not vals:
        return {"max": None, "median": None, "cpus": host.cores(), "state": "unknown"}
    med, cpus = statistics.median(vals), host.cores()
    return {"max": round(max(vals), 2), "median": round(med, 2), "cpus": cpus,
            "state": "busy" if med > 0.25 * cpus else "quiet"}


def _write(store: LUTStore, key: TableKey, points: list[SuitePoint], lanes: int, size: str, version: str,
           state: str, seconds: float, entries: dict[str, "LatencyEntry"], failed: dict[str, str], local: bool,
           fit: tuple[dict[str, Any], dict[str, Any], str] | None) -> dms.DeviceModelInfo:
    done = [p for p in points if (e := entries.get(p.signature)) is not None and not e.partial]
    kinds: dict[str, dict[str, int]] = {}
    for p in points:
        k = kinds.setdefault(p.kind, {"suite": 0, "measured": 0, "holdout": 0})
        k["suite"] += 1
        k["holdout"] += int(p.holdout)
    for p in done:
        kinds[p.kind]["measured"] += 1

    def change(cur: dms.DeviceModelInfo | None) -> dms.DeviceModelInfo:
        info = dms.DeviceModelInfo(
            key=key, suite_version=version, suite_size=size, lanes=lanes, state=state,
            build_seconds=(cur.build_seconds if cur else 0.0) + seconds, builds=(cur.builds if cur else 0) + 1,
            suite_points=len(points), points_measured=len(done), points_by_kind=dict(sorted(kinds.items())),
            failed=dict(sorted(failed.items())), busy=_busy(points, entries, local))
        if fit is not None:
            info.fit, info.holdout, info.fitted_on = fit
        elif cur is not None:  # interrupted: the last fit stays (with its points' fingerprint)
            info.fit, info.holdout, info.fitted_on = cur.fit, cur.holdout, cur.fitted_on
        return info

    return dms.update(store, key, change)


@dataclass
class DeviceModelView:
    """``show``: the sidecar, and what the table file holds of the current suite now."""

    info: dms.DeviceModelInfo
    table_path: Path
    table_points: int
    suite_points: int
    suite_measured: int
    current_suite_version: str = SUITE_VERSION

    @property
    def stale_suite(self) -> bool:
        return self.info.suite_version != self.current_suite_version

    def to_dict(self) -> dict[str, Any]:
        return {"device_model": self.info.to_dict(), "sidecar": str(self.info.path), "table": str(self.table_path),
                "table_points": self.table_points, "suite_points_now": self.suite_points,
                "suite_measured_now": self.suite_measured, "current_suite_version": self.current_suite_version,
                "stale_suite": self.stale_suite}


def show(target: "Target", device: "Device", backend: str, settings: ProfileSettings = ProfileSettings(),
         store: LUTStore | None = None) -> DeviceModelView:
    """The device model of this context (nothing is measured or fitted; the device is
    not contacted). :class:`ConfigError` if none was built."""
    store, key = _context(target, device, backend, settings, store)
    info = dms.find(store, key)
    if info is None:
        raise ConfigError(f"no device model for {target.name} on {device.name} with {backend} "
                          f"{key.backend_version} ({key.threads} thread(s), {key.timing} timing) under {store.root}",
                          f"build one: edgeprune device-model build --target {target.name} --device {device.name} "
                          f"--backend {backend}")
    path = store.path_for(key)
    entries = store.load(key).entries if path.exists() else {}
    points = suite_points(info.lanes, info.suite_size)
    done = sum(1 for p in points if (e := entries.get(p.signature)) is not None and not e.partial)
    return DeviceModelView(info=info, table_path=path, table_points=len(entries), suite_points=len(points),
                           suite_measured=done)

