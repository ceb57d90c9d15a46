"""``profile_model`` and ``validate``: the orchestrators behind ``edgeprune profile`` and
the pruner's first-use profile.

profile: load the cached table -> measure what it still needs (planned points, then
refinement of unconfirmed intervals, then noisy points; :mod:`edgeprune.latency.points`)
-> time the model end to end at full width and a few calibration widths -> the
predictor. validate: time random pruned variants end to end and compare them with the
predictor.

Every chunk of points is saved to the table file as soon as it is timed, and an
interrupted profile saves the series of the chunk that was cut too, so nothing measured
is lost: the next run completes the points timed in only some rounds and measures only
what is missing (:class:`~edgeprune.latency.records.ProfileInterrupted` says how much
was kept).

Measurement care on a noisy machine (the stages that do it): each point is timed in
``rounds`` short series, interleaved with every other point of its bundle and with a
reference layer (:mod:`edgeprune.latency.layer_bundle`); a point's latency is the median
of its fast-state round values (:func:`edgeprune.latency.entry.robust_ms`), in the
table's reference unit (:class:`edgeprune.latency.series.TableUnit`).
"""

from __future__ import annotations

import dataclasses
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeprune.errors import BenchError, Interrupted
from edgeprune.latency import plan
from edgeprune.latency.layer_bundle import layer_job
from edgeprune.latency.adaptive import AdaptiveLatency
from edgeprune.latency.lut import LatencyTable, Point
from edgeprune.latency.measurer import BundleMeasurer, warn_if_busy
from edgeprune.latency.points import REMEASURE_ROUNDS, complete_table
from edgeprune.latency.predicted import PredictedTable, device_model_summary, fit_device_model, is_busy
from edgeprune.latency.predictor import LatencyPredictor, ModelMeasurements, VariantMeasurement
from edgeprune.latency.recorder import PointRecorder
from edgeprune.latency.records import ProfileInterrupted, ProfileResult
from edgeprune.latency.series import TableUnit
from edgeprune.latency.settings import ProfileSettings, ProgressSink, layer_timing
from edgeprune.latency.store import LUTStore, TableFile, table_key
from edgeprune.latency.endtoend import measure_against_full
from edgeprune.latency.variants import model_fingerprint, random_widths, space_of
from edgeprune.prune.space import PruneSpace

if TYPE_CHECKING:
    from edgeprune.config.devices import Device
    from edgeprune.config.targets import Target
    from edgeprune.models.base import LoadedModel

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


