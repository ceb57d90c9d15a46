"""Interruption is a normal outcome: a stopped run keeps what it measured, everywhere.

Real signals to a real ``edgeprune compile`` in a subprocess, at a known stage (its log
lines and the bundle's results.jsonl say where it is); real runners, a real SQLite
results database, a real sshd for the board. Each test checks the four promises: the
exit code (128 + the signal), ``summary.json`` / ``report.md`` with status
``incomplete`` and every finished backend, the run recorded ``incomplete`` with those
measurements, and no runner left timing (locally or on the board).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from test_auto_backend import conv_model

#: two backends, each timed for 4 rounds of 2 s: the first results exist long before the end
SLOW = ["--rounds", "4", "--min-time", "8", "--max-time", "8", "--min-runs", "1000000", "--warmup", "1",
        "--no-steady-gate"]


def two_backend_target(tmp_path: Path) -> Path:
    """This host, with ONNX Runtime and OpenVINO only (no TVM build to wait for)."""
    from edgeprune.paths import package_data

    spec = yaml.safe_load(package_data("targets/host.yaml").read_text())
    spec.update(name="host-2", backends=["onnxruntime", "openvino"])
    spec["backend_options"] = {k: v for k, v in spec["backend_options"].items() if k in spec["backends"]}
    path = tmp_path / "host-2.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def start(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgeprune.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def wait_for_results(bundle: Path, proc: subprocess.Popen, lines: int = 1, timeout: float = 240) -> None:
    """Until the runner has written ``lines`` finished job lines (the run is mid-measurement)."""
    path = bundle / "results.jsonl"
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if path.exists() and len([ln for ln in path.read_text().splitlines() if ln.strip()]) >= lines:
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended before measuring: {proc.stderr.read()}")
        time.sleep(0.1)
    proc.kill()
    pytest.fail("no job finished in time")


def processes_using(path: Path) -> list[int]:
    """Pids whose command line names ``path`` (a runner timing that bundle)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmd:
            found.append(int(d.name))
    return found


def gone(path: Path, within: float = 10.0) -> bool:
    t0 = time.monotonic()
    while processes_using(path):
        if time.monotonic() - t0 > within:
            return False
        time.sleep(0.2)
    return True


def runs(db: Path) -> list[dict]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        out = []
        for r in con.execute("SELECT * FROM runs ORDER BY id"):
            d = dict(r)
            d["measured"] = [dict(m) for m in con.execute(
                "SELECT backend, ok, median_ms FROM measurements WHERE run_id = ?", (r["id"],))]
            out.append(d)
        return out
    finally:
        con.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_while_timing_stops_the_runner_and_keeps_every_finished_backend(tmp_path, sig):
    model = conv_model(tmp_path / "m.onnx", layers=1, seed=0)
    out, db = tmp_path / "out", tmp_path / "r.sqlite"
    proc = start(["compile", "--model", str(model), "--target", str(two_backend_target(tmp_path)), "--out", str(out),
                  "--db", str(db), *SLOW])
    wait_for_results(out / "bundle", proc, lines=2)  # round 1 of both backends is done
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)

    assert proc.returncode == 128 + sig, err
    assert f"interrupted ({sig.name})" in err and "Traceback" not in err
    assert gone(out / "bundle"), "the runner kept timing after the CLI stopped"
    size = (out / "bundle" / "results.jsonl").stat().st_size
    time.sleep(1.0)
    assert (out / "bundle" / "results.jsonl").stat().st_size == size

    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "incomplete" and sig.name in summary["stopped"]
    measured = {b["name"] for b in summary["backends"] if b["latency_ms"]}
    assert measured == {"onnxruntime", "openvino"}
    assert "incomplete" in (out / "report.md").read_text().lower()

    (run,) = runs(db)
    assert run["status"] == "incomplete" and sig.name in run["note"]
    assert {m["backend"] for m in run["measured"] if m["ok"]} == measured


def test_a_signal_while_building_says_nothing_was_measured(tmp_path):
    model = conv_model(tmp_path / "m.onnx", layers=3, seed=0)
    out, db = tmp_path / "out", tmp_path / "r.sqlite"
    proc = start(["compile", "--model", str(model), "--target", "host", "--backend", "tvm", "--out", str(out),
                  "--db", str(db), *SLOW])
    for line in proc.stderr:  # the log says when the build starts
        if "building tvm artifact" in line:
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)

    assert proc.returncode == 143, err
    assert "terminate called" not in err and "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "incomplete" and "SIGTERM" in summary["stopped"]
    (run,) = runs(db)
    assert run["status"] == "incomplete"


