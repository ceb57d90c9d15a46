"""The machinery of a device-model build, shared by one device's build
(:mod:`edgeprune.flows.device_model`) and a board farm's (:mod:`edgeprune.flows.farm`):
what is left to do (:func:`plan_build`), the fit, and the sidecar written at the end or on
an interruption (:func:`finish_build`, :func:`record_interrupted`).

Why the points go into the *table* file: a device model is fitted on every point of its
context, and a model's profile in the same context adds its points there too, so the
suite and the models' tables teach one another. The one writer is
:class:`~edgeprune.latency.recorder.PointRecorder`: every chunk is saved as it finishes,
so a build stopped by Ctrl-C / SIGTERM loses nothing and the next build resumes (skips
what is there, completes what was cut short).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeprune.durations import format_duration
from edgeprune.errors import ConfigError, Interrupted
from edgeprune.latency import devmodel_store as dms
from edgeprune.latency.layer_bundle import REFERENCE_PER_ROUND
from edgeprune.latency.measurer import BundleMeasurer
from edgeprune.latency.points import REMEASURE_SPREAD
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

class OneBar(ProgressSink):
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

def context_of(target: "Target", device: "Device", backend: str, settings: ProfileSettings,
             store: LUTStore | None) -> tuple[LUTStore, TableKey]:
    store = store or LUTStore()
    threads = settings.threads or target.num_cores()
    return store, table_key(target, device, backend, threads, layer_timing(settings, backend))

@dataclass
class BuildPlan:
    """What a build starts from, shared by one device's build and a board farm's
    (:mod:`edgeprune.flows.farm`): the context, the suite, what the table holds, what is
    left to do and what it should cost."""

    t0: float
    store: LUTStore
    key: TableKey
    path: Path
    lanes: int
    size: str
    points: list[SuitePoint]
    prev: dms.DeviceModelInfo | None
    skip: dict[str, str]  # could not be built by an earlier build of this suite version
    rec: PointRecorder
    cut: list[SuitePoint]  # timed in only some rounds by an interrupted build
    todo: list[SuitePoint]
    cached: int
    est: Callable[..., float]  # (point, rounds=settings.rounds) -> estimated seconds
    estimated: float
    local: bool
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def entries(self) -> dict[str, "LatencyEntry"]:
        return self.rec.entries

    def remaining(self) -> list[SuitePoint]:
        return [p for p in self.points if (e := self.entries.get(p.signature)) is None or e.partial]


def plan_build(target: "Target", device: "Device", measurer: BundleMeasurer, backend: str, settings: ProfileSettings,
               store: LUTStore | None, size: str, log: Log, busy_probe: Callable[[], float | None] | None = None
               ) -> BuildPlan:
    """Load the context's table and sidecar and work out what is left (module docstring)."""
    t0 = time.perf_counter()
    store, key = context_of(target, device, backend, settings, store)
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
    rec = PointRecorder(store, path, key, tf, measurer, settings.drift, log, busy_probe=busy_probe)
    entries = rec.entries
    cut = [p for p in points if (e := entries.get(p.signature)) is not None and e.partial]
    todo = [p for p in points if p.signature not in entries and p.signature not in skip]
    cached = sum(1 for p in points if p.signature in entries) - len(cut)
    series = settings.series()
    overhead = BUILD_S.get(backend, 0.3)

    def est(p: SuitePoint, rounds: int = settings.rounds) -> float:
        return measurer.job_seconds(p.macs, rounds, series) + overhead

    estimated = sum(est(p) for p in todo) + sum(est(p, entries[p.signature].partial) for p in cut)
    return BuildPlan(t0=t0, store=store, key=key, path=path, lanes=lanes, size=size, points=points, prev=prev,
                     skip=skip, rec=rec, cut=cut, todo=todo, cached=cached, est=est, estimated=estimated,
                     local=device.kind == "local")


def describe_plan(plan: BuildPlan, target: "Target", where: str, backend: str) -> str:
    """The build's first log line: the context and what is left to do."""
    key = plan.key
    return (f"device model of {target.name} on {where} with {backend} {key.backend_version} "
            f"({key.threads} thread(s), {key.timing} timing): suite v{SUITE_VERSION} has {len(plan.points)} point(s); "
            f"{plan.cached} in the table, {len(plan.cut)} to complete, {len(plan.todo)} to measure "
            f"(~{format_duration(plan.estimated)} estimated)"
            + (f", {len(plan.skip)} skipped (could not be built before)" if plan.skip else ""))

def check_budget(time_budget_s: float | None) -> None:
    if time_budget_s is not None and not (math.isfinite(time_budget_s) and time_budget_s > 0):
        raise ConfigError(f"the time budget must be a positive number of seconds, got {time_budget_s}")


def bar_total(plan: BuildPlan, settings: ProfileSettings) -> int:
    """Jobs of the whole build's progress bar: every series of every point left, and the
    reference's (one set per batch of about ``BATCH_S``)."""
    return settings.rounds * (len(plan.todo) + len(plan.cut)) + REFERENCE_PER_ROUND * settings.rounds * max(
        1, math.ceil(plan.estimated / min(settings.chunk_s, BATCH_S)))


def owed_batches(plan: BuildPlan, settings: ProfileSettings) -> list[tuple[int, list[SuitePoint]]]:
    """The points an interrupted build cut short, grouped by the rounds each still owes."""
    by_rounds: dict[int, list[SuitePoint]] = {}
    for p in plan.cut:
        by_rounds.setdefault(max(1, min(plan.entries[p.signature].partial, settings.rounds)), []).append(p)
    return sorted(by_rounds.items())


