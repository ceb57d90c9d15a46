"""Pruned variants of a model timed end to end *against the full model*: the one way the
profiler's calibration, validation and the pruned model's budget check measure a variant.

What every caller needs is a variant's latency as a fraction of the unpruned model
(budgets are fractions; the calibration stores variants in the profile's unit, i.e. that
fraction times the full model as profiled). So the full model is the bundles'
**anchor** (:func:`~edgeprune.latency.layer_bundle.build_bundle`): timed right before and
after every variant's series, in every bundle, and a variant's fraction is the median of
its per-round ratios to the anchor around it (:attr:`~edgeprune.latency.series.Timing.fraction`).

Why not one full-model timing per measurement, as before: a 21-model validation bundle is
split into chunks of ~40 device seconds, the full model sat in the first chunk only, and
the host's slow state (1.1-1.7x for seconds at a time) put it 12.6 % above the profile
while the variants of the later chunks ran as predicted: every variant read ~12 % high,
and 20 of 20 of resnet18's variants became a 12.5 % median error. Timing the anchor next
to each variant costs about twice the device time of the variants alone and removes the
machine's state from the ratio.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgeprune.errors import BenchError
from edgeprune.latency.entry import LatencyEntry
from edgeprune.latency.series import Timing
from edgeprune.latency.variants import variant_job

if TYPE_CHECKING:
    from edgeprune.latency.measurer import BundleMeasurer
    from edgeprune.latency.settings import ProfileSettings
    from edgeprune.models.base import LoadedModel
    from edgeprune.prune.space import PruneSpace

FULL = "full"


@dataclass
class AgainstFull:
    """The full model's timing (every series of every bundle) and each variant's."""

    full: Timing
    timings: dict[str, Timing] = field(default_factory=dict)  # variant key -> its timing
    errors: dict[str, str] = field(default_factory=dict)

    def fraction(self, key: str) -> float:
        """Variant ``key`` as a fraction of the full model, paired round by round; the
        ratio of the two timings where no pair exists (the anchor failed in that bundle)."""
        tm = self.timings[key]
        f = tm.fraction
        return f if f is not None else tm.ms / self.full.ms

    def ratios(self, key: str) -> list[float]:
        tm = self.timings[key]
        return tm.ratios or [tm.ms / self.full.ms]

    def entry(self, key: str, full: LatencyEntry) -> LatencyEntry:
        """Variant ``key`` in the unit of ``full`` (the full model as the caller stores it):
        its per-round ratios times ``full.ms``, its value the paired fraction times it."""
        e = LatencyEntry.from_rounds([r * full.ms for r in self.ratios(key)], self.timings[key].runs)
        return dataclasses.replace(e, ms=self.fraction(key) * full.ms)


def measure_against_full(measurer: "BundleMeasurer", model: "LoadedModel", space: "PruneSpace",
                         variants: Mapping[str, Mapping[str, int]], settings: "ProfileSettings",
                         description: str) -> AgainstFull:
    """Time ``variants`` (key -> widths) of ``model`` end to end, each next to the full
    model (module docstring), as ``settings`` times whole models. A variant that fails is
    in ``errors``; the full model failing is a :class:`~edgeprune.errors.BenchError`."""
    if FULL in variants:
        raise ValueError(f"{FULL!r} is the full model's key, not a variant's")
    jobs = [variant_job(model, space, w, k) for k, w in variants.items()]
    full_job = variant_job(model, space, None, FULL)
    timings, errs = measurer.measure(jobs or [full_job], settings.model_rounds, settings.series(models=True),
                                     description=description, anchor=full_job if jobs else None)
    full = timings.pop(FULL, None)
    if full is None:
        raise BenchError(f"cannot measure {model.name} end to end: {errs.get(FULL, 'no result')}")
    return AgainstFull(full=full, timings=timings, errors={k: v for k, v in errs.items() if k != FULL})
