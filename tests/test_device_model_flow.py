"""The device latency model in use: a model profiled with ``--tables model`` measures only
what it needs, an unreachable budget is refused before any measurement, the pruned model
is timed end to end against the budget, and measurements taken in another machine state
are measured again instead of trusted.

Everything is measured for real with ONNX Runtime through the bundle runner, on the
tests' tiny calibration suite (``size="tiny"``) and tiny models, with short series.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from edgeprune.config.devices import LOCAL
from edgeprune.latency.entry import LatencyEntry
from edgeprune.latency.grid import GridSettings
from edgeprune.latency.settings import ProfileSettings
from edgeprune.latency.store import LUTStore

TINY = "tests.lut_models:tiny_cnn"
SMALL = "tests.lut_models:small_cnn"  # compute-bound: pruning moves its latency


def fast(target, **kw) -> ProfileSettings:
    base = dict(grid=GridSettings(lanes=target.fp32_lanes(), density="coarse"), rounds=1, warmup=1, min_runs=3,
                min_time_s=0.003, model_rounds=2, model_min_runs=3, model_min_time_s=0.02, calibration_variants=2,
                gate=False, profile_budget_s=60.0)
    return ProfileSettings(**{**base, **kw})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A device model of this host built from the tiny suite into its own cache."""
    from edgeprune.config.targets import get_target
    from edgeprune.flows.device_model import build_device_model

    root = tmp_path_factory.mktemp("devmodel")
    target = get_target("host")
    store = LUTStore(root / "lut")
    build_device_model(target, LOCAL, "onnxruntime", fast(target), store=store, size="tiny", log=lambda m: None)
    return target, root


def _fresh_store(built, tmp_path) -> LUTStore:
    """A copy of the built cache, so each test starts from the device model alone."""
    import shutil

    _, root = built
    shutil.copytree(root / "lut", tmp_path / "lut")
    return LUTStore(tmp_path / "lut")


def _entries(store: LUTStore) -> dict:
    (path,) = [p for p in store.root.rglob("*.json") if not p.name.endswith(".device-model.json")]
    return json.loads(path.read_text())


def test_a_new_model_is_profiled_from_the_device_model_with_few_points(built, tmp_path):
    from edgeprune.flows.profile import profile_model
    from edgeprune.models.spec import load_model

    target, _ = built
    model = load_model(TINY)
    logs: list[str] = []
    r = profile_model(model, target, LOCAL, "onnxruntime", fast(target), _fresh_store(built, tmp_path),
                      log=logs.append)
    full = profile_model(model, target, LOCAL, "onnxruntime", fast(target, tables="full"),
                         LUTStore(tmp_path / "full"), log=lambda m: None)
    assert r.tables == "model" and full.tables == "full"
    assert 0 < r.points_measured < full.points_measured, (r.points_measured, full.points_measured)
    assert r.device_model and r.device_model["points"] > 0
    d = r.to_dict()
    assert d["table_source"] == "model" and d["profile_seconds"] > 0
    # every layer is answered; a measured point is answered as measured
    widths = r.predictor.space.full_widths()
    assert math.isfinite(r.predictor.predict(widths)) and r.predictor.predict(widths) > 0
    for layer in r.predictor.space.layers:
        t = r.table.table(layer.name)
        ci, co = layer.dims(widths)
        e = r.table.entries.get(t.family.layer.signature(ci, co))
        assert e is not None, f"{layer.name} was not measured at full width (an anchor)"
        assert t.ms(ci, co) == pytest.approx(e.ms)
    assert any("device model: measuring" in m for m in logs)


def test_without_a_device_model_the_full_table_is_measured_and_the_run_says_so(tmp_path, host_target):
    from edgeprune.flows.profile import profile_model
    from edgeprune.models.spec import load_model

    logs: list[str] = []
    r = profile_model(load_model(TINY), host_target, LOCAL, "onnxruntime", fast(host_target), LUTStore(tmp_path),
                      log=logs.append)
    assert r.tables == "full"
    assert any("no device model" in n and "device-model build" in n for n in r.notes)
    assert any("no device model" in m for m in logs)


