"""Variants timed against the full model: the full model is timed right before and after
every variant's series, in every bundle, and a variant's fraction is taken pair by pair,
so a slow stretch of the machine moves both sides of a ratio together."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeprune.bench.bundle import BenchJob, JobResult
from edgeprune.bench.measure import Bundle
from edgeprune.latency.entry import LatencyEntry
from edgeprune.latency.layer_bundle import REFERENCE_KEY, Job, LayerBundle
from edgeprune.latency.series import fold


def _bundle(keys: list[str], ids: list[str], anchor: str | None) -> LayerBundle:
    jobs = [BenchJob(id=i, backend="onnxruntime", artifact="x", inputs="y") for i in ids]
    return LayerBundle(Bundle(Path("."), jobs), keys=keys, anchor=anchor,
                       jobs={k: Job(k, write_onnx=print, inputs=list, input_key="") for k in keys})


def test_a_slow_stretch_moves_the_variant_and_the_full_model_together():
    """Round 0 runs in the fast state, round 1 in a slow one (everything 1.5x): the plain
    ratio of the two robust timings is whatever state each side's majority saw; the paired
    fraction is the same in both rounds."""
    keys = [REFERENCE_KEY, "full", "a", "b"]
    ids = ["1.r0.a0", "2.r0", "1.r0.a1", "3.r0", "1.r0.a2", "1.r1.a0", "3.r1", "1.r1.a1", "2.r1", "1.r1.a2"]
    full, a, b = 10.0, 5.0, 8.0
    slow = 1.5
    med = {"1.r0.a0": full, "2.r0": a, "1.r0.a1": full, "3.r0": b, "1.r0.a2": full,
           "1.r1.a0": full * slow, "3.r1": b * slow, "1.r1.a1": full * slow, "2.r1": a * slow, "1.r1.a2": full * slow}
    results = {i: JobResult(id=i, ok=True, times_ms=[m]) for i, m in med.items()}
    f = fold(_bundle(keys, ids, "full"), results)
    assert f.timings["a"].ratios == pytest.approx([0.5, 0.5])
    assert f.timings["a"].fraction == pytest.approx(0.5) and f.timings["b"].fraction == pytest.approx(0.8)
    assert len(f.timings["full"].rounds) == 6 and f.timings["full"].fraction is None
    # without an anchor there is no pairing
    assert fold(_bundle(keys, ids, None), results).timings["a"].fraction is None


def test_the_full_model_is_timed_before_every_variant_and_after_the_last(tmp_path):
    from edgeprune.bench.settings import BenchSettings
    from edgeprune.compile.backends import get_backend
    from edgeprune.config.targets import get_target
    from edgeprune.latency.layer_bundle import build_bundle, reference_job
    from edgeprune.latency.variants import space_of, variant_job
    from edgeprune.models.spec import load_model

    model = load_model("tests.lut_models:tiny_cnn")
    space = space_of(model)
    half = {g.id: max(1, g.size // 2) for g in space.prunable_groups()}
    jobs = [reference_job(), variant_job(model, space, None, "full"), variant_job(model, space, half, "v0"),
            variant_job(model, space, half, "v1")]
    s = BenchSettings(warmup=1, min_runs=3, min_time_s=0.001)
    lb = build_bundle(tmp_path, jobs, get_backend("onnxruntime"), get_target("host"), 1, 2, s, s, None, "seed",
                      anchor="full")
    assert lb.anchor == "full"
    order = [lb.key_of(j.id) for j in lb.bundle.jobs if lb.key_of(j.id) != REFERENCE_KEY]
    for r in range(2):
        one = order[5 * r:5 * r + 5]  # full, v, full, v, full
        assert one[0::2] == ["full"] * 3 and sorted(one[1::2]) == ["v0", "v1"], order


def test_measured_against_itself_the_full_model_is_one(tmp_path, host_target):
    """Real ONNX Runtime: a variant at full width measured against the full model reads
    ~1.0, a half-width one less, each from its own pairs."""
    from edgeprune.config.devices import LOCAL
    from edgeprune.latency.endtoend import measure_against_full
    from edgeprune.latency.measurer import BundleMeasurer
    from edgeprune.latency.settings import ProfileSettings
    from edgeprune.latency.variants import space_of
    from edgeprune.models.spec import load_model

    model = load_model("tests.lut_models:small_cnn")
    space = space_of(model)
    full = space.full_widths()
    low = {**full, **{g.id: max(1, g.size // 4) for g in space.prunable_groups()}}
    settings = ProfileSettings(model_rounds=3, model_min_runs=5, model_min_time_s=0.02, gate=False)
    m = measure_against_full(BundleMeasurer(host_target, LOCAL, "onnxruntime", settings, log=lambda s: None),
                             model, space, {"same": full, "low": low}, settings, "test")
    assert len(m.ratios("same")) == 3 and len(m.full.rounds) == 2 * 3 + 3
    assert 0.8 < m.fraction("same") < 1.25, m.ratios("same")
    assert m.fraction("low") < m.fraction("same")
    e = m.entry("low", LatencyEntry.from_rounds([2.0], 1))  # in the unit of a full model stored as 2 ms
    assert e.ms == pytest.approx(2.0 * m.fraction("low")) and len(e.rounds) == 3
