"""Checks before the work (docs/cli.md, "Checks before the work" and "Exit codes").

Each bad run is a real command (click's CliRunner in this process, or a subprocess where
what reaches the terminal matters) that must exit with its documented code, print one
``Error:`` line without a traceback, and fail *before* the work: no ``model.onnx`` (or
any file) in its output folder and no "exporting" / "building" / "profiling" line. No
wall-clock assertion: what did not happen is the proof. Devices are a real sshd on a
loopback port (reachable) and a closed loopback port (unreachable).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edgeprune.cli import cli
from fixtures_models import tiny_matmul_onnx
from test_help import _commands

REPO = Path(__file__).resolve().parents[1]
WORK_MARKERS = ("exporting", "building", "profiling", "benchmarking", "tuning ")


# ------------------------------------------------------------------ helpers
def invoke(args: list[str], **env: str):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env or None)


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("Error:")]


def assert_refused(res, code: int, *fragments: str, usage: bool = False) -> str:
    """Exit ``code``, one ``Error:`` line (the only stderr line unless a click usage
    error, which adds its usage lines), no traceback, no sign that work started."""
    out = res.output
    assert res.exit_code == code, out
    assert "Traceback" not in out
    errors = error_lines(res.stderr)
    assert len(errors) == 1, res.stderr
    if not usage:
        assert res.stderr.strip().splitlines() == errors, res.stderr
    for f in fragments:
        assert f in errors[0], errors[0]
    for marker in WORK_MARKERS:
        assert marker not in out.lower(), out
    return errors[0]


def assert_nothing_written(folder: Path) -> None:
    assert not folder.exists() or not any(folder.rglob("*")), sorted(folder.rglob("*"))


@pytest.fixture
def a_file(tmp_path) -> Path:
    """A regular file: any path under it is unwritable, for root too."""
    f = tmp_path / "file.txt"
    f.write_text("not a folder\n")
    return f


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    """A small MatMul-Add-Relu ONNX model (batch 4, 64 -> 32): loads and builds in a blink."""
    return tiny_matmul_onnx(tmp_path_factory.mktemp("model") / "tiny.onnx")


FAST = ["--min-runs", "5", "--min-time", "0.05", "--max-time", "2", "--warmup", "1"]


# ------------------------------------------------------------------ output paths
@pytest.mark.parametrize("args", [
    ["compile", "-m", "zoo:digits-cnn", "--out", "{bad}/sub"],
    ["bench", "-m", "zoo:digits-cnn", "--out", "{bad}/sub"],
    ["prune", "-m", "zoo:digits-cnn", "--latency-budget", "0.5", "--out", "{bad}/pruned.pt"],
    ["profile", "-m", "zoo:digits-cnn", "--out", "{bad}/lut.json"],
    ["profile", "-m", "zoo:digits-cnn", "--plot", "--plot-dir", "{bad}/plots"],
    ["tune", "-m", "zoo:digits-cnn", "--trials", "1", "--out", "{bad}/sub"],
    ["tune", "-m", "zoo:digits-cnn", "--trials", "1", "--tuning-dir", "{bad}/records"],
    ["report", "--out", "{bad}/report.html"],
], ids=["compile", "bench", "prune", "profile", "profile-plot-dir", "tune", "tune-records", "report"])
def test_an_unwritable_output_is_refused_before_any_work(args, a_file, tmp_path):
    """A path whose parent is a regular file: exit 2, one line naming the option."""
    res = invoke([a.format(bad=a_file) for a in args])
    option = next(a for a in args if a.startswith("--") and "{bad}" in args[args.index(a) + 1])
    line = assert_refused(res, 2, f"cannot write {option} {a_file}", "is a file, not a folder")
    assert "choose a folder you can write to" in line
    assert_nothing_written(tmp_path / "out")
    assert not list(tmp_path.rglob("*.onnx"))


def test_prune_with_an_unwritable_latency_table_cache_fails_before_profiling(a_file, tmp_path):
    """The cache every prune profiles into ($EDGEPRUNE_CACHE/lut) is checked too: it
    used to fail only after the layers were measured."""
    res = invoke(["prune", "-m", "zoo:digits-cnn", "--latency-budget", "0.5", "--out", tmp_path / "p.pt"],
                 EDGEPRUNE_CACHE=str(a_file / "cache"))
    assert_refused(res, 2, "the latency-table cache")
    assert not (tmp_path / "p.pt").exists()


def test_a_folder_given_as_a_file_and_a_file_given_as_a_folder(tmp_path, a_file):
    (tmp_path / "d.pt").mkdir()
    # click's own checks of a FILE / DIR option: usage errors, exit 2 as well
    res = invoke(["prune", "-m", "zoo:digits-cnn", "--latency-budget", "0.5", "--out", tmp_path / "d.pt"])
    assert_refused(res, 2, "is a directory", usage=True)
    res = invoke(["compile", "-m", "zoo:digits-cnn", "--out", a_file])
    assert_refused(res, 2, "is a file", usage=True)


def test_the_compile_out_failure_is_one_line_in_a_real_terminal(a_file, tmp_path):
    """Before: "unexpected PermissionError", exit 1. Now what reaches stderr is one line."""
    env = {**os.environ, "EDGEPRUNE_DB": str(tmp_path / "r.sqlite")}
    cp = subprocess.run([sys.executable, "-m", "edgeprune.cli", "compile", "-m", "zoo:digits-cnn",
                         "--out", str(a_file / "sub")], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert cp.returncode == 2, cp.stderr
    assert cp.stderr.strip().splitlines() == [
        f"Error: cannot write --out {a_file / 'sub'}: {a_file} is a file, not a folder "
        "(choose a folder you can write to)"]
    assert cp.stdout == ""


def test_probes_leave_nothing_behind_and_judge_by_what_the_system_does(tmp_path, a_file):
    from edgeprune.errors import OutputError
    from edgeprune.flows.preflight import make_out_dir, writable_dir, writable_file

    before = sorted(tmp_path.rglob("*"))
    assert writable_dir(tmp_path / "a" / "b" / "c") == tmp_path / "a" / "b" / "c"
    assert writable_file(tmp_path / "x" / "y.json") == tmp_path / "x" / "y.json"
    assert writable_file(a_file) == a_file  # an existing file is opened for writing, not changed
    assert a_file.read_text() == "not a folder\n"
    assert sorted(tmp_path.rglob("*")) == before  # no folder, no probe file
    with pytest.raises(OutputError, match="is a file, not a folder"):
        writable_dir(a_file)
    with pytest.raises(OutputError, match="is a file, not a folder"):
        writable_dir(a_file / "deeper" / "still")
    with pytest.raises(OutputError, match="is a folder, not a file"):
        writable_file(tmp_path)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputError):
        writable_dir(tmp_path / "dangling" / "sub")
    assert make_out_dir(tmp_path / "made" / "here").is_dir()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only-mode folder: mode bits prove nothing")
def test_a_folder_without_write_permission(tmp_path):
    from edgeprune.errors import OutputError
    from edgeprune.flows.preflight import writable_dir

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="Permission denied"):
            writable_dir(ro / "out")
    finally:
        ro.chmod(0o700)


# ------------------------------------------------------------------ the results database
@pytest.mark.parametrize("verb", ["compile", "bench"])
def test_an_unusable_db_fails_at_once_with_the_results_code(verb, a_file, tmp_path):
    """Before: a warning after the whole run, and exit 0."""
    out = tmp_path / "out"
    res = invoke([verb, "-m", "zoo:digits-cnn", "--out", out, "--db", a_file / "results.sqlite"])
    line = assert_refused(res, 10, "cannot write --db")
    assert "--db none" in line
    assert_nothing_written(out)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database, it is a text file " * 100)
    res = invoke([verb, "-m", "zoo:digits-cnn", "--out", out, "--db", garbage])
    assert_refused(res, 10, "not a usable results database")
    res = invoke([verb, "-m", "zoo:digits-cnn", "--out", out, "--db", tmp_path])
    assert_refused(res, 10, "is a folder")
    assert_nothing_written(out)


def test_nightly_refuses_an_unusable_db_and_report_dir_under_its_contract(a_file, tmp_path):
    res = invoke(["nightly", "--db", a_file / "r.sqlite", "--report-dir", tmp_path / "reports"])
    assert_refused(res, 2, "cannot write --db")
    res = invoke(["nightly", "--db", tmp_path / "r.sqlite", "--report-dir", a_file / "reports"])
    assert_refused(res, 2, "cannot write --report-dir")
    assert not (tmp_path / "r.sqlite").exists()


# ------------------------------------------------------------------ backends
@pytest.mark.parametrize("args", [
    ["compile", "-b", "openvino"],
    ["bench", "-b", "openvino"],
    ["prune", "-b", "openvino", "--latency-budget", "0.5"],
    ["profile", "-b", "openvino"],
], ids=["compile", "bench", "prune", "profile"])
def test_a_backend_the_target_cannot_use_is_refused_before_export(args, tmp_path):
    """Before: refused after 14 s of export, with exit 6."""
    out = tmp_path / "out"
    target_out = ["--out", out / "x.pt"] if args[0] == "prune" else ["--out", out / "x.json"] \
        if args[0] == "profile" else ["--out", out]
    res = invoke([*args, "-m", "zoo:digits-cnn", "-t", "jetson-orin-nano", *target_out])
    line = assert_refused(res, 5, "backend 'openvino' cannot build for target jetson-orin-nano")
    assert "tvm, onnxruntime" in line  # what the target does list
    assert_nothing_written(out)


def test_auto_on_a_target_none_of_whose_backends_can_build(tmp_path):
    target = tmp_path / "gpu-only.yaml"
    text = (REPO / "edgeprune" / "targets" / "jetson-orin-nano.yaml").read_text()
    target.write_text(re.sub(r"(?m)^name: .*$", "name: gpu-only", text).replace("backends: [tvm, onnxruntime]",
                                                                              "backends: [openvino]"))
    res = invoke(["compile", "-m", "zoo:digits-cnn", "-t", target, "--out", tmp_path / "out"])
    assert_refused(res, 5, "no backend of target gpu-only can build here", "openvino")
    assert_nothing_written(tmp_path / "out")


def test_compile_model_refuses_before_its_export_for_library_callers(tiny_onnx, tmp_path, a_file):
    from edgeprune.config.devices import LOCAL
    from edgeprune.config.targets import get_target
    from edgeprune.errors import BackendError, OutputError, PruneError
    from edgeprune.flows.compile import CompileOptions, compile_model
    from edgeprune.models.spec import load_model
    from edgeprune.prune.options import PruneOptions

    model = load_model(str(tiny_onnx), log=lambda _m: None)
    out = tmp_path / "out"
    with pytest.raises(BackendError, match="cannot build for target jetson-orin-nano"):
        compile_model(model, get_target("jetson-orin-nano"), LOCAL, out, CompileOptions(backends=("openvino",)),
                      log=lambda _m: None)
    with pytest.raises(PruneError, match="finite"):
        compile_model(model, get_target("host"), LOCAL, out,
                      CompileOptions(backends=("onnxruntime",), prune=PruneOptions(latency_ms=math.nan)),
                      log=lambda _m: None)
    assert_nothing_written(out)
    with pytest.raises(OutputError, match="is a file, not a folder"):
        compile_model(model, get_target("host"), LOCAL, a_file / "out", CompileOptions(backends=("onnxruntime",)),
                      log=lambda _m: None)


# ------------------------------------------------------------------ numbers
@pytest.mark.parametrize("args", [
    ["compile", "--latency-budget", "nan"],
    ["compile", "--latency-budget", "inf"],
    ["compile", "--latency-budget", "0"],
    ["compile", "--latency-budget", "1.5"],
    ["compile", "--latency-ms", "nan"],
    ["compile", "--latency-ms", "inf"],
    ["compile", "--latency-ms", "-1"],
    ["prune", "--latency-budget", "0.5", "--max-accuracy-drop", "nan"],
    ["prune", "--latency-budget", "0.5", "--finetune-epochs", "inf"],
    ["bench", "--timeout", "nan"],
    ["bench", "--timeout", "1" + "0" * 400],  # a number of seconds that overflows to inf
    ["bench", "--min-time", "inf"],
], ids=lambda a: " ".join(a)[:40])
def test_a_number_that_is_not_finite_or_out_of_range_fails_the_option_check(args, tmp_path):
    """Before: ``--latency-budget nan`` passed the option check and failed after the export."""
    res = invoke([*args, "-m", "zoo:digits-cnn", "--out", tmp_path / ("p.pt" if args[0] == "prune" else "out")])
    assert_refused(res, 2, f"Invalid value for '{args[-2]}'", usage=True)
    assert_nothing_written(tmp_path / "out")


def test_results_compare_refuses_a_nan_threshold():
    res = invoke(["results", "compare", "1", "2", "--min-effect", "nan"])
    assert_refused(res, 2, "not a finite number", usage=True)


def test_every_float_option_of_every_command_is_finite():
    """One type for every float option (FiniteFloat) and every duration (Duration): both
    refuse nan and inf, so no command can take a number that poisons its comparisons."""
    from edgeprune.cli.common import Duration, FiniteFloat

    seen = 0
    for path, cmd in _commands():
        for p in cmd.params:
            if isinstance(p.type, click.types.FloatParamType):
                assert isinstance(p.type, FiniteFloat), f"{' '.join(path)} {p.opts}: {p.type!r}"
            elif not isinstance(p.type, Duration):
                continue
            seen += 1
            for bad in ("nan", "inf", "-inf"):
                with pytest.raises(click.BadParameter):
                    p.type.convert(bad, p, None)
    assert seen >= 10  # latency budgets, accuracy drop, epochs, durations, compare thresholds


# ------------------------------------------------------------------ devices
def _ssh_available() -> bool:
    from edgeprune.bench.loopback import find_sshd

    return find_sshd() is not None and shutil.which("ssh-keygen") is not None


needs_sshd = pytest.mark.skipif(not _ssh_available(),
                                reason="OpenSSH sshd not installed (apt-get install openssh-server; `make test` does)")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    from edgeprune.bench.loopback import LoopbackSSHD

    if not _ssh_available():
        pytest.skip("OpenSSH sshd not installed")
    with LoopbackSSHD(tmp_path_factory.mktemp("sshd")) as server:
        yield server


def _dead_devices_yaml(path: Path, names: list[str]) -> Path:
    import yaml

    from edgeprune.bench.loopback import free_port

    devices = [{"name": n, "kind": "ssh", "host": "127.0.0.1", "port": free_port(), "connect_timeout_s": 2}
               for n in names]
    path.write_text(yaml.safe_dump({"devices": devices}))
    return path


def test_an_unreachable_device_fails_before_export_printed_once(tmp_path, tiny_onnx):
    """Before: exit 6 after 21 s of export and build, the message printed three times."""
    devices = _dead_devices_yaml(tmp_path / "devices.yaml", ["dead"])
    out = tmp_path / "out"
    env = {**os.environ, "EDGEPRUNE_DB": str(tmp_path / "r.sqlite")}
    cp = subprocess.run([sys.executable, "-m", "edgeprune.cli", "compile", "-m", str(tiny_onnx), "-b", "onnxruntime",
                         "--devices", str(devices), "-d", "dead", "--out", str(out)],
                        capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert cp.returncode == 7, cp.stderr
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: device 'dead': cannot connect"), cp.stderr
    assert (cp.stdout + cp.stderr).count("cannot connect") == 1
    assert "Traceback" not in cp.stderr and cp.stdout == ""
    assert_nothing_written(out)
    assert not (tmp_path / "r.sqlite").exists()  # no run was begun


def test_every_unreachable_device_of_a_fleet_is_named_in_one_line(tmp_path):
    devices = _dead_devices_yaml(tmp_path / "devices.yaml", ["dead-a", "dead-b"])
    res = invoke(["bench", "-m", "zoo:digits-cnn", "--devices", devices, "-d", "dead-a", "-d", "dead-b",
                  "--out", tmp_path / "out"])
    assert_refused(res, 7, "2 of 2 devices not ready", "dead-a", "dead-b")
    assert_nothing_written(tmp_path / "out")


def test_an_unreachable_rpc_tracker_fails_before_export(tmp_path):
    from edgeprune.bench.loopback import free_port

    res = invoke(["tune", "-m", "zoo:digits-cnn", "--trials", "1", "--rpc-tracker", f"127.0.0.1:{free_port()}",
                  "--rpc-key", "board", "--out", tmp_path / "out", "--tuning-dir", tmp_path / "records"])
    assert_refused(res, 7, "cannot reach the RPC tracker")
    assert_nothing_written(tmp_path / "out")


@needs_sshd
def test_a_reachable_board_whose_python_cannot_run_fails_before_export(sshd, tmp_path, tiny_onnx):
    devices = sshd.devices_yaml([sshd.device("no-python", python="/nonexistent/python3")], tmp_path / "devices.yaml")
    res = invoke(["compile", "-m", tiny_onnx, "-b", "onnxruntime", "--devices", devices, "-d", "no-python",
                  "--out", tmp_path / "out"])
    assert_refused(res, 7, "device 'no-python'", "/nonexistent/python3")
    assert_nothing_written(tmp_path / "out")


@needs_sshd
def test_a_board_without_the_backend_runtime_fails_before_export(sshd, tmp_path, tiny_onnx):
    bare = shutil.which("python3", path="/usr/bin:/bin")
    if bare is None or subprocess.run([bare, "-c", "import onnxruntime"], capture_output=True).returncode == 0:
        pytest.skip("no system python without onnxruntime on this host")
    devices = sshd.devices_yaml([sshd.device("bare", python=bare)], tmp_path / "devices.yaml")
    res = invoke(["compile", "-m", tiny_onnx, "-b", "onnxruntime", "--devices", devices, "-d", "bare",
                  "--out", tmp_path / "out"])
    assert_refused(res, 7, "onnxruntime not installed", "pip install")
    assert_nothing_written(tmp_path / "out")


@needs_sshd
def test_a_reachable_board_passes_and_its_probe_is_reused_by_the_run(sshd, tmp_path, tiny_onnx):
    """The check connects and probes once; the run that follows finds the probe cached
    (PROCESS_PROBE_CACHE) and measures on the board."""
    import json

    from edgeprune.bench.ssh.probe import PROCESS_PROBE_CACHE, probe_key
    from edgeprune.bench.ssh.connection import SSHConnection
    from edgeprune.config.targets import get_target
    from edgeprune.flows.preflight import check_devices

    dev = sshd.device("lab", workdir=str(tmp_path / "remote"))
    check_devices([dev], ["onnxruntime"], get_target("host"), log=lambda _m: None)
    assert probe_key(SSHConnection(dev)) in PROCESS_PROBE_CACHE._entries

    devices = sshd.devices_yaml([dev], tmp_path / "devices.yaml")
    res = invoke(["compile", "-m", tiny_onnx, "-b", "onnxruntime", "--devices", devices, "-d", "lab",
                  "--out", tmp_path / "out", *FAST])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["device"] == "lab" and summary["backend"] == "onnxruntime"


# ------------------------------------------------------------------ the exit code table
def _table(section: str) -> dict[int, str]:
    """``code -> row`` of the first table under ``section`` in docs/cli.md."""
    text = (REPO / "docs" / "cli.md").read_text()
    body = text.split(section, 1)[1]
    rows: dict[int, str] = {}
    for line in body.splitlines()[1:]:
        if rows and not line.startswith("|"):
            break
        m = re.match(r"\|\s*(\d+)\s*\|", line)
        if m:
            rows[int(m.group(1))] = line
    return rows


def test_the_exit_code_table_matches_errors_py():
    """Every failure kind's code appears in docs/cli.md with its class name, every code
    in the table is one the code uses, and nightly's contract has its own table."""
    import inspect

    import edgeprune.errors as errors
    from edgeprune.cli import EXIT_UNEXPECTED

    table = _table("## Exit codes")
    kinds = [c for _, c in inspect.getmembers(errors, inspect.isclass)
             if issubclass(c, errors.EdgepruneError) and c.__module__ == errors.__name__]
    assert len(kinds) >= 10
    for cls in kinds:
        assert cls.exit_code in table, f"{cls.__name__} (exit {cls.exit_code}) is not in docs/cli.md"
        assert f"`{cls.__name__}`" in table[cls.exit_code], f"row {cls.exit_code} does not name {cls.__name__}"
    signals = {"EXIT_INTERRUPTED": "SIGINT", "EXIT_TERMINATED": "SIGTERM", "EXIT_HANGUP": "SIGHUP"}
    for name, sig in signals.items():
        code = getattr(errors, name)
        assert f"`{name}`" in table[code] and sig in table[code] and "`Interrupted`" in table[code]
        assert errors.Interrupted(code - 128).exit_code == code
    assert "`EXIT_UNEXPECTED`" in table[EXIT_UNEXPECTED]
    assert "usage" in table[2] and "`OutputError`" in table[2]
    assert "--no-wait" in table[errors.DeviceError.exit_code]
    used = {0, EXIT_UNEXPECTED} | {c.exit_code for c in kinds} | {getattr(errors, n) for n in signals}
    assert set(table) == used, f"codes in docs/cli.md that nothing uses: {set(table) - used}"

    nightly = _table("its own three codes")
    assert set(nightly) == {errors.EXIT_OK, errors.EXIT_REGRESSION, errors.EXIT_FAILED}
    for name in ("EXIT_OK", "EXIT_REGRESSION", "EXIT_FAILED"):
        assert f"`{name}`" in nightly[getattr(errors, name)]


def test_the_readme_points_at_the_one_table():
    readme = (REPO / "README.md").read_text()
    assert "docs/cli.md#exit-codes" in readme
    for code in (2, 5, 7, 10, 129, 130, 143):
        assert re.search(rf"\b{code}\b", readme.split("Errors and exit codes", 1)[1][:900]), code
