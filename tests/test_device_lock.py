"""One device, one run: every local timing holds this host's lock (edgeprune.bench.device_lock).

Real processes: a holder takes the lock in one Python process, a real ``edgeprune bench``
runs in another.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeprune.bench.device_lock import device_lock, lock_dir
from edgeprune.config.devices import LOCAL
from edgeprune.errors import DeviceError

from test_auto_backend import conv_model

HOLD = """
import sys, time
from edgeprune.bench.device_lock import device_lock
from edgeprune.config.devices import LOCAL
dev = LOCAL.model_copy(update={"concurrency": int(sys.argv[2])})
with device_lock(dev, wait=False):
    print("held", flush=True)
    time.sleep(float(sys.argv[1]))
"""
FAST = ["--min-runs", "3", "--min-time", "0.01", "--warmup", "0", "--rounds", "1"]


def hold(seconds: float, concurrency: int = 1) -> subprocess.Popen:
    """A process that holds the local lock for ``seconds`` (returns once it holds it)."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(seconds), str(concurrency)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if line.strip() != "held":
        p.kill()
        pytest.fail(f"the holder did not get the lock: {p.stderr.read()}")
    return p


def bench(model: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeprune.cli", "bench", "--model", str(model), "--out", str(out),
                           "--db", "none", *FAST, *extra], capture_output=True, text=True, timeout=300)


def test_the_lock_lives_outside_tmpdir(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert not str(lock_dir()).startswith(str(tmp_path))


def test_a_busy_device_fails_at_once_with_no_wait_before_any_work(tmp_path):
    model = conv_model(tmp_path / "m.onnx", layers=1, seed=0)
    holder = hold(120)
    try:
        t0 = time.monotonic()
        r = bench(model, tmp_path / "out", "--no-wait")
        assert r.returncode == 7, r.stderr  # DeviceError
        assert f"device 'local' busy: held by pid {holder.pid}" in r.stderr
        assert "Traceback" not in r.stderr
        assert not (tmp_path / "out" / "bundle").exists()  # refused before the export and builds
        assert time.monotonic() - t0 < 60
    finally:
        holder.kill()
        holder.wait()


def test_a_second_run_waits_for_the_first_and_says_for_whom(tmp_path):
    model = conv_model(tmp_path / "m.onnx", layers=1, seed=0)
    holder = hold(6)
    try:
        r = bench(model, tmp_path / "out")
        assert r.returncode == 0, r.stderr
        assert f"device 'local' busy: held by pid {holder.pid}" in r.stderr and "waiting" in r.stderr
        assert holder.wait(timeout=5) == 0  # it finished its turn before the bench timed
    finally:
        holder.kill()


def test_a_killed_holder_leaves_the_device_free():
    holder = hold(120)
    with pytest.raises(DeviceError, match="busy"):
        with device_lock(LOCAL, wait=False):
            pass
    holder.kill()  # SIGKILL: no cleanup runs; the kernel drops the flock
    holder.wait()
    with device_lock(LOCAL, wait=False):
        pass


def test_nested_holds_in_one_thread_do_not_deadlock():
    with device_lock(LOCAL, wait=False):
        with device_lock(LOCAL, wait=False):  # e.g. nightly's cell lock around measure's own
            pass


def test_concurrency_slots_admit_that_many_runs():
    holder = hold(120, concurrency=2)
    try:
        with device_lock(LOCAL.model_copy(update={"concurrency": 2}), wait=False):  # the second slot
            with pytest.raises(DeviceError, match="busy"):  # a third run: both slots taken
                other = subprocess.run([sys.executable, "-c", HOLD, "0", "2"], capture_output=True, text=True,
                                       timeout=60)
                if other.returncode != 0 and "busy" in other.stderr:
                    raise DeviceError("busy")
    finally:
        holder.kill()
        holder.wait()
