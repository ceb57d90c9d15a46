"""Remote devices over SSH, against a real OpenSSH sshd on a loopback port.

The session fixture starts the system's sshd (openssh-server; `make test` installs it)
with throwaway host and user keys; devices point at it with python = this venv's
python, so the runtimes are there. Nothing is mocked: paramiko, SFTP, the remote shell,
the runner and its worker processes are the real ones.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeprune.bench.bundle import BenchJob, write_manifest
from edgeprune.bench.io import save_arrays
from edgeprune.bench.loopback import LoopbackSSHD, find_sshd, free_port
from edgeprune.bench.ssh import SSHConnection, SSHExecutor, build_command
from edgeprune.errors import ConfigError, DeviceError
from fixtures_models import tiny_matmul_onnx

pytestmark = pytest.mark.skipif(find_sshd() is None or shutil.which("ssh-keygen") is None,
                                reason="OpenSSH sshd not installed (apt-get install openssh-server; `make test` does)")

EVIL = "x; touch /tmp/edgeprune-pwned; echo $(id) `id`"
PWNED = Path("/tmp/edgeprune-pwned")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    with LoopbackSSHD(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    """A small MatMul-Add-Relu ONNX model (batch 4, 64 -> 32)."""
    return tiny_matmul_onnx(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture
def loaded(tiny_onnx):
    from edgeprune.models.base import LoadedModel

    x = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    return LoadedModel(name="tiny", spec=str(tiny_onnx), input_names=["x"], example_inputs=[x],
                       output_names=["y"], onnx_path=tiny_onnx)


def fast_options(timeout_s: float = 120.0):
    from edgeprune.bench.settings import BenchSettings
    from edgeprune.flows.compile import CompileOptions

    return CompileOptions(backends=("onnxruntime",),
                          bench=BenchSettings(warmup=1, min_runs=5, min_time_s=0.05, max_time_s=5, timeout_s=timeout_s))


def make_bundle(path: Path, onnx_path: Path, jobs: int = 1, min_time_s: float = 0.05, max_time_s: float = 5.0,
                ids: list[str] | None = None) -> Path:
    """A deploy bundle with ``jobs`` ONNX Runtime jobs on the tiny model."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(onnx_path, path / "model.onnx")
    x = np.ones((4, 64), np.float32)
    save_arrays(path / "data" / "inputs.npz", "in", [x])
    ids = ids or [f"job{i}" for i in range(jobs)]
    write_manifest(path, [
        BenchJob(id=i, backend="onnxruntime", artifact="model.onnx", inputs="data/inputs.npz", threads=1,
                 warmup=1, min_runs=5, min_time_s=min_time_s, max_time_s=max_time_s)
        for i in ids
    ])
    return path


def remote_leftovers(workdir: str) -> list[str]:
    p = Path(workdir)
    return sorted(x.name for x in p.iterdir() if x.name.startswith("run-")) if p.exists() else []


# --- a full remote bench -------------------------------------------------------------------
def test_full_remote_bench_through_compile_model(sshd, loaded, tmp_path, host_target):
    from edgeprune.flows.compile import compile_model

    dev = sshd.device("lab-1", workdir=str(tmp_path / "remote"))
    summary = compile_model(loaded, host_target, dev, tmp_path / "out", fast_options(), log=lambda m: None)
    assert summary.device == "lab-1" and summary.emulated is False
    (ort,) = summary.backends
    assert ort.ok, ort.error
    assert ort.verified is True and ort.max_abs_diff is not None and ort.max_abs_diff < 1e-4
    assert ort.runs >= 5 and ort.latency_ms.median > 0
    assert ort.env["machine"] and ort.env["python"]
    assert summary.backend == "onnxruntime"
    # results came back, the remote temp dir is gone, the report exists
    assert (tmp_path / "out" / "bundle" / "results.jsonl").read_text().strip()
    assert remote_leftovers(str(tmp_path / "remote")) == []
    assert (tmp_path / "out" / "report.md").exists()