def test_an_unreachable_budget_is_refused_before_anything_is_measured(built, tmp_path):
    from edgeprune.errors import PruneError
    from edgeprune.flows.prune import prune_model
    from edgeprune.models.spec import load_model

    target, _ = built
    store = _fresh_store(built, tmp_path)
    before = _entries(store)["entries"].keys()
    with pytest.raises(PruneError, match="before measuring anything") as exc:
        prune_model(load_model(TINY), target, LOCAL, budget=0.01, progress=False, log=lambda m: None,
                    store=store)
    assert "use a budget of at least" in (exc.value.hint or "")
    assert _entries(store)["entries"].keys() == before  # not one point measured


def test_the_pruned_model_is_timed_against_the_budget(built, tmp_path):
    """0.8, not lower: the fixed part of a 0.1 ms model puts its narrowest widths at ~0.67x
    here, and a budget below that is refused before the search (the next test but one)."""
    from edgeprune.flows.prune import prune_model
    from edgeprune.models.spec import load_model

    target, _ = built
    res = prune_model(load_model(SMALL), target, LOCAL, budget=0.8, importance="l1", finetune_epochs=0,
                      progress=False, log=lambda m: None, store=_fresh_store(built, tmp_path),
                      allow_budget_miss=True)
    check = res.budget_check
    assert check is not None and check["attempts"], check
    assert 0 < check["measured_fraction"] < 1.5
    assert check["met"] == (check["measured_fraction"] <= 0.8 * (1 + check["tolerance"]))
    assert res.to_dict()["measured_fraction"] == check["measured_fraction"]
    assert any("latency budget" in n for n in res.notes)


