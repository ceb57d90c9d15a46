"""The device latency model's predictor: op signatures, features, the fit, its uncertainty.

The fit is checked on real points: a module fixture times a small grid of tiny 3x3
convs and linears with ONNX Runtime through the same bundle runner the profiler uses
(one round trip, a few seconds). The host may be busy, so accuracy is asserted with a
generous tolerance, never as a timing claim.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edgeprune.latency import features as F
from edgeprune.latency.devmodel import DeviceModel, holdout_report
from edgeprune.latency.entry import LatencyEntry
from edgeprune.latency.opshape import OP_NAMES, OP_PARAMS, OpShape
from edgeprune.prune.space import PrunableLayer

CINS = (4, 8, 16, 24, 32, 48)
COUTS = (8, 16, 32, 48)
HWS = (8, 14)
#: interior shapes the fit never sees (measured neighbours on every side, both sizes)
HELD_OUT = {(8, 16, 8), (16, 32, 8), (24, 32, 8), (24, 16, 14), (32, 32, 14), (16, 16, 14)}


def conv(hw: int) -> PrunableLayer:
    return PrunableLayer(f"c{hw}", "conv", 16, 16, kernel=(3, 3), padding=(1, 1), input_hw=(hw, hw), bias=False)


def fc() -> PrunableLayer:
    return PrunableLayer("fc", "linear", 64, 64, rows=4)


@pytest.fixture(scope="module")
def measured() -> tuple[dict[str, LatencyEntry], int]:
    """Real points (signature -> entry) and the host's fp32 lanes."""
    from edgeprune.config.devices import LOCAL
    from edgeprune.config.targets import get_target
    from edgeprune.latency.grid import GridSettings
    from edgeprune.latency.layer_bundle import layer_job
    from edgeprune.latency.lut import Point
    from edgeprune.latency.measurer import BundleMeasurer
    from edgeprune.latency.settings import ProfileSettings

    target = get_target("host")
    lanes = target.fp32_lanes()
    s = ProfileSettings(grid=GridSettings(lanes=lanes), rounds=2, warmup=1, min_runs=5, min_time_s=0.005,
                        gate=False)
    m = BundleMeasurer(target, LOCAL, "onnxruntime", s, log=lambda msg: None)
    shapes = [(conv(hw), ci, co) for hw in HWS for ci in CINS for co in COUTS]
    shapes += [(fc(), ci, co) for ci in (16, 32, 64, 128) for co in (16, 64)]
    jobs = [layer_job(Point(layer.name, ci, co, layer.signature(ci, co)), layer, m.timing)
            for layer, ci, co in shapes]
    timings, errors = m.measure(jobs, s.rounds, s.series(), reference=False)
    assert not errors, errors
    return {k: LatencyEntry.from_rounds(t.rounds, t.runs) for k, t in timings.items()}, lanes


def held_out(sig: str) -> bool:
    kind, ci, co, rest = PrunableLayer.split_signature(sig)
    return kind == "conv" and any((ci, co) == (a, b) and f"hw{hw}x{hw}" in rest for a, b, hw in HELD_OUT)


# ---- op signatures -----------------------------------------------------------------------
@pytest.mark.parametrize("name", OP_NAMES)
def test_every_op_signature_round_trips(name):
    params = {"k": 3, "st": 2, "p": 1, "n": 3}
    shape = (1, 4, 49, 32) if name == "attention" else (1, 64, 28, 28)
    op = OpShape(name, shape, tuple((k, params[k]) for k in reversed(OP_PARAMS[name])))
    sig = op.signature()
    assert sig.startswith(f"op-{name}-s1x") and OpShape.from_signature(sig) == op
    assert op.elements_in > 0 and op.elements_out > 0 and op.flops >= 0
    assert F.op_kind(sig) == f"op-{name}"