def test_emulated_flag_reaches_the_report(sshd, loaded, tmp_path, host_target):
    from edgeprune.flows.compile import compile_model

    dev = sshd.device("qemu-board", workdir=str(tmp_path / "remote"), emulated=True)
    summary = compile_model(loaded, host_target, dev, tmp_path / "out", fast_options(), log=lambda m: None)
    assert summary.emulated is True
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["emulated"] is True
    assert "emulated" in (tmp_path / "out" / "report.md").read_text().lower()


def test_probe_reports_arch_python_and_runtimes(sshd):
    p = SSHExecutor(sshd.device("p")).probe()
    assert p["arch"] and p["python"] and p["numpy"]
    assert p["runtimes"]["onnxruntime"]


# --- host keys ------------------------------------------------------------------------------
def test_wrong_host_key_is_refused(sshd, tmp_path):
    other = tmp_path / "other_key"
    os.system(f"ssh-keygen -q -t ed25519 -N '' -f {other}")
    pub = (other.with_suffix(".pub")).read_text().split()
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{sshd.port} {pub[0]} {pub[1]}\n")
    with pytest.raises(DeviceError, match="HOST KEY MISMATCH") as exc:
        SSHConnection(sshd.device("mitm", known_hosts=str(kh))).connect()
    assert "ssh-keygen -R" in str(exc.value)
    # accept-new never overrides a changed key
    with pytest.raises(DeviceError, match="HOST KEY MISMATCH"):
        SSHConnection(sshd.device("mitm", known_hosts=str(kh), host_key_policy="accept-new")).connect()


def test_unknown_host_key_is_refused_with_how_to_trust_it(sshd, tmp_path):
    kh = tmp_path / "empty_known_hosts"
    with pytest.raises(DeviceError) as exc:
        SSHConnection(sshd.device("new", known_hosts=str(kh))).connect()
    msg = str(exc.value)
    assert "not in" in msg and "SHA256:" in msg
    assert f"ssh-keyscan -p {sshd.port}" in msg and "--insecure-accept-new-host-key" in msg
    assert not kh.exists()


def test_insecure_accept_new_host_key_saves_the_key(sshd, tmp_path):
    kh = tmp_path / "kh" / "known_hosts"
    res = CliRunner().invoke(_cli(), ["devices", "--devices", str(_devices_file(sshd, tmp_path, known_hosts=kh)),
                                      "check", "ssh-1", "--insecure-accept-new-host-key"])
    assert res.exit_code == 0, res.output
    assert f"[127.0.0.1]:{sshd.port} ssh-ed25519" in kh.read_text()
    with SSHConnection(sshd.device("again", known_hosts=str(kh))) as conn:  # now verified from the file
        assert conn.alive
    # a second accept-new connection finds the key there and adds no second line
    with SSHConnection(sshd.device("again", known_hosts=str(kh), host_key_policy="accept-new")) as conn:
        assert conn.alive
    assert len(kh.read_text().splitlines()) == 1


def test_accept_new_is_a_device_setting_resolved_where_devices_load(sshd, tmp_path, monkeypatch):
    """The flag and the env var become ``host_key_policy`` of the loaded device; nothing else
    in the process changes, and a device built by hand keeps the secure default."""
    from edgeprune.config.devices import ACCEPT_NEW_ENV, get_device, load_devices, with_host_key_policy

    kh = tmp_path / "known_hosts"
    devfile = _devices_file(sshd, tmp_path, known_hosts=kh)
    assert get_device("ssh-1", devfile).host_key_policy == "verify"
    dev = get_device("ssh-1", devfile, accept_new_host_key=True)
    assert dev.host_key_policy == "accept-new"
    assert dev.port == sshd.port and "port" in dev.model_fields_set  # the rest of the device is untouched
    assert get_device("local", devfile, accept_new_host_key=True).host_key_policy == "verify"  # ssh devices only
    assert with_host_key_policy(dev, False) is dev  # a run-time switch never re-tightens devices.yaml
    monkeypatch.setenv(ACCEPT_NEW_ENV, "1")
    (dev,) = [d for d in load_devices(devfile) if d.name == "ssh-1"]
    assert dev.host_key_policy == "accept-new"
    with SSHConnection(dev) as conn:
        assert conn.alive
    assert f"[127.0.0.1]:{sshd.port} ssh-ed25519" in kh.read_text()
    assert sshd.device("by-hand", known_hosts=str(tmp_path / "other")).host_key_policy == "verify"