Fit = tuple[dict[str, Any], dict[str, Any], str]


def fit_plan(plan: BuildPlan, log: Log) -> Fit:
    """Fit the device model on every point of the file (other profiles' too), unless it
    holds exactly the points the last fit was made on."""
    final = plan.store.load(plan.key).entries
    fp = _fingerprint(final, plan.lanes)
    prev = plan.prev
    if prev is not None and prev.fitted_on == fp and prev.fit:
        log(f"the {len(final)} point(s) of {plan.path.name} are those the device model was fitted on: fit kept")
        return prev.fit, prev.holdout, fp
    log(f"fitting the device model on {len(final)} point(s) of {plan.path.name}")
    return (*_fit(final, plan.lanes), fp)


def record_interrupted(plan: BuildPlan, exc: BaseException, log: Log,
                       farm: dict[str, Any] | None = None) -> "DeviceModelInterrupted":
    """Write the sidecar of a build stopped by a signal (state ``interrupted``, the last fit
    kept) and return the interruption to raise: every point is already in the table."""
    stop = Interrupted.of(exc)
    rec = plan.rec
    try:
        _write(plan, "interrupted", rec.entries, {**plan.skip, **plan.failed}, None, farm)
    except (OSError, ConfigError) as err:  # the points are saved; only the build's record is not
        log(f"warning: could not record the interrupted build: {err}")
    return DeviceModelInterrupted(stop, plan.path, len(rec.measured), rec.cut_short, len(plan.remaining()))


def finish_build(plan: BuildPlan, fit: Fit, stopped: bool, farm: dict[str, Any] | None = None) -> DeviceModelBuild:
    """Write the sidecar of a finished build (``budget`` if points are left) and say what it did."""
    rec, entries = plan.rec, plan.entries
    all_failed = {**plan.skip, **plan.failed}
    remaining = [p for p in plan.points if p.signature not in entries and p.signature not in all_failed]
    stopped = stopped or bool(remaining)
    final = plan.store.load(plan.key).entries
    info = _write(plan, "budget" if stopped else "complete", final, all_failed, fit, farm)
    suite = {p.signature for p in plan.points}  # a farm's overlap points may lie outside a small suite
    return DeviceModelBuild(info=info, table_path=plan.path, measured=len(suite & (rec.measured - rec.completed)),
                            completed=len(rec.completed), remeasured=sum(1 for k in rec.measured
                                                                         if entries[k].remeasured),
                            cached=plan.cached, remaining=len(remaining), failed=dict(plan.failed),
                            seconds=time.perf_counter() - plan.t0, estimated_s=plan.estimated,
                            stopped_by_budget=stopped)


def noisy_points(points: list[SuitePoint], entries: dict[str, "LatencyEntry"]) -> list[SuitePoint]:
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


def _write(plan: BuildPlan, state: str, entries: dict[str, "LatencyEntry"], failed: dict[str, str],
           fit: Fit | None, farm: dict[str, Any] | None) -> dms.DeviceModelInfo:
    points, seconds = plan.points, time.perf_counter() - plan.t0
    done = [p for p in points if (e := entries.get(p.signature)) is not None and not e.partial]
    kinds: dict[str, dict[str, int]] = {}
    for p in points:
        k = kinds.setdefault(p.kind, {"suite": 0, "measured": 0, "holdout": 0})
        k["suite"] += 1
        k["holdout"] += int(p.holdout)
    for p in done:
        kinds[p.kind]["measured"] += 1
    boards = _points_by_board(done, entries)
    if farm is not None or boards:  # which board measured what: the table's entries say, counted here
        farm = dict(farm or {})
        merged = {b: {"points": 0, "state": "earlier build"} for b in boards}
        merged.update({b: dict(v) for b, v in (farm.get("boards") or {}).items()})
        for b, v in merged.items():
            v["points"] = boards.get(b, 0)
        farm["boards"] = dict(sorted(merged.items()))

    def change(cur: dms.DeviceModelInfo | None) -> dms.DeviceModelInfo:
        info = dms.DeviceModelInfo(
            key=plan.key, suite_version=SUITE_VERSION, suite_size=plan.size, lanes=plan.lanes, state=state,
            build_seconds=(cur.build_seconds if cur else 0.0) + seconds, builds=(cur.builds if cur else 0) + 1,
            suite_points=len(points), points_measured=len(done), points_by_kind=dict(sorted(kinds.items())),
            failed=dict(sorted(failed.items())), busy=_busy(points, entries, plan.local), farm=farm or {})
        if fit is not None:
            info.fit, info.holdout, info.fitted_on = fit
        elif cur is not None:  # interrupted: the last fit stays (with its points' fingerprint)
            info.fit, info.holdout, info.fitted_on = cur.fit, cur.holdout, cur.fitted_on
        return info

    return dms.update(plan.store, plan.key, change)


def _points_by_board(done: list[SuitePoint], entries: dict[str, "LatencyEntry"]) -> dict[str, int]:
    """Suite points in the table per board that measured them (entries' ``device``; a
    point completed by a second board counts for both)."""
    out: dict[str, int] = {}
    for p in done:
        for b in filter(None, entries[p.signature].device.split(",")):
            out[b] = out.get(b, 0) + 1
    return dict(sorted(out.items()))
