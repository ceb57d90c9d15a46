"""``validate``: the predictor of a profile judged against the device: random pruned
variants of the model timed end to end (the full model interleaved with them) and
compared with what the predictor says (behind ``edgeprune profile --validate``).

Drift: each variant is compared with the full model timed right before and after each
of its series (:mod:`~edgeprune.latency.endtoend`), so the ratio is taken in one machine
state.
When the full model itself runs more than :data:`DRIFT_REMEASURE` faster or slower than
when it was profiled (a table measured on a busy host, reused on a quiet one: measured
-34.9 %), the model's end-to-end calibration is measured again first, so the report
judges the predictor, not the change of machine state.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from edgeprune.errors import BenchError, ModelError
from edgeprune.latency.endtoend import measure_against_full
from edgeprune.latency.measurer import BundleMeasurer, warn_if_busy
from edgeprune.latency.predictor import error_stats
from edgeprune.latency.records import ProfileResult, ValidationReport
from edgeprune.latency.series import Timing
from edgeprune.latency.settings import ProfileSettings, ProgressSink
from edgeprune.latency.variants import random_widths

if TYPE_CHECKING:
    from edgeprune.config.devices import Device
    from edgeprune.config.targets import Target
    from edgeprune.models.base import LoadedModel

Log = Callable[[str], None]

#: full-model drift since profiling beyond which the calibration is measured again
DRIFT_REMEASURE = 0.10


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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
    log(f"validating: {n} random pruned variant(s) of {model.name} measured end to end, each next to the full model")
    m = measure_against_full(measurer, model, space, {f"v{i}": w for i, w in enumerate(configs)}, settings,
                             "validation variants")
    ref = result.reference_ms
    full = m.full
    drift = full.ms / pred.calibration.full_ms
    recalibrated = None
    if abs(drift - 1) > DRIFT_REMEASURE and result.adaptive is not None:
        # judging the predictor against another machine state tests nothing: the
        # remainder (everything outside the layers) is measured again, now
        log(f"machine drift since profiling: the full model runs {100 * (drift - 1):+.1f} % now; measuring "
            f"{model.name}'s end-to-end calibration again before judging the predictor")
        result.adaptive.recalibrate()
        pred = result.predictor = result.adaptive.predictor
        recalibrated = drift
    full_profile = pred.calibration.full_ms

    def unit(tm: Timing) -> float:  # the bundle's reference layer -> the table's unit
        return tm.ms * (ref / tm.ref_ms if (ref and tm.ref_ms) else 1.0)

    rows, pairs, raw_pairs, unit_pairs, fpairs = [], [], [], [], []
    for i, w in enumerate(configs):
        tm = m.timings.get(f"v{i}")
        if tm is None:
            log(f"variant {i} failed: {m.errors.get(f'v{i}', 'no result')}")
            continue
        # the fraction of the full model timed around it, in the profile's unit
        meas = m.fraction(f"v{i}") * full_profile
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
        unsteady_series=measurer.unsteady_series, recalibrated_drift=recalibrated,
        profile_seconds=result.seconds, points_measured=result.points_measured, tables=result.tables,
    )
