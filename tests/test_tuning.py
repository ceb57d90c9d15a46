"""MetaSchedule tuning: records written once, reused by every later build (no second tune),
shared with a pruned model through same-shape kernels, and refused where it cannot measure.

The default suite tunes a one-kernel model with a handful of trials (about a minute on
the 2-core host); ``-m slow`` adds the CLI on digits-cnn, the time budget and measuring
through a TVM RPC tracker.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgeprune.cli import cli
from edgeprune.compile.backends import get_backend
from edgeprune.compile.backends.tvm import (RpcSettings, TaskInfo, TuneReport, TuneSettings, TuningDatabase,
                                           TuningError, check_measurable, records_for, tune_model, tuning_root)
from edgeprune.compile.backends.tvm.lag import focus_kernels, kernel_lag_us, set_lag
from edgeprune.compile.backends.tvm.plan import fit_first_round
from edgeprune.compile.backends.tvm.records import target_key
from edgeprune.config.targets import get_target
from edgeprune.durations import parse_duration

#: small and quick: every kernel gets one batch, the search population is tiny
QUICK = dict(population=32, trials_per_iter=4)


def conv_net(path: Path, channels: list[int], seed: int = 0) -> Path:
    """Conv3x3+ReLU layers on a 1x3x16x16 input; channels[i] = output channels of layer i."""
    rng = np.random.default_rng(seed)
    nodes, inits, c_in, x = [], [], 3, "input"
    for i, c in enumerate(channels):
        w = (rng.standard_normal((c, c_in, 3, 3)) / np.sqrt(9 * c_in)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x, c_in = f"r{i}", c
    nodes.append(helper.make_node("Identity", [x], ["output"]))
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, c_in, 16, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def run_tvm(so: Path, x: np.ndarray) -> np.ndarray:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(so)), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def run_ort(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


@pytest.fixture
def tuning_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "tuning"
    monkeypatch.setenv("EDGEPRUNE_TUNING_DIR", str(d))
    monkeypatch.delenv("EDGEPRUNE_TVM_TUNING", raising=False)
    return d


# ---- tuning end to end (default suite: one kernel, 4 trials) --------------------------
def test_tune_writes_records_that_builds_reuse_without_tuning_again(tuning_dir, tmp_path, host_target):
    one = conv_net(tmp_path / "one.onnx", [8])
    db = TuningDatabase.for_target(host_target)
    assert db.path.parent == tuning_dir and db.path.name.startswith("host-")
    assert records_for(host_target) is None  # nothing tuned yet

    lines: list[str] = []
    first = tune_model(one, host_target, TuneSettings(trials=4, **QUICK), log=lines.append)
    assert first.stopped_by == "trials" and first.trials_run >= 4
    assert len(first.tasks) == 1 and first.tasks[0].name.startswith("fused_conv2d")
    task = first.tasks[0]
    assert task.trials_before == 0 and task.trials_after >= 1 and task.best_us and task.best_us > 0
    assert db.record_count() >= 1 and records_for(host_target) == db
    assert any("trials" in line and "best" in line for line in lines)  # progress was reported
    meta = json.loads((db.path / "edgeprune-tuning.json").read_text())
    assert meta["sessions"][-1]["trials"] == first.trials_run and meta["tvm_target"]["kind"] == "llvm"

    # the same budget again: resumes to the budget, which is already spent -> no tuning
    n_records = db.record_count()
    again = tune_model(one, host_target, TuneSettings(trials=4, **QUICK), log=lines.append)
    assert again.stopped_by == "already-tuned" and again.trials_run == 0 and db.record_count() == n_records

    # compile applies the records: tuned kernel, same outputs as ONNX Runtime, no tuning
    art = get_backend("tvm").build(one, host_target, tmp_path / "build1")
    assert art.options["kernels_tuned"] == [1, 1] and art.options["tuning_db"] == str(db.path)
    assert any("MetaSchedule records applied to 1 of 1 kernels" in n for n in art.notes)
    assert not any("untuned" in n for n in art.notes)
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(run_tvm(art.path, x), run_ort(one, x), atol=1e-4, rtol=1e-4)
    assert db.record_count() == n_records

    # a "pruned" model whose first layer kept its shape reuses that layer's records
    pruned = conv_net(tmp_path / "pruned.onnx", [8, 6], seed=3)
    art2 = get_backend("tvm").build(pruned, host_target, tmp_path / "build2")
    assert art2.options["kernels_tuned"] == [1, 2]
    np.testing.assert_allclose(run_tvm(art2.path, x), run_ort(pruned, x), atol=1e-4, rtol=1e-4)

    # records can be switched off per target (e.g. to benchmark the untuned build)
    off = host_target.model_copy(update={"backend_options": {"tvm": {"tuning": "off"}}})
    art3 = get_backend("tvm").build(one, off, tmp_path / "build3")
    assert "kernels_tuned" not in art3.options and any("untuned" in n for n in art3.notes)


# ---- cheap checks (no tuning) --------------------------------------------------------
def test_cross_target_tuning_without_a_device_is_refused_with_the_reason():
    for name in ("rpi4", "jetson-orin-nano", "mali-g610"):
        with pytest.raises(TuningError) as err:
            check_measurable(get_target(name), None)
        msg = str(err.value)
        assert f"cannot tune for target '{name}'" in msg and "wrong processor" in msg and "--rpc-tracker" in msg
    assert check_measurable(get_target("host"), None) == "local"
    rpc = RpcSettings("10.0.0.2:9190", "rpi4")
    assert check_measurable(get_target("rpi4"), rpc) == "rpc://10.0.0.2:9190/rpi4"


def test_cli_refuses_cross_target_tune_before_any_work(tuning_dir):
    res = CliRunner().invoke(cli, ["tune", "--model", "zoo:digits-cnn", "--target", "rpi4", "--trials", "10"])
    assert res.exit_code == 5
    assert "cannot tune for target 'rpi4'" in res.output and "rpc_server" in res.output
    assert "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["tune", "--model", "zoo:digits-cnn", "--rpc-tracker", "h:9190"])
    assert res.exit_code == 2 and "go together" in res.output


def test_target_keys_separate_hardware_and_are_stable(host_target):
    keys = {target_key(get_target(n)) for n in ("host", "x86-avx2", "rpi4", "jetson-orin-nano", "mali-g610")}
    assert len(keys) == 5
    assert target_key(host_target) == target_key(get_target("host"))
    fewer_cores = get_target("x86-avx2").model_copy(update={"cores": 2})
    assert target_key(fewer_cores) != target_key(get_target("x86-avx2"))


def test_tuning_database_location_and_switches(tmp_path, monkeypatch, host_target):
    monkeypatch.delenv("EDGEPRUNE_TUNING_DIR", raising=False)
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(tmp_path / "cache"))
    assert tuning_root() == tmp_path / "cache" / "tuning"
    monkeypatch.setenv("EDGEPRUNE_TUNING_DIR", str(tmp_path / "t"))
    assert tuning_root() == tmp_path / "t"
    db = TuningDatabase.for_target(host_target)
    db.path.mkdir(parents=True)
    db.record_file.write_text('[0, [[], [1e-05], {"kind": "llvm"}, []]]\n')
    assert records_for(host_target) == db
    monkeypatch.setenv("EDGEPRUNE_TVM_TUNING", "off")
    assert records_for(host_target) is None
    monkeypatch.setenv("EDGEPRUNE_TVM_TUNING", str(tmp_path / "elsewhere"))
    assert records_for(host_target) is None  # an empty directory has no records


def test_one_tune_per_database_at_a_time(tmp_path):
    db = TuningDatabase(tmp_path / "db")
    with db.exclusive():
        with pytest.raises(TuningError, match="being written by pid"):
            with db.exclusive():
                pass
    with db.exclusive():  # released
        pass


def test_unusable_records_do_not_stop_a_build(tuning_dir, tmp_path, host_target):
    db = TuningDatabase.for_target(host_target)
    db.path.mkdir(parents=True)
    db.workload_file.write_text("not json\n")
    db.record_file.write_text("[0, half a reco\n")
    art = get_backend("tvm").build(conv_net(tmp_path / "m.onnx", [4]), host_target, tmp_path / "b")
    assert art.path.exists() and any("could not be applied" in n and "built untuned" in n for n in art.notes)


def test_cli_status_lists_kernels_without_tuning(tuning_dir, tmp_path):
    model = conv_net(tmp_path / "m.onnx", [8, 16])
    res = CliRunner().invoke(cli, ["tune", "--model", str(model), "--status", "--json", "--out", str(tmp_path / "o")],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["stopped_by"] == "status" and rep["trials_run"] == 0 and len(rep["tasks"]) == 2
    assert all(t["trials_after"] == 0 and t["flop"] > 0 for t in rep["tasks"])
    res = CliRunner().invoke(cli, ["tune", "--model", str(model), "--status", "--out", str(tmp_path / "o")])
    assert "fused_conv2d" in res.output and "no records yet" in res.output


def test_short_time_budget_tunes_the_heaviest_kernels_first():
    infos = [TaskInfo("reshape", 1, 0.0), TaskInfo("conv_a", 2, 1e7), TaskInfo("pool", 1, 1e4),
             TaskInfo("conv_b", 1, 3e7), TaskInfo("dense", 1, 1e5)]
    kept, skipped = fit_first_round([0, 1, 2, 3, 4], infos, budget_s=400, batch_s=100)
    assert [infos[i].name for i in kept] == ["conv_a", "conv_b"] and len(skipped) == 3
    assert fit_first_round([0, 1, 2, 3, 4], infos, budget_s=3600, batch_s=100) == ([0, 1, 2, 3, 4], [])


@pytest.mark.parametrize("text,seconds", [("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("90s", 90), ("45", 45),
                                          ("1.5h", 5400)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_bad_duration_is_a_usage_error():
    res = CliRunner().invoke(cli, ["tune", "--model", "zoo:digits-cnn", "--time-budget", "soon"])
    assert res.exit_code == 2 and "not a duration" in res.output


# ---- slow: the real thing -------------------------------------------------------------
@pytest.mark.slow
def test_cli_tune_then_compile_digits_uses_records(tuning_dir, tmp_path):
    res = CliRunner().invoke(cli, ["tune", "--model", "zoo:digits-cnn", "--target", "host", "--trials", "48",
                                   "--out", str(tmp_path / "t"), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["stopped_by"] == "trials" and rep["trials_run"] >= 44 and len(rep["tasks"]) >= 8
    res = CliRunner().invoke(cli, ["tune", "--model", "zoo:digits-cnn", "--trials", "48", "--out", str(tmp_path / "t"),
                                   "--json"], catch_exceptions=False)
    assert json.loads(res.stdout)["stopped_by"] == "already-tuned"
    res = CliRunner().invoke(cli, ["compile", "--model", "zoo:digits-cnn", "--backend", "tvm", "--out",
                                   str(tmp_path / "c"), "--min-runs", "5", "--min-time", "0.05", "--json"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    tvm = json.loads(res.stdout)["backends"][0]
    assert tvm["verified"] is True and any("MetaSchedule records applied" in n for n in tvm["notes"])


@pytest.mark.slow
def test_time_budget_stops_tuning(tuning_dir, tmp_path, host_target):
    model = conv_net(tmp_path / "m.onnx", [16, 16, 16])
    rep = tune_model(model, host_target, TuneSettings(time_budget_s=30, population=32, trials_per_iter=4))
    assert rep.stopped_by == "time-budget" and rep.trials_run >= 4
    assert rep.seconds < 30 + 240  # one batch of overrun, plus start-up, on a busy 2-core host


@pytest.mark.slow
def test_tuning_measures_through_an_rpc_tracker(tuning_dir, tmp_path, host_target):
    from edgeprune.bench.rpc import loopback_farm

    model = conv_net(tmp_path / "m.onnx", [8])
    with loopback_farm(("host-cpu",)) as tracker:
        rep = tune_model(model, host_target, TuneSettings(trials=4, rpc=RpcSettings(str(tracker), "host-cpu"),
                                                          **QUICK))
    assert rep.measured_on == f"rpc://{tracker}/host-cpu" and rep.trials_total >= 1


@pytest.mark.slow
def test_tuning_on_an_ssh_device_goes_through_a_tunnelled_rpc_server(tuning_dir, tmp_path):
    """`tune --device <ssh device>`: the board runs a TVM RPC server reached through the SSH session."""
    from edgeprune.bench.loopback import LoopbackSSHD, find_sshd

    if find_sshd() is None:
        pytest.skip("OpenSSH sshd not installed")
    model = conv_net(tmp_path / "m.onnx", [8])
    with LoopbackSSHD(tmp_path / "sshd") as sshd:
        devices = sshd.devices_yaml([sshd.device("lab-1", workdir=str(tmp_path / "remote"))], tmp_path / "devices.yaml")
        res = CliRunner().invoke(cli, ["tune", "--model", str(model), "--target", "host", "--device", "lab-1",
                                       "--devices", str(devices), "--trials", "4", "--out", str(tmp_path / "o"),
                                       "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["measured_on"].startswith("ssh://lab-1") and rep["trials_total"] >= 1


@pytest.mark.slow
def test_tuning_on_the_emulated_arm_board_keeps_records_apart(tuning_dir, tmp_path):
    """rpi4 through SSH to the qemu board: it works end to end, and because emulated timings
    are meaningless the records land in a separate database that real rpi4 builds never use."""
    import os
    import shutil

    cache = Path(os.environ.get("EDGEPRUNE_CACHE", "/var/cache/edgeprune"))
    devices = cache / "emulated-rpi4.devices.yaml"
    if not devices.exists() or shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("no emulated ARM board (scripts/emulated-device.sh rpi4 build)")
    import socket

    try:
        socket.create_connection(("127.0.0.1", int(os.environ.get("EDGEPRUNE_EMULATED_PORT", "2222"))), 1).close()
    except OSError:
        pytest.skip("the emulated board is not running (scripts/emulated-device.sh rpi4 start)")
    model = conv_net(tmp_path / "m.onnx", [8])
    res = CliRunner().invoke(cli, ["tune", "--model", str(model), "--target", "rpi4", "--device", "emulated-rpi4",
                                   "--devices", str(devices), "--trials", "4", "--out", str(tmp_path / "o"), "--json"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["database"].endswith("-emulated") and rep["trials_total"] >= 1
    assert records_for(get_target("rpi4")) is None


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_stops_tuning_cleanly_and_keeps_the_records(tuning_dir, tmp_path, sig):
    """A KeyboardInterrupt inside MetaSchedule's callbacks is swallowed by its C++ loop, so
    Ctrl-C (or SIGTERM from a CI limit) must be turned into a clean stop at the next batch
    (records kept; the library returns, the CLI then exits 128 + the signal).
    Small batches (4 candidates, population 32) keep this to well under a minute."""
    import os
    import signal
    import subprocess
    import sys

    signum = getattr(signal, sig)

    model = conv_net(tmp_path / "two.onnx", [8, 12])
    env = dict(os.environ, EDGEPRUNE_TUNING_DIR=str(tuning_dir))
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from edgeprune.compile.backends.tvm import TuneSettings, tune_model\n"
        "from edgeprune.config.targets import get_target\n"
        "rep = tune_model(Path(sys.argv[1]), get_target('host'),\n"
        "                 TuneSettings(trials=400, population=32, trials_per_iter=4))\n"
        "print(json.dumps(rep.to_dict()))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(model)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    for line in proc.stderr:  # wait until the first batch has been measured and recorded
        seen.append(line)
        if "measured, best" in line:  # a progress line: a batch was measured and recorded
            proc.send_signal(signum)
            break
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, "".join(seen) + err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["stopped_by"] == "interrupted" and 0 < report["trials_run"] < 400
    assert report["stop_signal"] == signum
    assert sig in err and TuningDatabase.for_target(get_target("host")).record_count() >= 1


def test_focus_picks_the_kernels_that_lag_the_models_best_flop_rate():
    # conv_a and conv_b run at 200 MFLOP/ms; the stem has as many FLOPs but takes 1.5x as long
    infos = [TaskInfo("conv_a", 2, 2e8, best_us=1000.0), TaskInfo("conv_b", 1, 2e8, best_us=1000.0),
             TaskInfo("stem", 1, 2e8, best_us=1500.0), TaskInfo("reshape", 1, None, best_us=1.0),
             TaskInfo("tiny", 1, 1e5, best_us=50.0), TaskInfo("new", 1, 1e7)]
    lags = kernel_lag_us(infos)
    assert lags[0] == lags[1] == 0.0 and lags[2] == pytest.approx(500.0)
    assert lags[3] is None and lags[4] == pytest.approx(49.5) and lags[5] == float("inf")
    kept, skipped = focus_kernels(list(range(6)), infos, 2)
    assert [infos[i].name for i in kept] == ["stem", "new"] and len(skipped) == 4
    rep = TuneReport("m", "host", "db", infos, None, None)
    set_lag(infos)
    assert rep.to_dict()["tasks"][5]["lag_us"] is None  # strict JSON, no Infinity
