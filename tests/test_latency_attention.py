"""Latency tables and the device model for transformers and fixed-group-width convs.

Real ONNX Runtime throughout (the bundle runner the profiler uses, tiny shapes, one
module fixture of a few dozen points): the attention core is built, exported and timed
with kernel timing; a grouped conv with a fixed group width is built with the groups of
its pruned width; every width the tables, candidates and random variants generate for a
group with a ``unit`` is a multiple of it; a device model fitted on a few attention
shapes predicts a held-out one, is less sure off the suite, and one fitted before the
attention kind existed says it does not know it. Accuracy is asserted generously (the
host may be busy), never as a timing claim.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from edgeprune.latency import features as F
from edgeprune.latency.devmodel import DeviceModel
from edgeprune.latency.entry import LatencyEntry
from edgeprune.latency.grid import GridSettings
from edgeprune.latency.layers import layer_model, make_inputs
from edgeprune.prune.space import PrunableLayer, PruneGroup, PruneSpace


def attn(head_dim: int = 16, tokens: int = 16, batch: int = 1, heads: int = 4, group: str | None = "h") -> PrunableLayer:
    c = heads * head_dim
    return PrunableLayer("attn", "attention", c, c, in_group=group, out_group=group, head_dim=head_dim, rows=batch,
                         seq_len=tokens, bias=False)


def gconv(group_width: int = 8, c: int = 32, hw: int = 8, group: str | None = "g") -> PrunableLayer:
    return PrunableLayer("gc", "conv", c, c, in_group=group, out_group=group, kernel=(3, 3), padding=(1, 1),
                         input_hw=(hw, hw), groups=c // group_width, group_width=group_width)


def _session(model):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _measurer():
    from edgeprune.config.devices import LOCAL
    from edgeprune.config.targets import get_target
    from edgeprune.latency.measurer import BundleMeasurer
    from edgeprune.latency.settings import ProfileSettings

    target = get_target("host")
    s = ProfileSettings(grid=GridSettings(lanes=target.fp32_lanes()), rounds=2, warmup=1, min_runs=5,
                        min_time_s=0.005, gate=False)
    return BundleMeasurer(target, LOCAL, "onnxruntime", s, log=lambda msg: None), s, target.fp32_lanes()


#: (heads, head_dim, tokens) of the attention fit: two head dims, two token counts
FIT = [(h, d, t) for h in (1, 2, 4) for d in (16, 32) for t in (16, 32)]
HELD = (3, 16, 24)  # inside the box on every axis, never measured


@pytest.fixture(scope="module")
def measured() -> tuple[dict[str, LatencyEntry], int, str]:
    """Real attention points (signature -> entry), the host's lanes and the timing mode."""
    from edgeprune.latency.layer_bundle import layer_job
    from edgeprune.latency.lut import Point

    m, s, lanes = _measurer()
    shapes = [attn(d, t, heads=h) for h, d, t in FIT + [HELD]]
    shapes.append(gconv(8, 32))
    jobs = [layer_job(Point(l.name, l.in_channels, l.out_channels, l.signature()), l, m.timing) for l in shapes]
    timings, errors = m.measure(jobs, s.rounds, s.series(), reference=False)
    assert not errors, errors
    return {k: LatencyEntry.from_rounds(t.rounds, t.runs) for k, t in timings.items()}, lanes, m.timing


# ---- the attention core ------------------------------------------------------------------
def test_the_attention_core_is_built_exported_and_matches_torch():
    import torch

    layer = attn(head_dim=8, tokens=6, batch=2, heads=4)
    assert layer.signature(16, 16) == "attention-i16-o16-d8-b2-t6"
    assert layer.macs(16, 16) == 2 * 2 * 2 * 6 * 6 * 8  # 2 * B * H * T^2 * d at 2 heads
    model = layer_model(layer, 16, 16)  # pruned to 2 of its 4 heads
    q, k, v = make_inputs(layer, 16)
    assert q.shape == (2, 6, 16)
    (y,) = _session(model).run(None, {"q": q, "k": k, "v": v})

    def heads(x):
        return torch.from_numpy(x).view(2, 6, 2, 8).transpose(1, 2)

    ref = torch.nn.functional.scaled_dot_product_attention(heads(q), heads(k), heads(v))
    assert np.allclose(y, ref.transpose(1, 2).reshape(2, 6, 16).numpy(), atol=1e-5)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMul") == 2 and "Softmax" in ops and ops.count("Transpose") == 4
    with pytest.raises(ValueError, match="multiple"):
        layer_model(layer, 12, 12)  # not whole heads


