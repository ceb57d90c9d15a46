"""Latency tables: layer graphs, staircase detection, the predictor, storage, profiling
with real backends through the bundle runner, and `edgeprune profile`."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import random
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeprune.latency.grid import GridSettings, Staircase
from edgeprune.latency.layers import input_shapes, layer_model, make_inputs
from edgeprune.latency.entry import LatencyEntry
from edgeprune.latency.lut import LatencyTable
from edgeprune.latency.points import complete_table
from edgeprune.latency.predictor import LatencyPredictor, ModelMeasurements, VariantMeasurement
from edgeprune.latency.store import LUTStore, StaleTableError, TableKey
from edgeprune.prune.space import PrunableLayer, PruneGroup, PruneSpace

TINY = "tests.lut_models:tiny_cnn"
FAST = ["--density", "coarse", "--rounds", "2", "--calibration-variants", "2"]


# ---- helpers -----------------------------------------------------------------------------
def chain_space(n_layers: int = 20, width: int = 64, hw: int = 14) -> PruneSpace:
    """A plain conv chain: layer i reads group g{i-1} and writes group g{i}."""
    groups = {f"g{i}": PruneGroup(f"g{i}", width, (f"c{i}",)) for i in range(n_layers)}
    layers = [PrunableLayer(f"c{i}", "conv", 3 if i == 0 else width, width, None if i == 0 else f"g{i - 1}", f"g{i}",
                            kernel=(3, 3), padding=(1, 1), input_hw=(hw, hw)) for i in range(n_layers)]
    return PruneSpace(groups, layers)


def staircase_ms(ci: int, co: int) -> float:
    """Synthetic latency: input blocks of 8, output blocks of 16 (a CPU-like staircase)."""
    return 0.01 + 1e-4 * (8 * math.ceil(ci / 8)) * (16 * math.ceil(co / 16))


def fill(space: PruneSpace, grid: GridSettings, fn=staircase_ms, noise=None):
    """Run the real planning loop with a fake device that returns ``fn``."""
    entries: dict[str, LatencyEntry] = {}
    asked: list[str] = []

    def measure(points, remeasure):
        for p in points:
            asked.append(p.signature)
            v = fn(p.cin, p.cout) * (noise(p) if noise else 1.0)
            old = entries.get(p.signature)
            entries[p.signature] = old.merged([v, v], 2) if (old and remeasure) else LatencyEntry.from_rounds([v, v, v], 3)
        return {}

    table, failures = complete_table(space, entries, grid, measure)
    assert not failures
    return table, entries, asked


def calibrated(space, table, fn=lambda s: 1.1 * s + 0.05):
    full = space.full_widths()
    base = LatencyPredictor(space, table)
    rng = random.Random(0)
    variants = []
    for _ in range(4):
        w = {g: rng.choice(base.candidates(g)) for g in full}
        variants.append(VariantMeasurement(w, LatencyEntry.from_rounds([fn(base.layer_sum(w))], 1)))
    meas = ModelMeasurements("fp", "synthetic", LatencyEntry.from_rounds([fn(base.layer_sum(full))], 1), variants)
    return LatencyPredictor(space, table, meas)


# ---- standalone layer graphs -------------------------------------------------------------------
@pytest.mark.parametrize("layer,cin,cout,out_shape", [
    (PrunableLayer("c", "conv", 16, 16, kernel=(3, 3), stride=(2, 2), padding=(1, 1), input_hw=(9, 9)), 12, 10, (1, 10, 5, 5)),
    (PrunableLayer("d", "conv", 16, 16, kernel=(3, 3), padding=(1, 1), input_hw=(8, 8), depthwise=True), 11, 11, (1, 11, 8, 8)),
    (PrunableLayer("l", "linear", 32, 8, rows=5), 20, 7, (5, 7)),
    (PrunableLayer("r", "lstm", 8, 16, rows=2, seq_len=6), 8, 12, (6, 1, 2, 12)),
    (PrunableLayer("g", "gru", 8, 16, rows=2, seq_len=6), 5, 9, (6, 1, 2, 9)),
])
def test_layer_graphs_run_in_onnxruntime_with_their_real_shapes(layer, cin, cout, out_shape):
    import onnxruntime as ort

    model = layer_model(layer, cin, cout)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (x,) = make_inputs(layer, cin)
    assert x.shape == input_shapes(layer, cin)[0]
    (y,) = sess.run(None, {"x": x})
    assert y.shape == out_shape and np.isfinite(y).all()


# ---- staircase detection (synthetic, exact) ---------------------------------------------------
def test_staircase_is_found_and_never_interpolated_across():
    space = chain_space(2, width=64)
    grid = GridSettings(lanes=8)
    table, entries, asked = fill(space, grid)
    t = table.table("c1")
    out, inp = t.axes["out"], t.axes["in"]
    # near the full width ("dense near kept sizes") every step is located exactly (its fast side)
    assert {32, 48} <= set(out.steps())
    assert {32, 40, 48, 56} <= set(inp.steps())
    # near the full width every width is known, and exact: no value comes from across a step
    for c in range(grid.fine_from(1, 64), 65):
        assert out.known(c) and inp.known(c)
        assert t.ms(64, c) == pytest.approx(staircase_ms(64, c), rel=1e-9)
        assert t.ms(c, 64) == pytest.approx(staircase_ms(c, 64), rel=1e-9)
    # on the 2-D lattice (what pruning uses), within the coarse grid, the table is exact too
    for ci in range(16, 65, 8):
        for co in range(16, 65, 8):
            assert t.ms(ci, co) == pytest.approx(staircase_ms(ci, co), rel=0.02)
    # far cheaper than measuring every (cin, cout)
    assert len(set(asked)) < 0.1 * 64 * 64


def test_candidates_are_the_fast_side_of_the_steps():
    space = chain_space(3, width=64)
    table, _, _ = fill(space, GridSettings(lanes=8))
    pred = LatencyPredictor(space, table)
    # g1 feeds c2's input (blocks of 8) and is c1's output (blocks of 16): a width of 8k+8
    # inside a 16-block costs the same in c1 as 16k+16 but saves in c2 -> all multiples of 8
    assert pred.candidates("g1") == [8, 16, 24, 32, 40, 48, 56, 64]
    out_only = PruneSpace({"g": PruneGroup("g", 64)}, [PrunableLayer("c", "conv", 32, 64, None, "g", kernel=(3, 3),
                                                                     padding=(1, 1), input_hw=(14, 14))])
    t2, _, _ = fill(out_only, GridSettings(lanes=8))
    assert LatencyPredictor(out_only, t2).candidates("g") == [16, 32, 48, 64]


def test_staircase_unconfirmed_interval_is_refined_not_trusted():
    # a step hidden between two anchors that agree: the a+1 probe reveals it
    pts = {48: 1.0, 49: 1.6, 56: 1.6, 64: 1.6}
    st = Staircase(1, 64, pts, tol=0.04)
    assert st.known(52) and st.known(60)  # 49..64 is one plateau
    assert 48 in st.steps()
    bad = Staircase(1, 64, {40: 1.0, 48: 1.0, 56: 1.0, 57: 1.7, 64: 1.0}, tol=0.04)
    assert not bad.known(60) and bad.refinement(budget=50)  # 57..64 is not one step: measure inside


def test_noisy_spike_is_measured_again():
    space = chain_space(2, width=32)
    hits = {"n": 0}

    def noise(p):  # one point is hit by a burst of load the first time only
        if p.cin == 32 and p.cout == 24 and hits["n"] == 0:
            hits["n"] += 1
            return 1.8
        return 1.0

    table, entries, asked = fill(space, GridSettings(lanes=8), noise=noise)
    sig = space.layers[1].signature(32, 24)
    assert asked.count(sig) >= 2  # re-measured
    assert entries[sig].ms == pytest.approx(staircase_ms(32, 24))  # median of rounds drops the burst


def test_points_an_interruption_cut_short_are_completed_not_measured_again():
    """A point timed in only some of its rounds (``partial``: the rounds it still owes) is
    completed first, with those rounds only, before the plan moves on; never re-measured
    from scratch, and never judged noisy on its few rounds."""
    from edgeprune.latency.points import cut_short, needed, noisy

    space = chain_space(2, width=32)
    grid = GridSettings(lanes=8)
    table, entries, _ = fill(space, grid)
    done = dict(entries)
    sigs = sorted(entries)[:3]
    for k in sigs:  # an interrupted run kept one round of these
        entries[k] = LatencyEntry.from_rounds([entries[k].rounds[0] * 1.5], 10, partial=2)
    # and had not reached this one yet
    missing = next(k for k in sorted(done) if k not in sigs)
    del entries[missing]
    table = LatencyTable(space, entries, grid)
    assert sorted(p.signature for p in cut_short(table)) == sigs
    assert sorted(p.signature for p in needed(table)) == sorted(sigs + [missing])  # no refinement yet
    assert sorted(p.signature for p in needed(table, skip=sigs)) == [missing]
    assert not {p.signature for p in noisy(table)} & set(sigs)
    asked: list[tuple[str, bool]] = []

    def measure(points, remeasure):
        for p in points:
            asked.append((p.signature, remeasure))
            old = entries.get(p.signature)
            if old is not None and old.partial:
                entries[p.signature] = old.completed(done[p.signature].rounds[:old.partial], 20)
            else:
                entries[p.signature] = done[p.signature]
        return {}

    final, failures = complete_table(space, entries, grid, measure)
    assert not failures and final.complete
    assert sorted(asked) == sorted((k, False) for k in sigs + [missing])  # each once, nothing else
    for k in sigs:
        e = entries[k]
        assert not e.partial and e.remeasured == 0 and len(e.rounds) == 3 and e.runs == 30
    # the mark survives the table file, and a rescale (a concurrent profiler's unit)
    e = LatencyEntry.from_rounds([1.0], 5, partial=2)
    assert LatencyEntry.from_dict(e.to_dict()).partial == 2 and e.rescaled(2.0).partial == 2
    assert "partial" not in LatencyEntry.from_rounds([1.0, 1.1], 5).to_dict()


def test_an_interrupted_bundle_keeps_its_finished_series_with_the_rounds_they_owe():
    from edgeprune.bench.bundle import BenchJob, JobResult
    from edgeprune.bench.measure import Bundle
    from edgeprune.latency.layer_bundle import REFERENCE_KEY, LayerBundle
    from edgeprune.latency.series import fold

    from edgeprune.latency.layer_bundle import Job

    keys = [REFERENCE_KEY, "a", "b", "c"]
    ids = ["0.r0.0", "1.r0", "2.r0", "3.r0", "0.r0.1", "0.r1.0", "2.r1", "1.r1", "3.r1", "0.r1.1"]
    jobs = [BenchJob(id=i, backend="onnxruntime", artifact="x", inputs="y") for i in ids]
    lb = LayerBundle(Bundle(Path("."), jobs), keys=keys,
                     jobs={k: Job(k, write_onnx=print, inputs=list, input_key="") for k in keys})
    # stopped in round 2, after "b"; "c" failed in round 1 (the runner was stopped inside its series)
    done = {"0.r0.0": 1.0, "1.r0": 2.0, "2.r0": 3.0, "0.r0.1": 1.0, "0.r1.0": 1.0, "2.r1": 3.1}
    results = {i: JobResult(id=i, ok=True, times_ms=[m]) for i, m in done.items()}
    results["3.r0"] = JobResult(id="3.r0", ok=False, error="stopped")
    f = fold(lb, results, asked=2)
    assert f.timings["a"].rounds == [2.0] and f.timings["a"].short == 1
    assert f.timings["b"].rounds == [3.0, 3.1] and f.timings["b"].short == 0
    assert "c" not in f.timings and f.timings[REFERENCE_KEY].short == 0
    assert fold(lb, results).timings["a"].short == 0  # a bundle that ran to its end owes nothing


# ---- predictor -------------------------------------------------------------------------------
def test_predictor_is_fast_enough_for_search_loops():
    space = chain_space(20, width=64)
    table, _, _ = fill(space, GridSettings(lanes=8))
    pred = calibrated(space, table)
    rng = random.Random(1)
    configs = [{g: rng.randint(8, 64) for g in space.groups} for _ in range(500)]
    configs += [{g: rng.choice(pred.candidates(g)) for g in space.groups} for _ in range(1500)]
    t0 = time.perf_counter()
    for w in configs:
        pred.predict(w)
    rate = len(configs) / (time.perf_counter() - t0)
    assert rate >= 1000, f"{rate:.0f} predictions/s"


def test_predictor_calibration_is_chosen_from_measurements():
    space = chain_space(4, width=32)
    table, _, _ = fill(space, GridSettings(lanes=8))
    pred = calibrated(space, table, fn=lambda s: 1.3 * s)  # the remainder scales with the sum
    assert pred.calibration.method in ("proportional", "linear")
    w = {g: 16 for g in space.groups}
    assert pred.predict(w) == pytest.approx(1.3 * pred.layer_sum(w), rel=1e-6)
    pred2 = calibrated(space, table, fn=lambda s: s + 0.2)  # a constant remainder
    assert pred2.calibration.method in ("additive", "linear")
    assert pred2.predict(w) == pytest.approx(pred2.layer_sum(w) + 0.2, rel=1e-6)


# ---- storage -----------------------------------------------------------------------------------
def _key(**kw) -> TableKey:
    d = dict(target="host", target_fingerprint="abc", device="local", backend="onnxruntime",
             backend_version="1.32.0", threads=2)
    d.update(kw)
    return TableKey(**d)


def _writer(root: str, who: int) -> None:
    store = LUTStore(Path(root))
    key = _key()
    for i in range(15):
        store.save(store.path_for(key), key, {f"sig-{who}-{i}": LatencyEntry.from_rounds([1.0 + i], 1)},
                   reference={"signature": "ref", "ms": 0.5})


def test_concurrent_writers_lose_nothing_and_files_are_never_half_written(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = LUTStore(tmp_path)
    tf = store.load(_key())
    assert len(tf.entries) == 45
    assert not list(tmp_path.rglob("*.tmp"))


def test_stale_table_is_never_used_silently(tmp_path):
    store = LUTStore(tmp_path)
    old = _key(backend_version="1.31.0")
    store.save(store.path_for(old), old, {"sig": LatencyEntry.from_rounds([1.0], 1)})
    messages: list[str] = []
    tf = store.load(_key(), log=messages.append)  # a new backend version: nothing reused, and said so
    assert tf.entries == {}
    assert any("stale" in m and "1.31.0" in m for m in messages)
    with pytest.raises(StaleTableError, match="1.31.0"):  # pinned by the user: an error
        store.load_pinned(store.path_for(old), _key())
    # the same backend version but measured for another target (CPU, features, options...)
    other = _key(target_fingerprint="zzz")
    store.save(store.path_for(other), other, {"sig": LatencyEntry.from_rounds([1.0], 1)})
    messages.clear()
    assert store.load(_key(), log=messages.append).entries == {}
    with pytest.raises(StaleTableError, match="target fingerprint"):
        store.load_pinned(store.path_for(other), _key())
    # kernel-timed and wall-clock tables never mix
    messages.clear()
    assert store.load(_key(timing="kernel"), log=messages.append).entries == {}
    assert any("timing 'wall' (now 'kernel')" in m for m in messages)


def test_tables_written_before_timing_modes_are_wall_clock_and_keep_their_names():
    d = _key().to_dict()
    del d["timing"]
    old = TableKey.from_dict(d)
    assert old.timing == "wall" and old == _key()
    assert old.filename == "onnxruntime-1.32.0-t2-abc.json"
    assert _key(timing="kernel").filename == "onnxruntime-1.32.0-t2-kernel-abc.json"


def test_layer_points_are_kernel_timed_where_the_runtime_has_node_counters():
    from edgeprune.errors import ConfigError
    from edgeprune.latency.series import series_ms
    from edgeprune.latency.settings import ProfileSettings, layer_timing

    auto = ProfileSettings()
    assert layer_timing(auto, "onnxruntime") == "kernel"
    assert layer_timing(auto, "openvino") == "wall"  # its counters are running averages (settings.py)
    assert layer_timing(auto, "tvm") == "wall"
    assert layer_timing(ProfileSettings(timing="wall"), "openvino") == "wall"
    with pytest.raises(ConfigError, match="tvm has no per-run node counters"):
        layer_timing(ProfileSettings(timing="kernel"), "tvm")
    with pytest.raises(ConfigError, match="unknown timing"):
        layer_timing(ProfileSettings(timing="cpu"), "openvino")
    # counters tick in whole microseconds: a kernel series is its interquartile mean, not a 1-us step
    ticks = [0.010] * 6 + [0.011] * 4 + [0.050]
    assert series_ms(ticks, "wall") == 0.010 and 0.010 < series_ms(ticks, "kernel") < 0.011


# ---- real backends, through the bundle runner ----------------------------------------------------
@pytest.fixture(scope="module")
def tiny_profile(tmp_path_factory):
    """`edgeprune profile` on a tiny CNN with ONNX Runtime, with --validate, --out, --plot."""
    from edgeprune.cli import cli

    root = tmp_path_factory.mktemp("lut")
    args = ["profile", "--model", TINY, "--backend", "onnxruntime", "--cache-dir", str(root / "cache"), *FAST,
            "--validate", "--variants", "3", "--out", str(root / "v.json"), "--plot", "--plot-dir", str(root / "png"),
            "--db", str(root / "results.sqlite")]  # module scope: before the conftest's per-test $EDGEPRUNE_DB
    t0 = time.perf_counter()
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    return res, root, args, time.perf_counter() - t0


def test_profile_cli_measures_validates_and_plots(tiny_profile):
    res, root, _, _ = tiny_profile
    assert res.exit_code == 0, res.output
    data = json.loads((root / "v.json").read_text())
    for k in ("median_abs_pct_error", "p95_abs_pct_error", "within_10pct", "variants"):
        assert k in data
    assert len(data["variants"]) == 3
    v = data["variants"][0]
    assert v["measured_ms"] > 0 and v["predicted_ms"] > 0 and "widths" in v
    # measured = variant / unpruned model (same rounds) x unpruned model at profiling; the other views are kept.
    # The unpruned model is each round's anchor, timed before every variant and after the last (pairs, not
    # a shared mean); a series the steady gate marked unsteady is dropped: one job may keep fewer rounds
    anchors = len(data["variants"]) + 1
    assert len(data["full_rounds_ms"]) == anchors * len(v["rounds_ms"]) or data["unsteady_series"] > 0
    for k in ("median_abs_pct_error", "within_10pct"):
        assert k in data["raw"] and k in data["reference_unit"] and k in data["flops_predictor"]
    assert v["raw_measured_ms"] > 0 and v["unit_measured_ms"] > 0
    prof = data["profile"]
    assert prof["points_measured"] > 0 and prof["model_measured"]
    assert prof["predictor"]["calibration"]["method"] in ("additive", "activation", "proportional", "overhead",
                                                          "linear")
    assert prof["key"]["timing"] == "kernel"  # ONNX Runtime has per-node counters
    pngs = sorted(p.name for p in (root / "png").glob("*.png"))
    assert pngs == ["conv1.png", "conv2.png", "fc.png"]
    tables = list((root / "cache").rglob("onnxruntime-*.json"))
    assert len(tables) == 1 and json.loads(tables[0].read_text())["format"] == "edgeprune-lut"


def test_second_profile_reuses_the_cached_table_and_measures_nothing(tiny_profile):
    from edgeprune.cli import cli

    _, root, _, _ = tiny_profile
    res = CliRunner().invoke(cli, ["profile", "--model", TINY, "--backend", "onnxruntime", "--cache-dir",
                                   str(root / "cache"), *FAST, "--out", str(root / "again.json")],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    prof = json.loads((root / "again.json").read_text())["profile"]
    assert prof["points_measured"] == 0 and prof["bundles"] == 0 and not prof["model_measured"]
    assert prof["points_reused"] == prof["points_used"] > 0


def test_pinned_stale_table_is_an_error(tiny_profile, tmp_path):
    from edgeprune.cli import cli

    _, root, _, _ = tiny_profile
    (table,) = list((root / "cache").rglob("onnxruntime-*.json"))
    d = json.loads(table.read_text())
    d["key"]["backend_version"] = "0.0.1"
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps(d))
    res = CliRunner().invoke(cli, ["profile", "--model", TINY, "--backend", "onnxruntime", "--lut", str(stale)])
    assert res.exit_code != 0
    assert "0.0.1" in res.output and "Traceback" not in res.output


def test_openvino_table_is_measured_with_openvino(tmp_path):
    from edgeprune.config.devices import LOCAL
    from edgeprune.config.targets import get_target
    from edgeprune.flows.profile import profile_model
    from edgeprune.latency.settings import ProfileSettings
    from edgeprune.latency.variants import space_of
    from edgeprune.models.spec import load_model

    model = load_model(TINY)
    target = get_target("host")
    space = space_of(model)
    space.layers = [l for l in space.layers if l.name == "conv2"]  # one table keeps OpenVINO builds few
    s = ProfileSettings(grid=GridSettings(lanes=target.fp32_lanes(), density="coarse"), rounds=1, warmup=1,
                        min_runs=3, min_time_s=0.002, model_rounds=1, model_min_time_s=0.02, calibration_variants=0)
    r = profile_model(model, target, LOCAL, "openvino", s, LUTStore(tmp_path), space=space, log=lambda m: None)
    assert r.key.backend == "openvino" and r.points_measured > 0
    assert r.key.timing == "wall" and "-kernel-" not in r.table_path.name  # PERF_COUNT is a running average
    assert r.predictor.predict(model_widths := r.predictor.space.full_widths()) == pytest.approx(
        r.predictor.calibration.full_ms)
    assert all(r.predictor.candidates(g)[-1] == r.predictor.space.groups[g].size for g in model_widths)


def test_an_ssh_device_is_profiled_through_the_same_runner(tmp_path):
    """Remote-ready: a board over SSH (here a real sshd on a loopback port) is profiled
    with no profiler-specific code: the same bundles go through the SSH executor."""
    import shutil

    from edgeprune.bench.loopback import LoopbackSSHD, find_sshd
    from edgeprune.config.targets import get_target
    from edgeprune.flows.profile import profile_model
    from edgeprune.latency.settings import ProfileSettings
    from edgeprune.latency.variants import space_of
    from edgeprune.models.spec import load_model

    if find_sshd() is None or shutil.which("ssh-keygen") is None:
        pytest.skip("OpenSSH sshd not installed (apt-get install openssh-server; `make test` does)")
    model = load_model(TINY)
    target = get_target("host")
    space = space_of(model)
    space.layers = [l for l in space.layers if l.name == "fc"]
    s = ProfileSettings(grid=GridSettings(lanes=target.fp32_lanes(), density="coarse"), rounds=1, warmup=1,
                        min_runs=3, min_time_s=0.002, model_rounds=1, model_min_time_s=0.02, calibration_variants=0)
    with LoopbackSSHD(tmp_path / "sshd") as sshd:
        device = sshd.device("lut-board")
        r = profile_model(model, target, device, "onnxruntime", s, LUTStore(tmp_path / "cache"), space=space,
                          log=lambda m: None)
    assert r.key.device == "lut-board" and r.points_measured > 0 and r.bundles > 0
    assert r.table_path.parent.name == "lut-board"


def test_every_point_is_timed_between_two_reference_series():
    """The reference is timed REFERENCE_PER_ROUND times per round, spread through it, so one
    slow moment cannot rescale a bundle and each point has a reference a few jobs away."""
    from edgeprune.bench.bundle import BenchJob, JobResult
    from edgeprune.latency.layer_bundle import REFERENCE_KEY
    from edgeprune.latency.series import local_references

    keys = [REFERENCE_KEY, "a", "b"]
    ids = ["0.r0.0", "1.r0", "0.r0.1", "2.r0", "0.r0.2"]
    jobs = [BenchJob(id=i, backend="onnxruntime", artifact="x", inputs="y") for i in ids]
    med = {"0.r0.0": 1.0, "1.r0": 5.0, "0.r0.1": 3.0, "2.r0": 7.0, "0.r0.2": 2.0}
    results = [JobResult(id=i, ok=True, times_ms=[m]) for i, m in med.items()]
    assert local_references(jobs, results, keys) == {"1.r0": 2.0, "2.r0": 2.5}
    results[2] = JobResult(id="0.r0.1", ok=False, error="crashed")  # a failed reference series is skipped
    assert local_references(jobs, results, keys) == {"1.r0": 1.5, "2.r0": 1.5}


def test_a_point_is_the_fast_state_of_its_rounds_and_an_unconfirmed_one_is_noisy():
    """This host's slow state adds time to multi-threaded work (benchmarks/host_noise.py):
    the value is the median of the rounds within 10 % of the fastest, whatever the majority saw."""
    from edgeprune.latency.entry import LatencyEntry, robust_ms

    assert robust_ms([4.0, 6.7, 6.8, 4.1, 6.6]) == pytest.approx(4.05)  # the majority was slow
    assert robust_ms([1.0, 1.05, 1.08]) == pytest.approx(1.05)  # one state: the plain median
    confirmed = LatencyEntry.from_rounds([0.266, 0.314, 0.27], runs=30)
    unconfirmed = LatencyEntry.from_rounds([0.266, 0.314, 0.318], runs=30)
    assert confirmed.spread == pytest.approx(0.004 / 0.268, rel=1e-6)
    assert unconfirmed.spread == pytest.approx(0.048 / 0.266, rel=1e-6)  # the gap to the next round


def test_a_points_unsteady_series_are_dropped_only_when_a_steady_one_exists():
    from edgeprune.bench.bundle import JobResult
    from edgeprune.latency.series import keep_steady

    def res(ms, state):
        env = {"timing": {"gate": {"state": state}}} if state else {}
        return JobResult(id="0.r0", ok=True, times_ms=[ms], env=env)

    kept, dropped, unsteady = keep_steady([res(1.0, "steady"), res(1.4, "unsteady"), res(1.02, "steady")])
    assert [r.times_ms[0] for r in kept] == [1.0, 1.02] and dropped == unsteady == 1
    kept, dropped, unsteady = keep_steady([res(1.4, "unsteady"), res(1.5, "unsteady")])
    assert len(kept) == 2 and dropped == 0 and unsteady == 2  # never lose a point to the gate
    assert keep_steady([res(1.0, None)])[0][0].times_ms == [1.0]  # no gate: everything counts