def test_a_check_too_close_to_call_is_timed_again_and_its_rounds_pooled(built, tmp_path):
    """A verdict waits for a clear measurement: when the 90 % interval of the paired ratios
    contains the line the verdict turns on, the same widths are timed again (rounds pooled,
    one check replacing the other), at most VERIFY_BUNDLES times; a line far outside the
    interval is decided on the first timing. Real ONNX Runtime timings of a pruned variant."""
    from edgeprune.bench.stats import median_interval
    from edgeprune.flows.budget import VERIFY_BUNDLES, _clear_check
    from edgeprune.flows.profile import profile_model
    from edgeprune.models.spec import load_model

    target, _ = built
    model = load_model(SMALL)
    lm = profile_model(model, target, LOCAL, "onnxruntime", fast(target, model_rounds=3),
                       _fresh_store(built, tmp_path), log=lambda m: None).adaptive
    widths = {g: max(1, w // 2) for g, w in lm.space.full_widths().items() if lm.space.groups[g].prunable}
    first = lm.verify(widths)
    assert first.bundles == 1 and len(first.ratios) == 3
    lo, hi = first.interval()
    assert (lo, hi) == median_interval(first.ratios) and lo <= first.fraction <= hi

    logs: list[str] = []
    clear = _clear_check(lm, widths, (100.0,), logs.append)  # no interval reaches 100x the full model
    assert clear.bundles == 1 and not logs

    n_checks = len(lm.checks)
    lines = tuple(i / 1000 for i in range(1, 5000))  # lines every 0.001x: one falls inside any interval
    pooled = _clear_check(lm, widths, lines, logs.append)
    assert 2 <= pooled.bundles <= VERIFY_BUNDLES and len(pooled.ratios) == 3 * pooled.bundles
    assert len(lm.checks) == n_checks + 1  # the pooled timings are one check
    assert logs and "timing it again" in logs[0]
    assert pooled.to_dict()["rounds"] == len(pooled.ratios)


def test_a_missed_budget_fails_the_run_with_the_pruning_exit_code_and_keeps_the_result(built, tmp_path):
    """A latency model that believes every pruned width costs a tenth of what it does: the
    search keeps nearly every channel, its choice is timed on the device and misses by far
    more than the timing noise of a 0.1 ms model (measured fractions of a near-full choice
    spread 0.6-1.1 here); with no retry allowed the run fails with the pruning exit code
    (8) and the result is kept. The device measurements are real. (With retries, the
    measured miss scales the search budget and the next choice is measured again:
    ``searches`` counts them.)"""
    from edgeprune.flows.profile import profile_model
    from edgeprune.flows.prune import prune_model
    from edgeprune.latency.adaptive import AdaptiveLatency
    from edgeprune.models.spec import load_model
    from edgeprune.prune.options import PruneGateError

    class Optimist(AdaptiveLatency):
        def predict(self, widths):
            full = self.space.full_widths()
            real = super().predict(widths)
            return real if dict(widths) == full else 0.1 * real

    target, _ = built
    model = load_model(SMALL)
    r = profile_model(model, target, LOCAL, "onnxruntime", fast(target), _fresh_store(built, tmp_path),
                      log=lambda m: None)
    a = r.adaptive
    liar = Optimist(model, a.space, a.make_table, a.measurements, a.fingerprint, a.recorder, a.measurer, a.settings,
                    a.log)
    with pytest.raises(PruneGateError, match="latency budget missed") as exc:
        prune_model(model, latency_model=liar, budget=0.35, importance="l1", finetune_epochs=0, progress=False,
                    log=lambda m: None, budget_retries=0)
    assert exc.value.exit_code == 8
    check = exc.value.result.budget_check
    assert check["met"] is False and len(check["attempts"]) == 1, check
    assert check["attempts"][0]["measured_fraction"] > 0.35 * 1.05 > check["attempts"][0]["predicted_fraction"]
    assert exc.value.result.module is not None  # everything produced is kept for the caller to write


def test_a_retry_with_no_widths_left_ends_on_the_measured_choice_instead_of_losing_it(built, tmp_path):
    """After a miss the corrected latency model can believe no widths reach the scaled
    search budget (measured on a 0.3 ms MobileNetV3-Small). The loop then stops on the
    choice it already measured: the run fails with the pruning exit code and keeps that
    result, instead of raising "could not meet the budget" with nothing. Here a latency
    model that turns pessimistic once it has learned a variant stands in for that
    correction; the device measurements are real."""
    from edgeprune.flows.profile import profile_model
    from edgeprune.flows.prune import prune_model
    from edgeprune.latency.adaptive import AdaptiveLatency
    from edgeprune.models.spec import load_model
    from edgeprune.prune.options import PruneGateError

    class Sobered(AdaptiveLatency):
        learned = False

        def learn(self, check):
            super().learn(check)
            self.learned = True

        def predict(self, widths):
            full = self.space.full_widths()
            real = super().predict(widths)
            if dict(widths) == full:
                return real
            return 10.0 * real if self.learned else 0.1 * real

    target, _ = built
    model = load_model(SMALL)
    a = profile_model(model, target, LOCAL, "onnxruntime", fast(target), _fresh_store(built, tmp_path),
                      log=lambda m: None).adaptive
    lm = Sobered(model, a.space, a.make_table, a.measurements, a.fingerprint, a.recorder, a.measurer, a.settings,
                 a.log)
    logs: list[str] = []
    with pytest.raises(PruneGateError, match="latency budget missed") as exc:
        prune_model(model, latency_model=lm, budget=0.35, importance="l1", finetune_epochs=0, progress=False,
                    log=logs.append, budget_retries=2)
    assert exc.value.exit_code == 8
    check = exc.value.result.budget_check
    assert check["met"] is False and len(check["attempts"]) == 1, check  # the one measured choice, kept
    assert any("no widths fit the corrected search budget" in m for m in logs), logs
    assert exc.value.result.module is not None


def test_cached_model_measurements_taken_busy_are_measured_again_on_a_quiet_device(built, tmp_path):
    """Measured busy, reused quiet: measured again, not trusted as quiet."""
    from edgeprune import host
    from edgeprune.flows.profile import profile_model
    from edgeprune.latency.predicted import is_busy
    from edgeprune.models.spec import load_model

    target, _ = built
    store = _fresh_store(built, tmp_path)
    model = load_model(TINY)
    profile_model(model, target, LOCAL, "onnxruntime", fast(target), store, log=lambda m: None)
    (path,) = [p for p in store.root.rglob("*.json") if not p.name.endswith(".device-model.json")]
    data = json.loads(path.read_text())
    if is_busy(host.busy_cores()):
        pytest.skip("this host is busy now: a busy measurement is what it would take again")
    for m in data["models"].values():
        m["full"]["busy"] = 64.0  # as if other work had kept every CPU busy
    path.write_text(json.dumps(data))
    logs: list[str] = []
    r = profile_model(model, target, LOCAL, "onnxruntime", fast(target), store, log=logs.append)
    assert r.model_measured, "busy measurements were reused as if quiet"
    assert any("measuring them again" in m for m in logs)


def test_validation_remeasures_the_calibration_when_the_machine_drifted(built, tmp_path):
    from edgeprune.flows.profile import profile_model
    from edgeprune.flows.validate import validate
    from edgeprune.models.spec import load_model

    target, _ = built
    store = _fresh_store(built, tmp_path)
    model = load_model(TINY)
    s = fast(target)
    profile_model(model, target, LOCAL, "onnxruntime", s, store, log=lambda m: None)
    (path,) = [p for p in store.root.rglob("*.json") if not p.name.endswith(".device-model.json")]
    data = json.loads(path.read_text())
    for m in data["models"].values():  # the profile "ran" on a machine 3x slower
        m["full"]["rounds"] = [r * 3 for r in m["full"]["rounds"]]
        for v in m["variants"]:
            v["rounds"] = [r * 3 for r in v["rounds"]]
    path.write_text(json.dumps(data))
    r = profile_model(model, target, LOCAL, "onnxruntime", s, store, log=lambda m: None)
    logs: list[str] = []
    rep = validate(model, r, target, LOCAL, "onnxruntime", n=3, settings=s, log=logs.append)
    assert rep.recalibrated_drift is not None and rep.recalibrated_drift < 0.6
    assert any("measuring" in m and "calibration again" in m for m in logs)
    assert rep.to_dict()["points_measured"] is not None


def test_predicted_widths_near_a_measured_point_follow_its_correction():
    """Pure arithmetic of the predicted table: one measured point 30 % above the device
    model fixes the level of its family near it, and is answered exactly itself."""
    from edgeprune.latency.devmodel import DeviceModel
    from edgeprune.latency.predicted import PredictedLayerTable, PredictedTable
    from edgeprune.prune.space import PrunableLayer, PruneGroup, PruneSpace

    def conv(ci: int, co: int, hw: int = 14) -> PrunableLayer:
        return PrunableLayer("c", "conv", ci, co, kernel=(3, 3), padding=(1, 1), input_hw=(hw, hw))

    # a smooth, known latency surface (ms ~ MACs) sampled on a grid: the device model's data
    entries = {}
    for hw in (7, 14, 28):
        for ci in (16, 32, 48, 64, 96, 128):
            for co in (16, 32, 48, 64, 96, 128):
                L = conv(ci, co, hw)
                entries[L.signature()] = LatencyEntry.from_rounds([1e-6 * L.macs(ci, co) + 0.01], runs=3)
    dm = DeviceModel.fit(entries, lanes=8)
    # at 10x10, a size between the fitted ones: the family's only measured point is the one below
    layer = dataclasses.replace(conv(128, 128, hw=10), name="c", in_group=None, out_group="g")
    space = PruneSpace(groups={"g": PruneGroup("g", 128, ("c",), min_size=8)}, layers=[layer])
    plain = PredictedTable(space, {}, dm, GridSettings(lanes=8)).table("c")
    assert isinstance(plain, PredictedLayerTable)
    measured = dict(entries)
    sig = layer.signature(128, 128)
    measured[sig] = LatencyEntry.from_rounds([1.3 * plain.ms(128, 128)], runs=3)
    t = PredictedTable(space, measured, dm, GridSettings(lanes=8)).table("c")
    assert t.ms(128, 128) == pytest.approx(measured[sig].ms)
    assert t.ms(120, 128) / plain.ms(120, 128) == pytest.approx(1.3, rel=0.05)  # near: corrected
    assert t.uncertainty(128, 128) == 0.0 and t.uncertainty(120, 128) < plain.uncertainty(120, 128)


def test_a_board_over_ssh_builds_its_device_model_with_the_same_runner(tmp_path):
    """Remote-ready: the calibration suite goes through the SSH executor like any bundle
    (a real sshd on a loopback port), and the device model is stored under the board."""
    import shutil

    from edgeprune.bench.loopback import LoopbackSSHD, find_sshd
    from edgeprune.config.targets import get_target
    from edgeprune.flows.device_model import build_device_model
    from edgeprune.latency import devmodel_store

    if find_sshd() is None or shutil.which("ssh-keygen") is None:
        pytest.skip("OpenSSH sshd not installed (apt-get install openssh-server; `make test` does)")
    target = get_target("host")
    store = LUTStore(tmp_path / "cache")
    with LoopbackSSHD(tmp_path / "sshd") as sshd:
        device = sshd.device("dm-board")
        b = build_device_model(target, device, "onnxruntime", fast(target), store=store, size="tiny",
                               log=lambda m: None)
    assert b.measured > 0 and b.table_path.parent.name == "dm-board"
    info = devmodel_store.find(store, b.info.key)
    assert info is not None and info.key.device == "dm-board"

