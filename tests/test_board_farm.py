"""A device model built over a board farm: several loopback sshd "boards" of one kind.

Real OpenSSH, paramiko, the on-device runner and ONNX Runtime, the tests' tiny suite. The
boards share this host's 2 CPUs, so each is pinned to one (devices.yaml ``cpu_affinity``,
applied by the runner): ``a`` and ``c`` share CPU 0 and one workdir (so one board lock:
they take turns, as two runs of one board would), ``b`` has CPU 1. One board is made
slower by a real throttle: a process that stops its runner 1 ms out of every 1.5 ms
(SIGSTOP / SIGCONT, what a CPU quota does in the kernel). It runs at real-time priority
so it acts on time; without that, the scheduler lets the runner run whole time slices
between its stops, and the tables' fast-state estimator rightly sees through a slowdown
that leaves fast series (a competing busy process on the board's core does exactly that
here: autogroup scheduling gives an SSH session's runner whole slices). No timing is
asserted: what was split, recorded, flagged and kept out is the proof.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeprune.bench.loopback import LoopbackSSHD, find_sshd, free_port
from edgeprune.cli import cli
from edgeprune.config.targets import get_target
from edgeprune.latency import devmodel_store as dms
from edgeprune.latency.settings import ProfileSettings
from edgeprune.latency.store import LUTStore, read_table
from edgeprune.latency.suite import suite_points

REPO = Path(__file__).resolve().parents[1]
KIND = "loop"
#: short series: the tests check what is split and kept, not how fast anything is
FAST = ProfileSettings(rounds=1, min_runs=3, min_time_s=0.005, warmup=1, gate=False, threads=1, timing="wall")
CLI = ["--kind", KIND, "--suite-size", "tiny", "-b", "onnxruntime", "--no-steady-gate", "--threads", "1",
       "--timing", "wall"]

ssh_only = pytest.mark.skipif(find_sshd() is None or shutil.which("ssh-keygen") is None,
                              reason="OpenSSH sshd not installed (apt-get install openssh-server; `make test` does)")

#: stops every process whose command line holds $MARK (the slow board's workdir) STOP_S
#: out of every STOP_S + RUN_S seconds; prints "rt" or "no-rt" once it knows its priority
THROTTLE = r"""
import os, signal, sys, time
mark, stop_s, run_s = os.environ["MARK"].encode(), float(sys.argv[1]), float(sys.argv[2])
me = os.getpid()
try:
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    print("rt", flush=True)
except (PermissionError, AttributeError, OSError):
    print("no-rt", flush=True)
pids, last = [], 0.0
def scan():
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != me:
            try:
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    if mark in f.read():
                        out.append(int(d))
            except OSError:
                pass
    return out
def send(sig):
    for p in pids:
        try:
            os.kill(p, sig)
        except OSError:
            pass
def end(*_):
    send(signal.SIGCONT)
    sys.exit(0)
signal.signal(signal.SIGTERM, end)
while True:
    send(signal.SIGSTOP)
    t = time.monotonic()
    if t - last > 0.02:  # new processes (each bundle run starts some), found while the known ones are stopped
        new = [p for p in scan() if p not in pids]
        pids += new
        last = t
        for p in new:
            try:
                os.kill(p, signal.SIGSTOP)
            except OSError:
                pass
    time.sleep(max(0.0, stop_s - (time.monotonic() - t)))
    send(signal.SIGCONT)
    time.sleep(run_s)