#: how each kind of layer-point batch is described in progress lines
_DESCRIPTIONS = {"new": "layer points", "complete": "points cut short", "remeasure": "noisy points"}


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
    feasible: Callable[[LatencyPredictor], None] | None = None,
) -> ProfileResult:
    """Measure (or reuse) the latency table of every prunable layer of ``model`` on
    ``device`` with ``backend``, then the model end to end, and return the predictor.

    Entries are stored in the table's reference unit: raw times x (the table's reference
    ms / the reference measured in the same bundle). The table's reference is its first
    measurement of :data:`~edgeprune.latency.layer_bundle.REFERENCE_LAYER`, so every
    later bundle, run or model lands on the same scale.

    Interrupted (Ctrl-C, SIGTERM, SIGHUP): every point measured so far is already in the
    table file, including the series of the bundle that was cut (a point timed in only
    some rounds is marked and completed by the next run), and :class:`ProfileInterrupted`
    says how many were kept: a rerun measures only what is missing.

    ``settings.tables == "model"``: layers come from the device model of this context
    (``edgeprune device-model build``) and only the points this model needs are measured,
    within ``settings.profile_budget_s`` (:func:`_measure_predicted`); ``feasible`` then
    sees the device model's predictor before anything is measured (and may raise)."""
    t0 = time.perf_counter()
    settings.check_drift()
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
    progress = progress or ProgressSink()
    measurer = BundleMeasurer(target, device, backend, settings, progress=progress, log=log)
    rec = PointRecorder(store, path, key, tf, measurer, settings.drift, log,
                        busy_probe=(lambda: warn_if_busy(device, lambda m: None)) if device.kind == "local" else None)
    entries = rec.entries
    reused_before = set(entries)
    unit = rec.unit
    save = rec.save
    measured, completed = rec.measured, rec.completed
    rec.busy = warn_if_busy(device, log)  # local: the CPUs other processes keep busy now (warns when many)

    def status(table: LatencyTable, todo: list[Point], remeasure: bool) -> None:
        used = len(table.used_signatures())
        done_f = sum(t.complete and not t.refinement() for t in table.tables.values())
        progress.status(done_f, len(table.tables), used, used + len(todo))
        short = sum(1 for p in todo if (e := entries.get(p.signature)) is not None and e.partial)
        if remeasure:
            log(f"re-measuring {len(todo)} noisy point(s)")
            return
        if short:
            log(f"completing {short} point(s) an interrupted profile timed in only some rounds")
        if len(todo) > short:
            log(f"{'refining' if measured - completed else 'measuring'}: {len(todo) - short} point(s) on {device.name} "
                f"with {backend} ({len(table.tables)} layer table(s), {len(entries)} point(s) cached)")

    def measure(todo: list[Point], remeasure: bool) -> dict[str, str]:
        table = LatencyTable(space, entries, settings.grid)
        batches: dict[tuple[str, int], list[Point]] = {}
        for p in todo:
            e = entries.get(p.signature)
            if remeasure:
                batch = ("remeasure", REMEASURE_ROUNDS)
            elif e is not None and e.partial:  # only the rounds it still owes
                batch = ("complete", max(1, min(e.partial, settings.rounds)))
            else:
                batch = ("new", settings.rounds)
            batches.setdefault(batch, []).append(p)
        errs: dict[str, str] = {}
        for (mode, rounds), points in sorted(batches.items()):
            jobs = [layer_job(p, table.families[p.family].layer, key.timing) for p in points]
            errs.update(rec.measure(jobs, mode, rounds, settings.series(), _DESCRIPTIONS[mode]))
        for k, e in errs.items():
            log(f"could not measure {k}: {e}")
        return errs

    stage = "measuring layer points"
    notes: list[str] = []
    model_table: Callable[[], Any]
    try:
        dm = None
        if settings.tables == "model":
            dm, why = fit_device_model(store, key, entries, settings.grid.lanes, device, log)
            if dm is None:
                log(why)
                notes.append(why)
        if dm is not None:
            def model_table() -> Any:
                return PredictedTable(space, entries, dm, settings.grid)

            prior = model_table()
            if feasible is not None and prior.complete:  # no measurement yet: refuse the impossible now
                feasible(LatencyPredictor(space, prior))

            failures = _measure_predicted(model_table, measure, measurer, space, settings, t0, notes, status, log)
            table = model_table()
        else:
            def model_table() -> Any:
                return LatencyTable(space, entries, settings.grid)

            table, failures = complete_table(space, entries, settings.grid, measure, status)
        if not table.complete:
            missing = [p.signature for t in table.tables.values() for p in t.missing]
            raise BenchError(f"latency table incomplete: {len(missing)} point(s) could not be measured, e.g. "
                             f"{missing[0]}: {failures.get(missing[0], 'unknown error')}")
        stage = f"measuring {model.name} end to end"
        fp = model_fingerprint(model, space)
        meas, model_measured = _model_measurements(model, space, table, tf, fp, refresh, settings, measurer, unit,
                                                   save, log, busy_now=rec.busy)
    except KeyboardInterrupt as exc:
        progress.close()
        stop = ProfileInterrupted(Interrupted.of(exc), stage, path, kept=len(measured),
                                  cut_short=sum(1 for k in measured if entries[k].partial), cached=len(reused_before))
        log(stop.summary())
        raise stop from None
    adaptive = AdaptiveLatency(model, space, model_table, meas, fp, rec, measurer, settings, log)
    progress.close()
    table = adaptive.table
    used = table.used_signatures()
    return ProfileResult(
        predictor=adaptive.predictor, table=table, key=key, table_path=path, points_used=len(used),
        points_measured=len(measured), points_reused=len(used & (reused_before - measured)),
        model_measured=model_measured, seconds=time.perf_counter() - t0, bundles=measurer.bundles_run,
        failures=failures, model=model.spec, fingerprint=fp, reference_ms=unit.ref_ms,
        unsteady_series=measurer.unsteady_series, points_completed=len(completed),
        tables="model" if dm is not None else "full", adaptive=adaptive, notes=notes,
        device_model=device_model_summary(dm) if dm is not None else None,
    )