def test_op_signatures_are_exact():
    pool = OpShape("maxpool", (1, 64, 56, 56), (("st", 2), ("k", 3)))
    assert pool.signature() == "op-maxpool-s1x64x56x56-k3-st2"  # padding 0 is left out
    assert pool.elements_out == 64 * 27 * 27 and pool.flops == pool.elements_out * 9
    assert OpShape("concat", (1, 64, 28, 28), (("n", 2),)).signature() == "op-concat-s1x64x28x28-n2"
    assert OpShape("gap", (1, 64, 7, 7)).elements_out == 64
    assert OpShape("add", (1, 8, 4, 4)).elements_in == 2 * 128
    att = OpShape.from_signature("op-attention-s1x4x49x32")
    assert att is not None and att.flops == 4 * (4 * 49 * 49 * 32 + 5 * 49 * 49)
    for bad in ("op-maxpool-s1x64x56x56-k3-st2-p0",  # not the canonical spelling
                "op-nosuch-s1x2", "op-gap-s1x64", "op-add-s1x0x2", "conv-i1-o2", "op-add-s1x2-k3"):
        assert OpShape.from_signature(bad) is None, bad
    with pytest.raises(ValueError):
        OpShape("add", (1, 2), (("k", 3),))


# ---- features ----------------------------------------------------------------------------
def test_signatures_parse_into_kinds():
    grouped = PrunableLayer("g", "conv", 64, 64, kernel=(3, 3), padding=(1, 1), input_hw=(14, 14), groups=4)
    dw = PrunableLayer("d", "conv", 32, 32, kernel=(3, 3), padding=(1, 1), input_hw=(14, 14), depthwise=True)
    rnn = PrunableLayer("r", "lstm", 16, 32, rows=1, seq_len=8)
    cases = {conv(8).signature(16, 24): "conv", grouped.signature(): "conv", dw.signature(): "conv-dw",
             fc().signature(): "linear", rnn.signature(): "lstm",
             PrunableLayer("q", "gru", 16, 32, seq_len=4).signature(): "gru", "op-relu-s1x8x4x4": "op-relu"}
    for sig, kind in cases.items():
        assert F.op_kind(sig) == kind, sig
    # the MACs read off the signature are the prune space's own count
    for layer, ci, co in ((conv(14), 12, 40), (grouped, 64, 64), (dw, 32, 32), (fc(), 30, 7), (rnn, 16, 32)):
        kind, raw = F.parse(layer.signature(ci, co))
        assert F.cost(kind, np.array([raw]))["macs"][0] == layer.macs(ci, co)
    assert F.op_kind(PrunableLayer("x", "conv", 3, 8, kernel=(3, 3)).signature()) is None  # hw? unknown size
    assert F.op_kind("conv-i6-o8-k3x3-s1x1-p1x1-d1x1-hw8x8-g4-b") is None  # 6 channels in 4 groups


def test_lattice_features_see_the_lane_lattice_and_smooth_ones_do_not():
    kind, a = F.parse(conv(8).signature(32, 32))
    _, b = F.parse(conv(8).signature(33, 32))
    raw = np.array([a, b])
    lat8, lat16 = F.feature_matrix(kind, raw, 8), F.feature_matrix(kind, raw, 16)
    smooth = F.feature_matrix(kind, raw, 8, "smooth")
    assert lat8.shape[1] > smooth.shape[1]
    assert np.abs(smooth[0] - smooth[1]).max() < 0.1  # 33 vs 32 channels: sizes barely move
    n = smooth.shape[1]
    assert np.abs(lat8[0, n:] - lat8[1, n:]).max() >= 1  # ... the lattice terms jump
    assert not np.array_equal(lat8, lat16)  # lanes is a parameter, not a constant


# ---- the fit -----------------------------------------------------------------------------
def test_a_model_fitted_on_some_shapes_predicts_held_out_ones(measured):
    entries, lanes = measured
    train = {s: e for s, e in entries.items() if not held_out(s)}
    model = DeviceModel.fit(train, lanes)
    assert model.kinds() == {"conv": len(CINS) * len(COUTS) * len(HWS) - len(HELD_OUT), "linear": 8}
    held = sorted(s for s in entries if held_out(s))
    assert len(held) == len(HELD_OUT)
    preds = model.predict_many(held)
    errs = [abs(p.ms / entries[s].ms - 1) for s, p in zip(held, preds)]
    assert all(p.known_kind and p.in_range and p.ms > 0 for p in preds)
    assert np.median(errs) < 0.35, list(zip(held, errs))  # generous: the host may be busy
    assert [p.ms for p in preds] == pytest.approx([model.predict(s).ms for s in held], rel=1e-9)  # one path


