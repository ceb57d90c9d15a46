"""``edgeprune device-model build / show``: the calibration suite measured into the
context's latency table, resumable, with its sidecar; grouped convs timed as grouped.

Real ONNX Runtime through the on-device runner on the tiny suite (~40 points of a few
ms), a real SIGINT to a real ``edgeprune device-model build`` subprocess, real files.
No timing is asserted: what was measured, kept and written is the proof.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeprune.cli import cli
from edgeprune.config.devices import LOCAL
from edgeprune.config.targets import get_target
from edgeprune.latency import devmodel_store as dms
from edgeprune.latency.settings import ProfileSettings
from edgeprune.latency.store import LUTStore, read_table
from edgeprune.latency.suite import (MAX_MACS, SUITE_VERSION, is_holdout, kind_of, suite_points)
from edgeprune.prune.space import PrunableLayer

REPO = Path(__file__).resolve().parents[1]
#: a few short series per point: the tests check what is kept, not how fast it is
FAST = ProfileSettings(rounds=1, min_runs=3, min_time_s=0.005, warmup=1, gate=False)
SELECT = ["--suite-size", "tiny", "-b", "onnxruntime", "--no-steady-gate"]


def quiet(_msg: str) -> None:
    pass


def build(cache: Path, **kw):
    from edgeprune.flows.device_model import build_device_model

    return build_device_model(get_target("host"), LOCAL, "onnxruntime", kw.pop("settings", FAST),
                              store=LUTStore(cache), log=quiet, size="tiny", **kw)


def tiny_sigs() -> list[str]:
    return [p.signature for p in suite_points(get_target("host").fp32_lanes(), "tiny")]


# ------------------------------------------------------------------ grouped convs
def test_a_grouped_conv_has_its_own_signature_graph_and_macs():
    import onnxruntime as ort

    from edgeprune.latency.layers import layer_model, make_inputs

    dense = PrunableLayer("c", "conv", 32, 64, kernel=(3, 3), padding=(1, 1), input_hw=(8, 8))
    grouped = PrunableLayer("c", "conv", 32, 64, kernel=(3, 3), padding=(1, 1), input_hw=(8, 8), groups=4)
    dw = PrunableLayer("c", "conv", 32, 32, kernel=(3, 3), padding=(1, 1), input_hw=(8, 8), depthwise=True)
    assert dense.signature() == "conv-i32-o64-k3x3-s1x1-p1x1-d1x1-hw8x8-dense-b"  # unchanged by the new field
    assert dw.signature().endswith("-dw-b")
    assert grouped.signature() == "conv-i32-o64-k3x3-s1x1-p1x1-d1x1-hw8x8-g4-b"
    assert PrunableLayer.split_signature(grouped.signature(16, 32)) == ("conv", 16, 32, "k3x3-s1x1-p1x1-d1x1-hw8x8-g4-b")
    assert grouped.macs(32, 64) * 4 == dense.macs(32, 64)
    assert kind_of(grouped.signature()) == "conv-grouped" and kind_of(dense.signature()) == "conv"

    model = layer_model(grouped, 32, 64)
    conv = model.graph.node[0]
    assert next(a.i for a in conv.attribute if a.name == "group") == 4
    assert list(model.graph.initializer[0].dims) == [64, 8, 3, 3]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": make_inputs(grouped, 32)[0]})
    assert y.shape == (1, 64, 8, 8)
    with pytest.raises(ValueError, match="multiples of 4"):
        layer_model(grouped, 30, 64)


def test_the_prune_space_times_a_grouped_conv_as_grouped():
    import torch
    from torch import nn

    from edgeprune.prune.graph import build_space

    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1, groups=4),
                        nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.ReLU(), nn.Conv2d(32, 8, 1))
    space = build_space(net, [torch.randn(1, 3, 16, 16)])
    layers = {layer.name: layer for layer in space.layers}
    assert layers["2"].groups == 4 and not layers["2"].depthwise
    # in == out channels: its conv groups are cut whole, so the groups follow the width (group width 8)
    assert layers["2"].group_width == 8 and "-gw8-" in layers["2"].signature() and layers["2"].groups_at(16) == 2
    assert layers["4"].depthwise and layers["4"].groups == 1
    assert layers["0"].groups == 1 and layers["0"].signature().endswith("-dense-b")
    assert layers["2"].macs(32, 32) == 16 * 16 * 32 * 9 * 8  # 8 inputs per output channel, not 32


def test_every_op_graph_runs_in_onnx_runtime():
    import onnxruntime as ort

    from edgeprune.latency.opshape import OP_NAMES, OpShape
    from edgeprune.latency.ops import make_inputs, op_job, op_model, output_shape

    params = {"maxpool": (("k", 3), ("st", 2), ("p", 1)), "avgpool": (("k", 2), ("st", 2)), "concat": (("n", 3),)}
    shapes = {"softmax": (2, 10), "attention": (1, 2, 7, 4), "transpose": (1, 3, 5)}
    for name in OP_NAMES:
        op = OpShape(name, shapes.get(name, (1, 8, 6, 6)), params.get(name, ()))
        sess = ort.InferenceSession(op_model(op).SerializeToString(), providers=["CPUExecutionProvider"])
        xs = make_inputs(op)
        (y,) = sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), xs)})
        assert y.shape == output_shape(op), name
        assert op_job(op, "kernel").key == op.signature()
    gate = OpShape("mulgate", (1, 4, 3, 3))
    x, g = make_inputs(gate)
    (y,) = ort.InferenceSession(op_model(gate).SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x0": x, "x1": g})
    assert np.allclose(y, x / (1 + np.exp(-g)), atol=1e-5)


# ------------------------------------------------------------------ the suite
def test_the_suite_is_deterministic_prioritised_and_covers_every_kind():
    from edgeprune.latency.opshape import OP_NAMES

    pts = suite_points(8)
    assert [p.signature for p in pts] == [p.signature for p in suite_points(8)]
    assert len({p.signature for p in pts}) == len(pts)
    assert 1500 <= len(pts) <= 3500  # ~10-20 min with ONNX Runtime here (docs/device-model.md)
    kinds = {p.kind for p in pts}
    assert {"conv", "conv-dw", "conv-grouped", "linear", "lstm", "gru"} <= kinds
    assert {f"op-{n}" for n in OP_NAMES if n != "mul"} <= kinds
    assert [p.tier for p in pts] == sorted(p.tier for p in pts)  # priority order
    assert {p.kind for p in pts if p.tier == 0} >= {"conv", "conv-dw", "linear", "lstm", "gru", "op-add"}
    assert all(p.macs <= MAX_MACS for p in pts)
    assert all(kind_of(p.signature) == p.kind for p in pts)
    held = [p for p in pts if p.holdout]
    assert 0.05 * len(pts) < len(held) < 0.3 * len(pts)
    assert all(p.holdout == is_holdout(p.signature) for p in pts)
    convs = [p for p in pts if p.layer is not None and p.layer.kind == "conv"]
    assert {p.layer.kernel[0] for p in convs} == {1, 3, 5, 7} and {p.layer.stride[0] for p in convs} == {1, 2}
    assert {g for p in convs if p.layer.groups > 1 for g in [p.cin // p.layer.groups]} == {8, 16, 32}
    assert any(p.cin % 8 for p in convs) and any(p.cin % 8 == 4 for p in convs)  # off the lattice
    # a staircase sweep: every cout of three lane steps at one fixed 3x3 conv, for the target's lanes
    for lanes in (8, 16):
        sweep = {p.cout for p in suite_points(lanes) if p.signature.startswith("conv-i64-")
                 and "-k3x3-s1x1-p1x1-d1x1-hw28x28-dense" in p.signature}
        assert set(range(64 - lanes + 1, 64 + 2 * lanes + 1)) <= sweep, lanes
    lin = [p for p in pts if p.kind == "linear"]
    assert {1, 49, 64, 197} <= {p.layer.rows for p in lin} and max(p.cout for p in lin) == 4096
    with pytest.raises(ValueError, match="suite size"):
        suite_points(8, "huge")


# ------------------------------------------------------------------ build, resume, show
def test_a_build_stopped_by_its_budget_resumes_and_a_rebuild_measures_nothing(tmp_path):
    cache = tmp_path / "lut"
    order = tiny_sigs()
    first = build(cache, time_budget_s=2.0)
    table = read_table(first.table_path)
    done = [s for s in order if s in table.entries]
    assert done == order[: len(done)]  # measured in priority order
    if first.stopped_by_budget:
        assert first.info.state == "budget" and first.remaining == len(order) - len(done)
        assert first.info.points_measured == len(done)

    second = build(cache)
    assert second.measured == len(order) - len(done) and second.cached == len(done)
    assert second.info.state == "complete" and not second.stopped_by_budget and second.remaining == 0
    table = read_table(second.table_path)
    assert set(order) <= set(table.entries)
    info = dms.read_info(dms.sidecar_path(second.table_path))
    assert info.suite_version == SUITE_VERSION and info.suite_size == "tiny" and info.builds == 2
    assert info.points_measured == info.suite_points == len(order)
    assert sum(k["measured"] for k in info.points_by_kind.values()) == len(order)
    assert info.build_seconds >= first.info.build_seconds
    assert info.busy["state"] in ("quiet", "busy") and info.busy["max"] >= info.busy["median"] >= 0
    assert {"lattice", "smooth"} <= set(info.holdout) and info.holdout["holdout_points"] >= 3
    assert info.fit["points"] >= len(order) - 1
    assert not LUTStore(cache).stale_tables(second.info.key)  # the sidecar is not taken for a stale table

    third = build(cache)
    assert third.measured == third.completed == 0 and third.cached == len(order)
    again = dms.read_info(dms.sidecar_path(third.table_path))
    assert again.builds == 3 and again.fitted_on == info.fitted_on and again.holdout == info.holdout
    assert read_table(third.table_path).entries.keys() == table.entries.keys()

    res = CliRunner().invoke(cli, ["device-model", "show", "-b", "onnxruntime", "--cache-dir", str(cache), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["device_model"] == json.loads(dms.sidecar_path(third.table_path).read_text())
    assert dms.DeviceModelInfo.from_dict(doc["device_model"]).to_dict() == doc["device_model"]
    assert doc["suite_measured_now"] == len(order) and not doc["stale_suite"]
    res = CliRunner().invoke(cli, ["device-model", "show", "-b", "onnxruntime", "--cache-dir", str(cache)])
    assert res.exit_code == 0 and "state: complete" in res.stdout and "lattice" in res.stdout, res.output


def finished_lines(tmp: Path) -> int:
    n = 0
    for p in tmp.glob("lut-bundle-*/results.jsonl"):
        try:
            n += p.read_bytes().count(b"\n")
        except OSError:  # the bundle was just removed
            continue
    return n


def test_an_interrupted_build_keeps_its_points_and_the_next_build_resumes(tmp_path):
    cache, tmp = tmp_path / "lut", tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "edgeprune.cli", "device-model", "build", *SELECT,
                             "--cache-dir", str(cache)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=REPO)
    # one bundle of 3 rounds of ~40 points (+ the reference): stop it in its second round
    t0 = time.monotonic()
    while finished_lines(tmp) < 55:
        if proc.poll() is not None:
            pytest.fail(f"the build ended before it was stopped: {proc.stderr.read()}")
        if time.monotonic() - t0 > 240:
            proc.kill()
            pytest.fail("no point measured within 240 s")
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted (SIGINT)" in stderr, stderr
    assert "suite point(s) measured by this build kept" in stderr, stderr

    (path,) = [p for p in cache.rglob("onnxruntime-*.json") if not p.name.endswith(dms.SIDECAR_SUFFIX)]
    kept = read_table(path).entries
    assert kept and set(kept) <= set(tiny_sigs())
    assert f"{len(kept)} suite point(s) measured by this build kept" in stderr
    info = dms.read_info(dms.sidecar_path(path))
    assert info.state == "interrupted" and info.builds == 1 and not info.fit

    # the same context (default timing and threads), quicker series: it resumes
    resumed = build(cache, settings=ProfileSettings(rounds=1, min_runs=3, min_time_s=0.005, warmup=1, gate=False))
    short = [k for k, e in kept.items() if e.partial]
    assert resumed.cached == len(kept) - len(short) and resumed.completed == len(short)
    assert resumed.measured == len(tiny_sigs()) - len(kept)
    final = read_table(path).entries
    assert not any(e.partial for e in final.values())
    for k, e in kept.items():  # what the interrupted build kept is kept, completed where it was cut
        assert final[k].rounds[: len(e.rounds)] == e.rounds
    after = dms.read_info(dms.sidecar_path(path))
    assert after.state == "complete" and after.builds == 2 and after.build_seconds > info.build_seconds


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("value,why", [("soon", "is not a duration"), ("0", "must be > 0"), ("nan", "is not a duration")])
def test_a_bad_time_budget_is_one_line_and_exit_2(value, why, tmp_path):
    res = CliRunner().invoke(cli, ["device-model", "build", *SELECT, "--cache-dir", str(tmp_path),
                                   "--time-budget", value])
    assert res.exit_code == 2, res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "--time-budget" in errors[0] and why in errors[0], res.stderr
    assert "Traceback" not in res.output and not any(tmp_path.iterdir())


def test_show_without_a_device_model_or_with_a_corrupt_one_is_one_line(tmp_path):
    args = ["device-model", "show", "-b", "onnxruntime", "--cache-dir", str(tmp_path)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 3 and res.stderr.startswith("Error: no device model for host"), res.output
    assert "device-model build" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    from edgeprune.latency.settings import layer_timing
    from edgeprune.latency.store import table_key

    key = table_key(get_target("host"), LOCAL, "onnxruntime", get_target("host").num_cores(),
                    layer_timing(ProfileSettings(), "onnxruntime"))
    side = dms.sidecar_path(LUTStore(tmp_path).path_for(key))
    side.parent.mkdir(parents=True)
    side.write_text('{"format": "edgeprune-device-model", "version": 1, "key": ')
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 3 and "is not valid JSON" in res.stderr and "Traceback" not in res.output, res.output