def _measure_predicted(model_table: Callable[[], Any], measure: Callable[[list[Point], bool], dict[str, str]],
                       measurer: BundleMeasurer, space: PruneSpace, settings: ProfileSettings, t0: float,
                       notes: list[str], status: Callable[..., None], log: Log) -> dict[str, str]:
    """The device-model profile's own measurements (:mod:`edgeprune.latency.plan`):
    full tables of families the device model cannot predict, every family at full width,
    then the most costly uncertain widths until the profile budget (less what the
    end-to-end calibration will take) is spent."""
    table = model_table()
    failures: dict[str, str] = {}
    if table.measured_families:
        log(f"device model: {len(table.measured_families)} layer shape(s) of an op kind it has not seen get "
            "a measured table")
        _, failures = complete_table(table.measured_space(), table.entries, settings.grid, measure, status)
    anchors = plan.anchor_points(table)
    if anchors:
        log(f"device model: measuring {len(anchors)} layer shape(s) at full width")
        failures.update(measure(anchors, False))
    n_cal = settings.calibration_variants if space.prunable_groups() else 0
    # each calibration variant is timed between two series of the full model (latency.endtoend)
    reserve = (1 + 2 * n_cal) * (measurer.job_seconds(float(space.macs()), settings.model_rounds,
                                                      settings.series(models=True)) + 1.5)
    deadline = t0 + settings.profile_budget_s - reserve
    tried = {p.signature for p in anchors} | set(failures)
    while True:
        table = model_table()
        todo = plan.uncertain_points(table, settings.uncertainty, tried)
        left = deadline - time.perf_counter()
        if not todo:
            break
        chunk = plan.within(todo, min(left, settings.chunk_s),
                            lambda p: plan.point_seconds(measurer, table, p, settings))
        if not chunk:
            notes.append(f"{len(todo)} uncertain layer width(s) left predicted: the profile budget "
                         f"({settings.profile_budget_s:.0f} s) was spent (--profile-budget)")
            log(f"device model: {notes[-1]}")
            break
        tried |= {p.signature for p in chunk}
        log(f"device model: measuring {len(chunk)} of {len(todo)} uncertain width(s) "
            f"(above {settings.uncertainty:.0%}; {max(0.0, left):.0f} s of the profile budget left)")
        failures.update(measure(chunk, False))
    return failures


def _model_measurements(model: "LoadedModel", space: PruneSpace, table: LatencyTable, tf: TableFile, fp: str,
                        refresh: bool, settings: ProfileSettings, measurer: BundleMeasurer, unit: TableUnit,
                        save: Callable[..., TableFile], log: Log, busy_now: float | None = None
                        ) -> tuple[ModelMeasurements, bool]:
    """The model end to end at full width and at the calibration widths: cached in the
    table file by model fingerprint, measured when absent (or fewer variants than asked),
    and measured again when the device was busy then and is quiet now (``busy_now``; a
    busy host adds time per parallel op, which no rescaling undoes; the other way round
    the quiet measurement is the better one and is kept). Returns the measurements (in the file's unit) and whether they were
    measured now."""
    cached = tf.models.get(fp) if not refresh else None
    meas = ModelMeasurements.from_dict(fp, cached) if cached else None
    n = settings.calibration_variants if space.prunable_groups() else 0
    if meas is not None and busy_now is not None and is_busy(meas.full.busy) and not is_busy(busy_now):
        log(f"the cached end-to-end measurements of {model.name} were taken while other processes kept "
            f"{meas.full.busy:.1f} CPU(s) busy and the device is quiet now: measuring them again")
        meas = None
    if meas is not None and len(meas.variants) >= n:
        return meas, False
    base = LatencyPredictor(space, table)
    rng = random.Random(f"calibration:{settings.seed}")
    variants = [random_widths(space, rng, base.candidates) for _ in range(n)]
    log(f"measuring {model.name} end to end: full width + {n} calibration variant(s)")
    m = measure_against_full(measurer, model, space, {f"cal{i}": w for i, w in enumerate(variants)}, settings,
                             "model + calibration variants")
    full = dataclasses.replace(unit.entry(m.full), busy=busy_now or 0.0)
    meas = ModelMeasurements(
        fingerprint=fp, name=model.spec, full=full,
        variants=[VariantMeasurement(w, m.entry(f"cal{i}", full)) for i, w in enumerate(variants)
                  if f"cal{i}" in m.timings],
    )
    for k, e in m.errors.items():
        log(f"calibration variant {k} failed: {e}")
    # the prune space goes with it: a table is shared by every model of its context, and
    # the report draws a model's own layers from it (results.report.staircase)
    merged = save({}, {fp: {**meas.to_dict(), "space": space.to_dict()}})
    return ModelMeasurements.from_dict(fp, merged.models[fp]), True  # in the file's unit