def test_uncertainty_is_larger_off_the_suite_and_big_shapes_extrapolate_upwards(measured):
    entries, lanes = measured
    model = DeviceModel.fit(entries, lanes)
    inside = model.predict(conv(8).signature(16, 32))  # a measured point
    far = model.predict(conv(56).signature(256, 256))
    assert inside.in_range and not far.in_range and far.known_kind
    assert far.uncertainty > max(0.3, 2 * inside.uncertainty)
    assert far.ms > max(e.ms for e in entries.values())  # the baseline grows; trees alone would not
    nearby = model.predict(conv(8).signature(20, 40))  # inside the box, between measured widths
    assert nearby.in_range and nearby.uncertainty < far.uncertainty
    # every way of leaving the suite (>= 2 octaves: channels, size, kernel, stride) counts
    off = [conv(56).signature(16, 16), conv(8).signature(192, 192),
           PrunableLayer("k7", "conv", 16, 16, kernel=(7, 7), padding=(3, 3), input_hw=(32, 32)).signature(),
           PrunableLayer("s2", "conv", 160, 160, kernel=(3, 3), stride=(2, 2), padding=(1, 1),
                         input_hw=(14, 14)).signature()]
    on = [p.uncertainty for s, p in zip(sorted(entries), model.predict_many(sorted(entries))) if s.startswith("conv")]
    off_u = [p.uncertainty for p in model.predict_many(off)]
    assert min(off_u) > np.median(on), (off_u, np.median(on))


def test_an_unknown_kind_says_so(measured):
    entries, lanes = measured
    model = DeviceModel.fit(entries, lanes)
    for sig in ("lstm-i16-o32-b1-t8-b", "op-relu-s1x8x4x4", "nonsense"):
        p = model.predict(sig)
        assert not p.known_kind and math.isnan(p.ms) and p.uncertainty == math.inf and not p.in_range


def test_the_fit_is_deterministic_given_its_seed(measured):
    entries, lanes = measured
    sigs = sorted(entries) + [conv(14).signature(20, 20)]
    shuffled = dict(reversed(list(entries.items())))  # the mapping's order does not matter
    a = DeviceModel.fit(entries, lanes, seed=3).predict_many(sigs)
    b = DeviceModel.fit(shuffled, lanes, seed=3).predict_many(sigs)
    c = DeviceModel.fit(entries, lanes, seed=4).predict_many(sigs)
    assert a == b
    assert a != c


def test_the_fit_skips_points_with_rounds_still_owed_and_non_positive_ones(measured):
    entries, lanes = measured
    sig = conv(8).signature(16, 32)
    assert sig in entries
    broken = dict(entries)
    broken[sig] = LatencyEntry(ms=1000.0, rounds=[1000.0], partial=2)
    broken[conv(14).signature(40, 40)] = LatencyEntry(ms=0.0)
    broken["op-relu-s1x8x4x4"] = LatencyEntry(ms=-1.0)
    without = {s: e for s, e in entries.items() if s != sig}
    m = DeviceModel.fit(broken, lanes)
    assert m.kinds() == DeviceModel.fit(without, lanes).kinds() and "op-relu" not in m.kinds()
    assert m.skipped == 3
    assert m.predict(sig).ms == pytest.approx(DeviceModel.fit(without, lanes).predict(sig).ms, rel=1e-9)
    assert m.predict(sig).ms < 10


def test_holdout_report_compares_lattice_and_smooth(measured):
    entries, lanes = measured
    r = holdout_report(entries, lanes, held_out)
    json.dumps(r)  # JSON-able as it is
    assert r["holdout_points"] == len(HELD_OUT) and r["train_points"] == len(entries) - len(HELD_OUT)
    for fs in ("lattice", "smooth"):
        o = r[fs]["overall"]
        assert o["n"] == len(HELD_OUT) and 0 <= o["within_10pct"] <= 1
        assert o["median_abs_pct"] <= o["p95_abs_pct"]
        assert o["mean_uncertainty_holdout"] > o["mean_uncertainty_train"] > 0
        assert set(r[fs]["kinds"]) == {"conv"} and r[fs]["unpredicted"] == 0
    d = DeviceModel.fit(entries, lanes, features="smooth").describe()
    json.dumps(d)
    assert d["feature_set"] == "smooth" and d["kinds"]["conv"]["points"] == len(CINS) * len(COUTS) * len(HWS)


def test_bad_arguments_are_refused(measured):
    entries, lanes = measured
    with pytest.raises(ValueError):
        DeviceModel.fit(entries, lanes, features="fancy")
    with pytest.raises(ValueError):
        DeviceModel.fit(entries, lanes, members=0)