"""


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if find_sshd() is None or shutil.which("ssh-keygen") is None:
        pytest.skip("OpenSSH sshd not installed (apt-get install openssh-server; `make test` does)")
    with LoopbackSSHD(tmp_path_factory.mktemp("sshd")) as server:
        yield server


def two_cpus() -> tuple[int, int]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("the farm tests pin boards to two CPUs; this process may use one")
    return cpus[0], cpus[1]


def boards(sshd, root: Path, **extra):
    """a and c: the first CPU, one workdir (one board lock); b: the second CPU, its own."""
    c0, c1 = two_cpus()
    return [sshd.device("a", workdir=str(root / "ac"), board_kind=KIND, cpu_affinity=[c0], **extra),
            sshd.device("b", workdir=str(root / "b"), board_kind=KIND, cpu_affinity=[c1], **extra),
            sshd.device("c", workdir=str(root / "ac"), board_kind=KIND, cpu_affinity=[c0], **extra)]


def table_of(cache: Path) -> Path:
    (path,) = [p for p in cache.rglob("onnxruntime-*.json") if not p.name.endswith(dms.SIDECAR_SUFFIX)]
    return path


def tiny_sigs() -> set[str]:
    return {p.signature for p in suite_points(get_target("host").fp32_lanes(), "tiny")}


# ------------------------------------------------------------------ the check, alone
def test_the_overlap_check_flags_the_odd_board_from_the_measured_noise():
    import random

    from edgeprune.latency.overlap import compare_boards, overlap_points

    rnd = random.Random(7)
    pts = {f"p{i}": 0.05 * 2.2 ** i for i in range(8)}

    def board(noise, f=lambda v: v):
        return {k: f(v) * math.exp(rnd.gauss(0, noise)) for k, v in pts.items()}

    quiet = {b: board(0.02) for b in "abcd"}
    chk = compare_boards(quiet, quiet, {})
    assert not chk.excluded and not chk.refused and chk.tolerance >= 0.03
    slow = dict(quiet, b={k: 1.5 * v for k, v in quiet["b"].items()})  # uniformly slower: its speed says so
    chk = compare_boards(quiet, slow, {})
    assert chk.excluded == ["b"] and "1.5" in chk.boards["b"].why and chk.reference_board != "b"
    odd = dict(quiet, c=board(0.02, lambda v: v * (0.5 if v < 1 else 1.0)))  # short points off: reference units
    chk = compare_boards(odd, odd, {})
    assert chk.excluded == ["c"] and "reference units" in chk.boards["c"].why
    noisy = {b: board(0.25) for b in "abc"}  # a noisy farm gets a wider tolerance, not false alarms
    assert compare_boards(noisy, noisy, {}).tolerance > 3 * compare_boards(quiet, quiet, {}).tolerance
    two = {"a": quiet["a"], "b": {k: 1.4 * v for k, v in quiet["a"].items()}}
    chk = compare_boards(two, two, {})
    assert chk.excluded == ["b"] and chk.reference_board == "a"  # of two, the slower is kept out
    half = dict(quiet, a=board(0.02, lambda v: 2 * v), b=board(0.02, lambda v: 3 * v))
    assert compare_boards(half, half, {}).refused  # no majority: refused, not chosen
    ov = overlap_points(8, 6)
    assert len(ov) == 6 and len({p.kind for p in ov}) >= 4 and not any(p.holdout for p in ov)
    assert [p.signature for p in ov] == [p.signature for p in overlap_points(8, 6)]


def test_old_tables_and_sidecars_load_and_new_fields_round_trip():
    from edgeprune.latency.entry import LatencyEntry

    old = {"ms": 1.0, "rounds": [1.0, 1.1], "runs": 6, "measured": "2026-01-01T00:00:00+00:00", "scale": 1.0}
    e = LatencyEntry.from_dict(old)
    assert e.device == "" and "device" not in e.to_dict()
    assert LatencyEntry.from_dict(e.by("a").by("b").to_dict()).device == "a,b"
    key = {"target": "host", "target_fingerprint": "x", "device": "kind:loop", "backend": "onnxruntime",
           "backend_version": "1", "threads": 1, "timing": "wall"}
    side = {"format": dms.DM_FORMAT, "version": 1, "key": key, "suite_version": "1", "lanes": 8, "state": "complete"}
    info = dms.DeviceModelInfo.from_dict(side)
    assert info.farm == {} and "farm" not in info.to_dict()
    info.farm = {"kind": KIND, "boards": {"a": {"state": "used", "points": 3}}}
    assert dms.DeviceModelInfo.from_dict(info.to_dict()).farm == info.farm


def test_boards_are_chosen_by_kind_and_bad_choices_are_one_line(tmp_path):
    import yaml

    from edgeprune.config.devices import Device
    from edgeprune.flows.farm import select_boards

    devs = [Device(name="a", board_kind="k"), Device(name="b", board_kind="k"), Device(name="x", board_kind="j"),
            Device(name="y")]
    assert select_boards(devs, "k") == ("k", devs[:2])
    assert select_boards(devs, None, ["b", "a"]) == ("k", [devs[1], devs[0]])
    assert devs[0].table_device == "kind:k" and devs[3].table_device == "y"
    path = tmp_path / "devices.yaml"
    path.write_text(yaml.safe_dump({"devices": [{"name": "a", "board_kind": "k", "cpu_affinity": "0-1"},
                                                {"name": "y"}, {"name": "z", "board_kind": "j"}]}))
    for args, why in ((["--kind", "nope"], "no device of board kind 'nope'"),
                      (["-d", "a", "-d", "y"], "needs boards of one kind: y has no board_kind"),
                      (["-d", "a", "-d", "z"], "needs boards of one kind: they are of kinds j, k"),
                      (["--kind", "k", "-d", "z"], "are not of board kind 'k'")):
        res = CliRunner().invoke(cli, ["device-model", "build", "--devices", str(path), "--cache-dir",
                                       str(tmp_path / "lut"), *args])
        assert res.exit_code == 3, res.output
        assert res.stderr.startswith("Error: ") and why in res.stderr and "Traceback" not in res.output, res.stderr
    listing = CliRunner().invoke(cli, ["devices", "--devices", str(path)], terminal_width=200)
    assert listing.exit_code == 0, listing.output
    row_a = next(line for line in listing.output.splitlines() if " a " in f" {line} ")
    assert " k " in row_a and "0,1" in row_a, listing.output  # board kind and pinned CPUs are shown
    path.write_text(yaml.safe_dump({"devices": [{"name": "a", "cpu_affinity": "x"}]}))
    res = CliRunner().invoke(cli, ["device-model", "build", "--devices", str(path), "-d", "a"])
    assert res.exit_code == 3 and "cpu_affinity" in res.stderr and "Traceback" not in res.output, res.output


def test_a_farm_of_unreachable_boards_is_refused_before_any_work(tmp_path):
    import yaml

    dead = [{"name": n, "kind": "ssh", "host": "127.0.0.1", "port": free_port(), "connect_timeout_s": 2,
             "board_kind": KIND} for n in ("d1", "d2")]
    path = tmp_path / "devices.yaml"
    path.write_text(yaml.safe_dump({"devices": dead}))
    res = CliRunner().invoke(cli, ["device-model", "build", "--devices", str(path), "--cache-dir",
                                   str(tmp_path / "lut"), *CLI])
    assert res.exit_code == 7, res.output
    assert "none of the 2 board(s) can be reached" in res.stderr and "d1" in res.stderr and "d2" in res.stderr
    assert "Traceback" not in res.output and not (tmp_path / "lut").exists()


def test_the_runner_pins_itself_to_the_devices_cpus(sshd, tmp_path):
    import numpy as np

    from edgeprune.bench.bundle import BenchJob
    from edgeprune.bench.io import save_arrays
    from edgeprune.bench.measure import Bundle, measure_on
    from edgeprune.config.devices import Device
    from fixtures_models import tiny_matmul_onnx

    c0, c1 = two_cpus()
    for dev, cpu in ((Device(name="pinned", cpu_affinity=[c1]), c1),
                     (sshd.device("pinned-ssh", workdir=str(tmp_path / "w"), cpu_affinity=[c0]), c0)):
        folder = tmp_path / dev.name
        folder.mkdir()
        tiny_matmul_onnx(folder / "model.onnx")
        save_arrays(folder / "data" / "inputs.npz", "in", [np.ones((4, 64), np.float32)])
        job = BenchJob(id="j", backend="onnxruntime", artifact="model.onnx", inputs="data/inputs.npz", threads=1,
                       warmup=1, min_runs=3, min_time_s=0.01, max_time_s=1.0)
        m = measure_on(dev, Bundle(folder, [job]))
        (r,) = m.results.values()
        assert r.ok, r.error
        assert r.env["affinity"] == [cpu]  # the job ran on the device's CPU, not wherever it liked


# ------------------------------------------------------------------ the farm
def farm_build(sshd, root: Path, throttle: bool = False, **kw):
    from edgeprune.flows.farm import build_on_farm

    lines: list[str] = []
    team = boards(sshd, root)
    proc = None
    if throttle:
        proc = subprocess.Popen([sys.executable, "-c", THROTTLE, "0.001", "0.0005"], stdout=subprocess.PIPE,
                                text=True, env={**os.environ, "MARK": f"{root / 'b'}/"})
        if proc.stdout.readline().strip() != "rt":
            proc.kill()
            proc.wait()
            pytest.skip("the throttle needs real-time priority to act on time (root or CAP_SYS_NICE)")
    try:
        result = build_on_farm(get_target("host"), team, "onnxruntime", FAST, kind=KIND, store=LUTStore(root / "lut"),
                               size="tiny", log=lines.append, **kw)
    finally:
        if proc is not None:
            proc.terminate()  # it lets every stopped process go on before it exits
            proc.wait(10)
    return result, lines


@ssh_only
def test_a_throttled_board_is_reported_and_its_points_kept_out(sshd, tmp_path):
    result, lines = farm_build(sshd, tmp_path, throttle=True)
    farm = result.info.farm
    check = farm["check"]
    assert [b for b, v in check["boards"].items() if v["state"] == "excluded"] == ["b"], json.dumps(check, indent=1)
    assert check["boards"]["b"]["speed"] > 1 + check["speed_tolerance"]  # slower than the others beyond noise
    assert any(line.startswith("board 'b' EXCLUDED: it takes") for line in lines), lines
    assert farm["boards"]["b"]["state"] == "excluded" and farm["boards"]["b"]["points"] == 0

    entries = read_table(result.table_path).entries
    assert tiny_sigs() <= set(entries) and result.info.state == "complete"
    assert {e.device for e in entries.values()} == {"a", "c"}  # nothing of b's reached the table (nor the fit)
    assert sum(farm["boards"][b]["points"] for b in ("a", "c")) == len(tiny_sigs())
    assert all(farm["boards"][b]["points"] > 0 for b in ("a", "c"))

    devices = sshd.devices_yaml(boards(sshd, tmp_path), tmp_path / "d.yaml")
    res = CliRunner().invoke(cli, ["device-model", "show", "--kind", KIND, "--devices", str(devices), "-b",
                                   "onnxruntime", "--threads", "1", "--timing", "wall", "--cache-dir",
                                   str(tmp_path / "lut")])
    assert res.exit_code == 0, res.output
    assert "b EXCLUDED: it takes" in res.stdout and "not in the table" in res.stdout, res.stdout


@ssh_only
def test_a_farm_build_splits_the_suite_keeps_every_board_s_points_on_ctrl_c_and_resumes(sshd, tmp_path):
    import yaml

    team = boards(sshd, tmp_path)
    down = {"name": "down", "kind": "ssh", "host": "127.0.0.1", "port": free_port(), "connect_timeout_s": 2,
            "board_kind": KIND}
    devices = sshd.devices_yaml(team, tmp_path / "devices.yaml")
    data = yaml.safe_load(devices.read_text())
    data["devices"].append(down)
    devices.write_text(yaml.safe_dump(data))
    cache = tmp_path / "lut"
    argv = [sys.executable, "-m", "edgeprune.cli", "device-model", "build", *CLI, "--devices", str(devices),
            "--cache-dir", str(cache)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    t0, seen = time.monotonic(), {}
    while True:  # stop it once two boards have saved points of their share
        assert proc.poll() is None, f"the build ended before it was stopped: {proc.stderr.read()}"
        assert time.monotonic() - t0 < 240, "no board saved points of its share within 240 s"
        paths = [p for p in cache.rglob("onnxruntime-*.json") if not p.name.endswith(dms.SIDECAR_SUFFIX)]
        if paths:
            seen = read_table(paths[0]).entries
            if len({e.device for e in seen.values()}) >= 2 and len(seen) < len(tiny_sigs()):
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "suite point(s) measured by this build kept" in err, err
    assert "board 'down' is left out: " in err and "cannot connect" in err, err  # reported, then skipped
    kept = read_table(table_of(cache)).entries
    assert len({e.device for e in kept.values()}) >= 2 and set(seen) <= set(kept)
    info = dms.read_info(dms.sidecar_path(table_of(cache)))
    assert info.state == "interrupted" and info.farm["boards"]["down"]["state"] == "unreachable"
    assert info.farm["check"]["points"] and not info.farm["check"]["refused"]  # the overlap came first

    # the same context resumed, as a library caller would, with quicker series: it completes
    from edgeprune.config.devices import load_devices
    from edgeprune.flows.farm import build_on_farm, reach_boards, select_boards

    lines: list[str] = []
    kind, chosen = select_boards(load_devices(devices), KIND)
    up, left_out = reach_boards(chosen, "onnxruntime", get_target("host"), lines.append)
    assert [d.name for d in up] == ["a", "b", "c"] and list(left_out) == ["down"]
    assert any(line.startswith("warning: board 'down' is left out: ") for line in lines), lines
    result = build_on_farm(get_target("host"), up, "onnxruntime", FAST, kind=kind, unreachable=left_out,
                           store=LUTStore(cache), size="tiny", log=lines.append)
    entries = read_table(table_of(cache)).entries
    assert tiny_sigs() <= set(entries) and result.info.state == "complete" and result.info.builds == 2
    assert result.cached == len(tiny_sigs() & {k for k, e in kept.items() if not e.partial})
    for k, e in kept.items():  # what the interrupted build kept is kept, by the board that measured it
        assert entries[k].rounds[: len(e.rounds)] == e.rounds and entries[k].device.startswith(e.device)
    farm = result.info.farm
    split = {b: farm["boards"][b]["points"] for b in ("a", "b", "c")}
    assert all(n > 0 for n in split.values()), split  # every board measured some
    multi = [k for k, e in entries.items() if "," in e.device]  # two boards: only points one cut short
    assert set(multi) <= {k for k, e in kept.items() if e.partial}
    assert sum(split.values()) == len(tiny_sigs()) + len(multi)  # none measured twice (but the overlap's)
    assert all(set(e.device.split(",")) <= {"a", "b", "c"} for e in entries.values())  # which board measured it
    assert farm["boards"]["down"]["state"] == "unreachable" and "cannot connect" in farm["boards"]["down"]["why"]
    if result.measured or result.completed:  # boards measured again: compared again first
        assert farm["check"]["points"] and not farm["check"]["refused"]