def test_launcher_speaks_the_markers_the_executor_reads():
    from edgeprune.bench.ssh import scripts

    for marker in (scripts.PGID_MARKER, scripts.LOCK_WAIT_MARKER, scripts.LOCK_TIMEOUT_MARKER):
        assert marker in scripts.LAUNCHER
    assert f"sys.exit({scripts.LOCK_TIMEOUT_EXIT})" in scripts.LAUNCHER
    assert ".edgeprune-lock." in scripts.LAUNCHER and scripts.LOCK_FILES.startswith(".edgeprune-lock.")
    compile(scripts.LAUNCHER, "launcher", "exec")
    compile(scripts.KILLER, "killer", "exec")


# --- failures are clear and fast ------------------------------------------------------------
def test_unreachable_host_fails_fast_with_a_clear_error(sshd, tmp_path):
    dev = sshd.device("gone", port=free_port(), connect_timeout_s=3)  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match="cannot connect .* connection refused"):
        SSHExecutor(dev).probe()
    assert time.monotonic() - t0 < 8


def test_silent_host_times_out(tmp_path):
    import socket

    from edgeprune.config.devices import Device

    with socket.socket() as srv:  # accepts TCP, never speaks SSH
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        dev = Device(name="mute", kind="ssh", host="127.0.0.1", port=srv.getsockname()[1],
                     known_hosts=str(tmp_path / "kh"), connect_timeout_s=1)
        t0 = time.monotonic()
        with pytest.raises(DeviceError, match="cannot connect"):
            SSHConnection(dev, retries=2, backoff_s=0.1).connect()
        assert time.monotonic() - t0 < 10


def test_remote_runtime_missing_is_a_clear_error(sshd, loaded, tmp_path, host_target):
    from edgeprune.flows.compile import compile_model

    bare = tmp_path / "bare-venv"
    import venv

    venv.EnvBuilder(with_pip=False).create(bare)
    dev = sshd.device("bare", python=str(bare / "bin" / "python"), workdir=str(tmp_path / "remote"))
    ex = SSHExecutor(dev)
    bundle = make_bundle(tmp_path / "bundle", loaded.onnx_path)
    with pytest.raises(DeviceError) as exc:
        ex.run_bundle(bundle, timeout_s=60)
    msg = str(exc.value)
    assert "onnxruntime" in msg and "numpy" in msg and "not installed" in msg
    assert "pip install" in msg and "devices check bare" in msg
    # through the pipeline the error lands in the summary instead of a traceback
    summary = compile_model(loaded, host_target, dev, tmp_path / "out", fast_options(), log=lambda m: None)
    assert summary.backend is None and "not installed" in summary.backends[0].error


def test_bad_python_path_is_a_clear_error(sshd, tmp_path):
    with pytest.raises(DeviceError, match="cannot run '/nonexistent/python'"):
        SSHExecutor(sshd.device("nopy", python="/nonexistent/python")).probe()