def test_kernel_timing_sums_every_node_of_the_attention_core(tmp_path):
    """The core is several kernels (matmuls, softmax, transposes...): kernel timing must
    count all of them, not the first or the largest."""
    import onnxruntime as ort

    from edgeprune.runner.timing import ort_kernel_times

    layer = attn(head_dim=16, tokens=32, heads=4)
    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp_path / "prof")
    sess = ort.InferenceSession(layer_model(layer, 64, 64).SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    feeds = dict(zip("qkv", make_inputs(layer, 64)))
    for _ in range(3):
        sess.run(None, feeds)
    events = json.loads(open(sess.end_profiling()).read())
    nodes = [e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")]
    kinds = {(e.get("args") or {}).get("op_name") for e in nodes}
    assert len(kinds) >= 3 and {"Softmax"} <= kinds | {"FusedMatMul"}, kinds
    runs = ort_kernel_times(events, 3)
    assert len(runs) == 3 and all(r > 0 for r in runs)
    per_run = sum(e["dur"] for e in nodes) / 3 / 1e3  # every node of every run, in ms
    assert sum(runs) / 3 == pytest.approx(per_run, rel=1e-6)
    biggest = max(e["dur"] for e in nodes) / 1e3
    assert max(runs) > biggest  # more than one node per run was summed


def test_attention_points_are_timed_with_kernel_timing(measured):
    entries, _, timing = measured
    assert timing == "kernel"
    sigs = [attn(d, t, heads=h).signature() for h, d, t in FIT]
    assert all(entries[s].ms > 0 and math.isfinite(entries[s].ms) for s in sigs)


# ---- fixed group width -------------------------------------------------------------------
def test_a_group_width_conv_is_built_with_the_groups_of_its_width():
    import torch

    layer = gconv(group_width=8, c=64)
    assert layer.groups_at(32) == 4 and layer.groups_at(64) == 8
    model = layer_model(layer, 32, 32)  # pruned to 4 of its 8 conv groups
    (node,) = model.graph.node
    attrs = {a.name: a for a in node.attribute}
    assert attrs["group"].i == 4
    w = next(i for i in model.graph.initializer if i.name == "W")
    assert list(w.dims) == [32, 8, 3, 3]  # each output channel reads one group of 8
    assert layer.macs(32, 32) == 8 * 8 * 32 * 9 * 8
    assert layer.signature(32, 32).endswith("-gw8-b")
    kind, raw = F.parse(layer.signature(32, 32))
    assert kind == "conv" and raw[F.CONV_RAW.index("groups")] == 4
    (x,) = make_inputs(layer, 32)
    (y,) = _session(model).run(None, {"x": x})
    ref = torch.nn.Conv2d(32, 32, 3, padding=1, groups=4)(torch.from_numpy(x))
    assert y.shape == tuple(ref.shape)
    with pytest.raises(ValueError, match="group width"):
        layer_model(layer, 30, 30)
    # a fixed-groups conv keeps its groups at every width (as before)
    fixed = PrunableLayer("f", "conv", 64, 64, kernel=(3, 3), padding=(1, 1), input_hw=(8, 8), groups=8)
    assert fixed.groups_at(32) == 8 and fixed.signature(32, 32).endswith("-g8-b")


# ---- units -------------------------------------------------------------------------------
def _space() -> PruneSpace:
    groups = {"h": PruneGroup("h", 96, min_size=16, unit=16), "g": PruneGroup("g", 64, min_size=8, unit=8),
              "f": PruneGroup("f", 40, min_size=1)}
    layers = [attn(16, 16, heads=6), gconv(8, 64),
              PrunableLayer("proj", "linear", 96, 40, in_group="h", out_group="f", rows=16),
              PrunableLayer("fc", "linear", 40, 64, in_group="f", out_group="g", rows=1)]
    return PruneSpace(groups=groups, layers=layers)


def _fill(table, entries: dict[str, LatencyEntry], lut) -> None:
    """Synthetic points (a staircase in MACs) for every point the table asks for: the
    table's planning logic under test, not a measurement."""
    for p in [q for t in table.tables.values() for q in t.missing + t.refinement()]:
        layer = table.families[p.family].layer
        ms = 1e-3 + layer.macs(p.cin, p.cout) / 1e8 + 0.01 * math.ceil(p.cout / 8)
        entries[p.signature] = LatencyEntry.from_rounds([ms, ms], 5)


def _assert_units(space: PruneSpace, table, points) -> None:
    for p in points:
        fam_layer = table.families[p.family].layer
        for c, gid in ((p.cin, fam_layer.in_group), (p.cout, fam_layer.out_group)):
            g = space.groups.get(gid) if gid else None
            if g is not None and g.unit > 1:
                assert c % g.unit == 0 or c == g.size, (p, g)


def test_tables_candidates_and_variants_respect_the_unit():
    from edgeprune.latency import lut
    from edgeprune.latency.plan import axis_widths
    from edgeprune.latency.predicted import lattice_widths
    from edgeprune.latency.predictor import LatencyPredictor
    from edgeprune.latency.variants import random_widths

    space = _space()
    grid = GridSettings(lanes=8)
    entries: dict[str, LatencyEntry] = {}
    for _ in range(6):  # plan, fill, refine until complete (as points.complete_table does)
        table = lut.LatencyTable(space, entries, grid)
        asked = [q for t in table.tables.values() for q in t.missing + t.refinement()]
        _assert_units(space, table, asked)
        if not asked:
            break
        _fill(table, entries, lut)
    table = lut.LatencyTable(space, entries, grid)
    assert table.complete
    _assert_units(space, table, [p for t in table.tables.values() for p in t.points()])
    heads = {p.cin for t in table.tables.values() if t.family.layer.kind == "attention" for p in t.points()}
    assert heads <= {16, 32, 48, 64, 80, 96} and len(heads) >= 4
    pred = LatencyPredictor(space, table)
    for gid in ("h", "g"):
        unit = space.groups[gid].unit
        cands = pred.candidates(gid)
        assert cands and all(c % unit == 0 for c in cands) and cands[-1] == space.groups[gid].size
        assert all(w % unit == 0 for w in pred.group_curve(gid))
    assert any(c % 8 for c in range(1, 41) if c in pred.group_curve("f"))  # unit 1: every width
    rng = random.Random(0)
    for _ in range(50):
        w = random_widths(space, rng, None)
        assert w["h"] % 16 == 0 and w["g"] % 8 == 0 and w["h"] >= 16
    for f in table.families.values():
        for ci, co in lattice_widths(f, grid) + axis_widths(table.tables[f.key]):
            layer = f.layer
            for c, gid in ((ci, layer.in_group), (co, layer.out_group)):
                g = space.groups.get(gid) if gid else None
                if g is not None:
                    assert c % g.unit == 0, (f.key, ci, co)


# ---- the device model --------------------------------------------------------------------
def test_a_device_model_fitted_on_attention_shapes_predicts_a_held_out_one(measured):
    entries, lanes, _ = measured
    held = attn(HELD[1], HELD[2], heads=HELD[0]).signature()
    train = {s: e for s, e in entries.items() if s != held}
    model = DeviceModel.fit(train, lanes)
    assert model.kinds()["attention"] == len(FIT)
    p = model.predict(held)
    assert p.known_kind and p.in_range and p.ms > 0
    assert abs(p.ms / entries[held].ms - 1) < 0.6, (p.ms, entries[held].ms)  # generous: the host may be busy
    inside = model.predict(attn(16, 16, heads=2).signature())  # a fitted point
    far = model.predict(attn(64, 256, heads=12).signature())  # 2-3 octaves off on three axes
    assert far.known_kind and not far.in_range
    assert far.uncertainty > max(0.3, 2 * inside.uncertainty) and far.uncertainty > p.uncertainty
    assert far.ms > max(e.ms for s, e in entries.items() if s.startswith("attention"))  # grows with the shape


def test_a_device_model_without_attention_points_reports_them_unknown(measured):
    """A device model built before the attention kind existed (no such points in its
    table) says so, and a prune space with an attention layer gets that family measured."""
    from edgeprune.latency.predicted import PredictedTable

    entries, lanes, _ = measured
    old = {s: e for s, e in entries.items() if not s.startswith("attention")}
    model = DeviceModel.fit(old, lanes)
    assert "attention" not in model.kinds() and model.kinds().get("conv")
    p = model.predict(attn(16, 16, heads=3).signature())
    assert not p.known_kind and math.isnan(p.ms) and p.uncertainty == math.inf
    space = PruneSpace(groups={"h": PruneGroup("h", 64, min_size=16, unit=16)}, layers=[attn(16, 16, heads=4)])
    table = PredictedTable(space, old, model, GridSettings(lanes=lanes))
    assert table.measured_families == list(table.families)
    assert table.tables[table.measured_families[0]].missing  # the profiler measures it


def test_an_old_device_model_on_disk_loads_and_names_the_kinds_it_has_no_points_for(tmp_path):
    """A device model of suite v1 (format version 1 files, written before the attention
    core was in the suite) still loads; ``show`` names attention as unmeasured and the
    fitted model predicts it as unknown (so profile measures it) while it knows the rest."""
    from click.testing import CliRunner

    from edgeprune.cli import cli
    from edgeprune.config.devices import LOCAL
    from edgeprune.config.targets import get_target
    from edgeprune.latency import devmodel_store as dms
    from edgeprune.latency.predicted import fit_device_model
    from edgeprune.latency.settings import ProfileSettings, layer_timing
    from edgeprune.latency.store import LUTStore, table_key
    from edgeprune.latency.suite import suite_points

    target = get_target("host")
    lanes = target.fp32_lanes()
    key = table_key(target, LOCAL, "onnxruntime", target.num_cores(), layer_timing(ProfileSettings(), "onnxruntime"))
    store = LUTStore(tmp_path)
    old = [p for p in suite_points(lanes, "tiny") if p.kind != "attention"]
    entries = {p.signature: LatencyEntry.from_rounds([1e-3 + p.macs / 1e8] * 3, 5) for p in old}
    LUTStore.save(store.path_for(key), key, entries)
    dms.update(store, key, lambda cur: dms.DeviceModelInfo(
        key=key, suite_version="1", suite_size="tiny", lanes=lanes, state="complete", suite_points=len(old),
        points_measured=len(old)))
    res = CliRunner().invoke(cli, ["device-model", "show", "-b", "onnxruntime", "--cache-dir", str(tmp_path),
                                   "--json"])
    assert res.exit_code == 0, res.output
    view = json.loads(res.stdout)
    assert view["stale_suite"] and view["unmeasured_kinds"] == ["attention"]
    res = CliRunner().invoke(cli, ["device-model", "show", "-b", "onnxruntime", "--cache-dir", str(tmp_path)])
    assert res.exit_code == 0 and "no points yet for: attention" in res.output, res.output
    dm, why = fit_device_model(store, key, store.load(key).entries, lanes, LOCAL, lambda m: None)
    assert dm is not None and not why and "attention" not in dm.kinds()
    assert not dm.predict(attn(16, 16, heads=2).signature()).known_kind
    assert dm.predict(next(p.signature for p in old if p.kind == "conv")).known_kind


@pytest.mark.parametrize("which", ["vit-sep", "vit-mha", "regnet"])
def test_every_point_a_real_prune_space_asks_for_is_whole_units_and_builds(which):
    """The spaces the pruner traces (head groups of a ViT, conv groups of a RegNet-like
    net): every layer point their table asks for at a pruned width is a multiple of the
    group's unit and builds into a graph that runs (with the heads / groups of that width)."""
    import torch
    from families import build, example_input
    from transformer_models import TinyViT

    from edgeprune.latency import lut
    from edgeprune.prune.graph import build_space

    if which == "regnet":
        net, x = build("regnet"), example_input()
    else:
        net, x = TinyViT("sep" if which == "vit-sep" else "mha").eval(), torch.randn(1, 3, 16, 16)
    space = build_space(net, [x])
    special = [l for l in space.layers if l.kind == "attention" or l.group_width]
    assert special
    table = lut.LatencyTable(space, {}, GridSettings(lanes=8))
    points = [(t.family.layer, p) for t in table.tables.values() for p in t.missing]
    _assert_units(space, table, [p for _, p in points])
    built = 0
    for layer, p in points:
        if layer.kind != "attention" and not layer.group_width:
            continue
        (y,) = _session(layer_model(layer, p.cin, p.cout)).run(
            None, dict(zip(["q", "k", "v"] if layer.kind == "attention" else ["x"], make_inputs(layer, p.cin))))
        assert y.shape[1 if layer.kind == "conv" else -1] == p.cout
        built += p.cin < layer.in_channels
    assert built >= 2  # pruned widths, not only the full one