def test_a_killed_cli_stops_its_runner_and_the_next_start_recovers_the_run(tmp_path):
    model = conv_model(tmp_path / "m.onnx", layers=1, seed=0)
    out, db = tmp_path / "out", tmp_path / "r.sqlite"
    target = str(two_backend_target(tmp_path))
    proc = start(["compile", "--model", str(model), "--target", target, "--out", str(out), "--db", str(db), *SLOW])
    wait_for_results(out / "bundle", proc, lines=2)
    proc.kill()  # SIGKILL: nothing of the CLI runs
    proc.communicate(timeout=30)
    assert gone(out / "bundle"), "an orphaned runner kept timing for a CLI that is gone"
    assert runs(db)[0]["status"] == "running"

    listing = subprocess.run([sys.executable, "-m", "edgeprune.cli", "results", "list", "--db", str(db), "--json"],
                             capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    (run,) = runs(db)
    assert run["status"] == "incomplete" and "killed" in run["note"]
    assert {m["backend"] for m in run["measured"] if m["ok"]} == {"onnxruntime", "openvino"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "incomplete" and "killed" in summary["stopped"]
    # recovered once: opening the database again stores nothing twice
    subprocess.run([sys.executable, "-m", "edgeprune.cli", "results", "list", "--db", str(db)],
                   capture_output=True, text=True, timeout=120, check=True)
    assert len(runs(db)[0]["measured"]) == len(run["measured"])


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    from edgeprune.bench.loopback import LoopbackSSHD, find_sshd

    if find_sshd() is None or shutil.which("ssh-keygen") is None:
        pytest.skip("OpenSSH sshd not installed (apt-get install openssh-server; `make test` does)")
    with LoopbackSSHD(tmp_path_factory.mktemp("sshd")) as server:
        yield server


def test_a_signal_while_a_board_times_stops_the_runner_on_the_board(sshd, tmp_path):
    model = conv_model(tmp_path / "m.onnx", layers=1, seed=0)
    out, db, workdir = tmp_path / "out", tmp_path / "r.sqlite", tmp_path / "board"
    devices = sshd.devices_yaml([sshd.device("board", workdir=str(workdir))], tmp_path / "devices.yaml")
    proc = start(["compile", "--model", str(model), "--target", str(two_backend_target(tmp_path)), "--out", str(out),
                  "--db", str(db), "--device", "board", "--devices", str(devices), *SLOW])
    t0 = time.monotonic()
    while not list(workdir.glob("run-*/results.jsonl")) or not any(
            p.read_text().strip() for p in workdir.glob("run-*/results.jsonl")):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() - t0 < 240, "no job finished on the board in time"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=90)

    assert proc.returncode == 130, err
    assert gone(workdir), "the runner kept timing on the board"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "incomplete"
    assert any(b["latency_ms"] for b in summary["backends"])  # the board's finished jobs came back
    assert runs(db)[0]["status"] == "incomplete"


def test_a_signal_stops_every_board_of_a_several_device_bench(sshd, tmp_path):
    model = conv_model(tmp_path / "m.onnx", layers=1, seed=0)
    out, db = tmp_path / "out", tmp_path / "r.sqlite"
    boards = [sshd.device(n, workdir=str(tmp_path / n)) for n in ("a", "b")]
    devices = sshd.devices_yaml(boards, tmp_path / "devices.yaml")
    proc = start(["bench", "--model", str(model), "--out", str(out), "--db", str(db), "--device", "a",
                  "--device", "b", "--devices", str(devices), *SLOW])
    t0 = time.monotonic()
    while not all(processes_using(tmp_path / n) for n in ("a", "b")):  # both runners are timing
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() - t0 < 240, "the runners did not start"
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=90)

    assert proc.returncode == 143, err
    assert "Traceback" not in err
    for n in ("a", "b"):
        assert gone(tmp_path / n), f"the runner kept timing on board {n}"
        assert json.loads((out / n / "summary.json").read_text())["status"] == "incomplete"
    assert [r["status"] for r in runs(db)] == ["incomplete", "incomplete"]


def test_a_signal_while_pruning_is_recorded_with_its_stage(tmp_path):
    out, db = tmp_path / "out", tmp_path / "r.sqlite"
    proc = start(["compile", "--model", "zoo:digits-cnn", "--target", "host", "--latency-budget", "0.5",
                  "--out", str(out), "--db", str(db)])
    for line in proc.stderr:  # exported; profiling or pruning has begun
        if "exporting the original" in line:
            break
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)

    assert proc.returncode == 130, err
    assert "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "incomplete" and summary["stopped"] == "SIGINT during pruning"
    assert "nothing was measured" in (out / "report.md").read_text()
    (run,) = runs(db)
    assert run["status"] == "incomplete" and "SIGINT" in run["note"]


def test_a_signal_the_caller_ignores_stays_ignored():
    """`nohup edgeprune ...` ignores SIGHUP: edgeprune must not turn it back into a stop."""
    code = ("import os, signal, time\n"
            "from edgeprune.signals import stop_signals_raise\n"
            "with stop_signals_raise():\n"
            "    os.kill(os.getpid(), signal.SIGHUP)\n"
            "    time.sleep(0.2)\n"
            "    print('still running')\n")
    r = subprocess.run(["nohup", sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "still running" in r.stdout, r.stderr