def test_unusable_workdir_is_a_clear_error(sshd, tiny_onnx, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    dev = sshd.device("nodir", workdir=str(blocker / "work"))
    with pytest.raises(DeviceError, match="not a directory"):
        SSHExecutor(dev, log=lambda m: None).run_bundle(make_bundle(tmp_path / "b", tiny_onnx), timeout_s=30)


# --- partial results ------------------------------------------------------------------------
def test_run_killed_midway_keeps_finished_jobs(sshd, tiny_onnx, tmp_path):
    # job0 finishes in ~0.1 s; job1 times for 30 s and is killed by the 4 s timeout
    bundle = make_bundle(tmp_path / "bundle", tiny_onnx, ids=["fast", "slow"])
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["jobs"][1].update(min_time_s=30.0, max_time_s=30.0, min_runs=10**9)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    workdir = tmp_path / "remote"
    dev = sshd.device("killme", workdir=str(workdir))
    t0 = time.monotonic()
    results = SSHExecutor(dev, log=lambda m: None).run_bundle(bundle, timeout_s=4)
    assert time.monotonic() - t0 < 25
    fast, slow = results
    assert fast.ok and fast.times_ms
    assert not slow.ok and "timed out" in slow.error
    assert remote_leftovers(str(workdir)) == []
    # the killed runner (and its worker) are gone: the board lock is free again
    again = SSHExecutor(dev, log=lambda m: None).run_bundle(make_bundle(tmp_path / "b2", tiny_onnx), timeout_s=30)
    assert again[0].ok


# --- no injection ---------------------------------------------------------------------------
def test_shell_metacharacters_are_not_injected(sshd, loaded, tmp_path, host_target):
    from edgeprune.flows.compile import compile_model

    PWNED.unlink(missing_ok=True)
    workdir = tmp_path / f"work dir; touch {PWNED}; $(touch {PWNED})"
    dev = sshd.device(f"pi {EVIL}", workdir=str(workdir), env={"EP_NOTE": f"'; touch {PWNED}; '"})
    summary = compile_model(loaded, host_target, dev, tmp_path / "out", fast_options(), log=lambda m: None)
    assert summary.backend == "onnxruntime", summary.choice_reason
    assert not PWNED.exists()
    assert workdir.is_dir()  # the literal name was used as a directory
    assert remote_leftovers(str(workdir)) == []


def test_command_line_is_quoted_and_env_names_are_checked():
    cmd = build_command(["python3", "-c", "print(1)", "a b; rm -rf /"], {"X": "1; rm -rf /"})
    assert cmd == "env 'X=1; rm -rf /' python3 -c 'print(1)' 'a b; rm -rf /'"
    with pytest.raises(ConfigError):
        build_command(["python3"], {"BAD;NAME": "1"})
    with pytest.raises(ConfigError):
        build_command(["-oProxyCommand=evil"], {})


def test_env_vars_reach_the_remote_process(sshd):
    dev = sshd.device("envy", env={"EDGEPRUNE_T": "a b'c $HOME"})
    with SSHConnection(dev) as conn:
        r = conn.run([dev.python, "-c", "import os; print(os.environ['EDGEPRUNE_T'])"], 30, env=dev.env)
    assert r.exit_code == 0 and r.stdout.strip() == "a b'c $HOME"


# --- parallel devices, one board at a time --------------------------------------------------
def test_parallel_devices_run_concurrently(sshd, tiny_onnx, tmp_path):
    n, run_s = 3, 1.5
    bundles = [make_bundle(tmp_path / f"b{i}", tiny_onnx, min_time_s=run_s, max_time_s=run_s) for i in range(n)]
    devs = [sshd.device(f"board-{i}", workdir=str(tmp_path / f"remote{i}")) for i in range(n)]
    spans: list[tuple[float, float]] = []

    def go(i: int) -> None:
        t0 = time.monotonic()
        (r,) = SSHExecutor(devs[i], log=lambda m: None).run_bundle(bundles[i], timeout_s=60)
        assert r.ok, r.error
        spans.append((t0, time.monotonic()))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    assert len(spans) == n
    # three 1.5 s runs on three boards overlap: well under the 4.5 s they would take in turn
    assert wall < n * run_s + 1.0
    assert max(s for s, _ in spans) < min(e for _, e in spans)  # all were running at one moment


def test_one_board_never_runs_two_benchmarks_at_once(sshd, tiny_onnx, tmp_path):
    run_s = 1.0
    workdir = str(tmp_path / "shared-board")
    # two device entries, same board (same address + workdir): the second waits for the first
    a = sshd.device("alias-a", workdir=workdir)
    b = sshd.device("alias-b", workdir=workdir)
    bundles = [make_bundle(tmp_path / f"b{i}", tiny_onnx, min_time_s=run_s, max_time_s=run_s) for i in range(2)]
    spans: list[tuple[float, float]] = []

    def go(dev, bundle) -> None:
        t0 = time.monotonic()
        (r,) = SSHExecutor(dev, log=lambda m: None).run_bundle(bundle, timeout_s=60)
        assert r.ok
        spans.append((t0, time.monotonic()))

    threads = [threading.Thread(target=go, args=(d, b_)) for d, b_ in zip((a, b), bundles)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (s1, e1), (s2, e2) = sorted(spans, key=lambda s: s[1])
    assert e2 - min(s1, s2) >= 2 * run_s  # serialised


def test_remote_lock_holds_off_other_processes(sshd, tiny_onnx, tmp_path):
    """The board lock is a file lock on the device, so another process (or machine) waits too."""
    import subprocess
    import sys

    workdir = tmp_path / "board"
    workdir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c",
                               "import fcntl,sys,time; f=open(sys.argv[1],'w'); fcntl.flock(f, fcntl.LOCK_EX); "
                               "print('locked', flush=True); time.sleep(2)", str(workdir / ".edgeprune-lock.0")],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    msgs: list[str] = []
    t0 = time.monotonic()
    (r,) = SSHExecutor(sshd.device("waiter", workdir=str(workdir)), log=msgs.append).run_bundle(
        make_bundle(tmp_path / "b", tiny_onnx), timeout_s=60)
    holder.wait()
    assert r.ok and time.monotonic() - t0 >= 1.5
    assert any("busy" in m for m in msgs)


def test_bench_command_with_several_devices(sshd, tmp_path, tiny_onnx):
    devfile = _devices_file(sshd, tmp_path, names=["pi-a", "pi-b"])
    out = tmp_path / "out"
    res = CliRunner().invoke(_cli(), [
        "bench", "--model", str(tiny_onnx), "--devices", str(devfile), "--device", "pi-a", "--device", "pi-b",
        "--out", str(out), "--min-runs", "5", "--min-time", "0.05", "--warmup", "1", "--json",
    ])
    assert res.exit_code == 0, res.output
    for name in ("pi-a", "pi-b"):
        s = json.loads((out / name / "summary.json").read_text())
        assert s["device"] == name and s["backend"] == "onnxruntime"
    # each device's run is in the results database, like a single-device bench
    from edgeprune.results.store import ResultsStore, default_db_path

    with ResultsStore(default_db_path(None)) as store:
        runs = store.runs(kind="bench")
        devices = {m.device for r in runs for m in store.measurements(run_id=r.id)}
    assert len(runs) == 2 and devices == {"pi-a", "pi-b"}


def test_devices_check_reports_runtimes_and_missing(sshd, tmp_path):
    devfile = _devices_file(sshd, tmp_path, names=["ssh-1"])
    res = CliRunner().invoke(_cli(), ["devices", "--devices", str(devfile), "check", "--json"])
    assert res.exit_code == 0, res.output
    checks = {c["name"]: c for c in json.loads(res.stdout)}
    c = checks["ssh-1"]
    assert c["ok"] and c["arch"] and c["python"] and c["runtimes"]["onnxruntime"]
    # a bare python: the check says what is missing and how to install it, exit code 7
    bare = tmp_path / "bare"
    import venv

    venv.EnvBuilder(with_pip=False).create(bare)
    devfile2 = _devices_file(sshd, tmp_path, names=["bare-1"], python=str(bare / "bin" / "python"))
    res = CliRunner().invoke(_cli(), ["devices", "--devices", str(devfile2), "check", "bare-1"])
    assert res.exit_code == 7
    assert "missing onnxruntime" in res.output and "-m pip install" in res.output


# --- helpers ----------------------------------------------------------------------------------
def _cli():
    from edgeprune.cli import cli

    return cli


def _devices_file(sshd, tmp_path: Path, names=("ssh-1",), known_hosts: Path | None = None, **fields) -> Path:
    devs = [sshd.device(n, workdir=str(tmp_path / "remote" / n), target="host",
                        **({"known_hosts": str(known_hosts)} if known_hosts else {}), **fields) for n in names]
    path = tmp_path / f"devices-{'-'.join(names)}.yaml"
    return sshd.devices_yaml(devs, path)
