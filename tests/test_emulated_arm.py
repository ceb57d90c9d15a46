"""End to end on an emulated Raspberry Pi 4: `edgeprune compile --target rpi4 --device <emulated>`.

The board is an arm64 Debian root filesystem under qemu-user with sshd inside, built
once by `scripts/emulated-device.sh rpi4 build` (~5 min, cached in
/var/cache/edgeprune). The host cross-compiles (TVM .so linked with
aarch64-linux-gnu-g++; ONNX / OpenVINO IR), ships the bundle over SSH, and the aarch64
runtimes load, run and verify it there. Timings under emulation are meaningless and
the summary says so; outputs and accuracy are real.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeprune.paths import CACHE_ENV

REPO = Path(__file__).resolve().parents[1]
# The same variable as edgeprune's cache root, but scripts/emulated-device.sh defaults it to
# a system folder: building the board needs root, and one image serves every user.
CACHE = Path(os.environ.get(CACHE_ENV, "/var/cache/edgeprune"))
ROOTFS = CACHE / "rootfs-arm64"
DEVICES = CACHE / "emulated-rpi4.devices.yaml"
SCRIPT = REPO / "scripts" / "emulated-device.sh"
PORT = int(os.environ.get("EDGEPRUNE_EMULATED_PORT", "2222"))

pytestmark = pytest.mark.slow


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def emulated_board():
    if not (ROOTFS / ".edgeprune-venv-done").exists():
        pytest.skip(f"no emulated ARM root filesystem at {ROOTFS}: build it once with "
                    f"`sudo scripts/emulated-device.sh rpi4 build` (~5 min)")
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("cross compiler missing: apt-get install g++-aarch64-linux-gnu")
    started = False
    if not _listening(PORT):
        if os.geteuid() != 0:
            pytest.skip("the emulated board is not running and starting it needs root: "
                        "sudo scripts/emulated-device.sh rpi4 start")
        cp = subprocess.run(["bash", str(SCRIPT), "rpi4", "start"], capture_output=True, text=True, timeout=600)
        if cp.returncode != 0:  # say why: a bare CalledProcessError hides the script's own message
            pytest.fail(f"emulated-device.sh rpi4 start exited {cp.returncode}: "
                        + " | ".join((cp.stderr or cp.stdout).strip().splitlines()[-5:]))
        started = True
    yield DEVICES
    if started:
        subprocess.run(["bash", str(SCRIPT), "rpi4", "stop"], capture_output=True, timeout=120)


def test_compile_for_rpi4_on_the_emulated_board(emulated_board, tmp_path):
    from edgeprune.cli import cli

    out = tmp_path / "rpi4"
    res = CliRunner().invoke(cli, [
        "compile", "--model", "zoo:digits-cnn", "--target", "rpi4", "--devices", str(emulated_board),
        "--device", "emulated-rpi4", "--out", str(out), "--json",
        "--min-runs", "3", "--min-time", "0", "--warmup", "1", "--max-time", "20", "--timeout", "1200",
        "--eval-samples", "40",  # accuracy on 40 held-out digits: real, and affordable under qemu
    ])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["emulated"] is True and summary["target"] == "rpi4"
    by_name = {b["name"]: b for b in summary["backends"]}
    tvm = by_name["tvm"]
    assert tvm["error"] is None and tvm["latency_ms"], tvm.get("error")
    assert tvm["env"]["machine"] == "aarch64"  # it really ran on (emulated) ARM
    assert tvm["verified"] is True
    assert tvm["accuracy"] is not None and tvm["accuracy"] > 80
    assert any("cross-compiled with aarch64-linux-gnu-g++" in n for n in tvm["notes"])
    for name in ("onnxruntime", "openvino"):  # the aarch64 wheels of the other runtimes, too
        assert by_name[name]["error"] is None and by_name[name]["verified"] is True, by_name[name]["error"]
        assert by_name[name]["env"]["machine"] == "aarch64"
    assert "emulated" in (out / "report.md").read_text().lower()


def test_devices_check_sees_an_arm_board(emulated_board):
    from edgeprune.cli import cli

    res = CliRunner().invoke(cli, ["devices", "--devices", str(emulated_board), "check", "emulated-rpi4", "--json"])
    assert res.exit_code == 0, res.output
    (c,) = json.loads(res.stdout)
    assert c["arch"] == "aarch64" and c["emulated"] is True
    assert c["runtimes"]["tvm"] and c["runtimes"]["onnxruntime"]
