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

import random
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeprune.errors import BenchError, Interrupted, ModelError
from edgeprune.latency.entry import LatencyEntry
from edgeprune.latency.layer_bundle import REFERENCE_LAYER, layer_job
from edgeprune.latency.lut import LatencyTable, Point
from edgeprune.latency.measurer import BundleMeasurer, warn_if_busy
from edgeprune.latency.points import REMEASURE_ROUNDS, complete_table
from edgeprune.latency.predictor import LatencyPredictor, ModelMeasurements, VariantMeasurement, error_stats
from edgeprune.latency.records import ProfileInterrupted, ProfileResult, ValidationReport
from edgeprune.latency.series import Timing, TableUnit
from edgeprune.latency.settings import ProfileSettings, ProgressSink, layer_timing
from edgeprune.latency.store import LUTStore, TableFile, table_key
from edgeprune.latency.variants import model_fingerprint, random_widths, space_of, variant_job
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
    says how many were kept: a rerun measures only what is missing."""
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
    entries: dict[str, LatencyEntry] = dict(tf.entries)
    reused_before = set(entries)
    progress = progress or ProgressSink()
    measurer = BundleMeasurer(target, device, backend, settings, progress=progress, log=log)
    unit = TableUnit(settings.drift, tf.reference_ms)
    env: dict[str, Any] = dict(tf.env)
    warned = False
    measured: set[str] = set()
    completed: set[str] = set()  # points cut short by an interrupted run, completed now

    def save(new: Mapping[str, LatencyEntry], models: Mapping[str, dict[str, Any]] | None = None) -> TableFile:
        nonlocal env
        if measurer.last_env:
            env = {k: v for k, v in measurer.last_env.items() if k != "timing"}
        ref = {"signature": REFERENCE_LAYER.signature(), "ms": unit.ref_ms} if unit.ref_ms else None
        merged, factor = store.save(path, key, new, models, env, ref)
        if factor != 1.0:  # a concurrent profiler defined the unit first: adopt it
            log(f"adopting the reference unit of {path} (written concurrently by another profiler)")
            for k in new:
                entries[k] = merged.entries[k]
            unit.ref_ms = merged.reference_ms
        return merged

    def status(table: LatencyTable, todo: list[Point], remeasure: bool) -> None:
        nonlocal warned
        if not warned:
            warned = True
            warn_if_busy(device, log)
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

    def keep(mode: str) -> Callable[[dict[str, Timing]], None]:
        """Save a chunk's timings at once (``mode``: new points, completing points cut
        short, or more rounds for noisy ones), so an interruption loses nothing."""
        def on_chunk(timings: dict[str, Timing]) -> None:
            new = {}
            for k, tm in timings.items():
                rounds, f = unit.rounds(tm)
                old = entries.get(k)
                if old is not None and mode == "complete":
                    e = old.completed(rounds, tm.runs, f, partial=tm.short)
                    if not e.partial:
                        completed.add(k)
                elif old is not None and mode == "remeasure":
                    e = old.merged(rounds, tm.runs, f)
                else:
                    e = LatencyEntry.from_rounds(rounds, tm.runs, f, partial=tm.short)
                entries[k] = new[k] = e
                measured.add(k)
            save(new)
        return on_chunk

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
            _, e = measurer.measure(jobs, rounds, settings.series(), keep(mode), description=_DESCRIPTIONS[mode])
            errs.update(e)
        for k, e in errs.items():
            log(f"could not measure {k}: {e}")
        return errs

    stage = "measuring layer points"
    try:
        table, failures = complete_table(space, entries, settings.grid, measure, status)
        if not table.complete:
            missing = [p.signature for t in table.tables.values() for p in t.missing]
            raise BenchError(f"latency table incomplete: {len(missing)} point(s) could not be measured, e.g. "
                             f"{missing[0]}: {failures.get(missing[0], 'unknown error')}")
        stage = f"measuring {model.name} end to end"
        fp = model_fingerprint(model, space)
        meas, model_measured = _model_measurements(model, space, table, tf, fp, refresh, settings, measurer, unit,
                                                   save, log)
    except KeyboardInterrupt as exc:
        progress.close()
        stop = ProfileInterrupted(Interrupted.of(exc), stage, path, kept=len(measured),
                                  cut_short=sum(1 for k in measured if entries[k].partial), cached=len(reused_before))
        log(stop.summary())
        raise stop from None
    predictor = LatencyPredictor(space, table, meas)
    progress.close()
    used = table.used_signatures()
    return ProfileResult(
        predictor=predictor, table=table, key=key, table_path=path, points_used=len(used),
        points_measured=len(measured), points_reused=len(used & (reused_before - measured)),
        model_measured=model_measured, seconds=time.perf_counter() - t0, bundles=measurer.bundles_run,
        failures=failures, model=model.spec, fingerprint=fp, reference_ms=unit.ref_ms,
        unsteady_series=measurer.unsteady_series, points_completed=len(completed),
    )


def _model_measurements(model: "LoadedModel", space: PruneSpace, table: LatencyTable, tf: TableFile, fp: str,
                        refresh: bool, settings: ProfileSettings, measurer: BundleMeasurer, unit: TableUnit,
                        save: Callable[..., TableFile], log: Log) -> tuple[ModelMeasurements, bool]:
    """The model end to end at full width and at the calibration widths: cached in the
    table file by model fingerprint, measured when absent (or fewer variants than asked).
    Returns the measurements (in the file's unit) and whether they were measured now."""
    cached = tf.models.get(fp) if not refresh else None
    meas = ModelMeasurements.from_dict(fp, cached) if cached else None
    n = settings.calibration_variants if space.prunable_groups() else 0
    if meas is not None and len(meas.variants) >= n:
        return meas, False
    base = LatencyPredictor(space, table)
    rng = random.Random(f"calibration:{settings.seed}")
    variants = [random_widths(space, rng, base.candidates) for _ in range(n)]
    jobs = [variant_job(model, space, None, "full")] + [variant_job(model, space, w, f"cal{i}")
                                                        for i, w in enumerate(variants)]
    log(f"measuring {model.name} end to end: full width + {n} calibration variant(s)")
    timings, errs = measurer.measure(jobs, settings.model_rounds, settings.series(models=True),
                                     description="model + calibration variants")
    if "full" not in timings:
        raise BenchError(f"cannot measure {model.name} end to end: {errs.get('full', 'no result')}")
    meas = ModelMeasurements(
        fingerprint=fp, name=model.spec, full=unit.entry(timings["full"]),
        variants=[VariantMeasurement(w, unit.entry(timings[f"cal{i}"])) for i, w in enumerate(variants)
                  if f"cal{i}" in timings],
    )
    for k, e in errs.items():
        log(f"calibration variant {k} failed: {e}")
    # the prune space goes with it: a table is shared by every model of its context, and
    # the report draws a model's own layers from it (results.report.staircase)
    merged = save({}, {fp: {**meas.to_dict(), "space": space.to_dict()}})
    return ModelMeasurements.from_dict(fp, merged.models[fp]), True  # in the file's unit


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
    timings, errs = measurer.measure(jobs, settings.model_rounds, settings.series(models=True),
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
        interleaved rounds (both estimated with :func:`~edgeprune.latency.entry.robust_ms`)."""
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
