"""Device farms through TVM's RPC tracker: a loopback tracker + server, a TVM artifact run through it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tornado", reason="the TVM RPC tracker needs tornado: pip install 'edgeprune[rpc]'")

from edgeprune.bench.rpc import TrackerAddress, list_farm, loopback_farm, run_tvm_artifact  # noqa: E402
from edgeprune.errors import DeviceError  # noqa: E402


@pytest.fixture(scope="module")
def mlp_so(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    import tvm
    from onnx import TensorProto, helper, numpy_helper
    from tvm.relax.frontend.onnx import from_onnx

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((64, 32)) / 8).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32])], [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    so = tmp_path_factory.mktemp("rpc") / "mlp.so"
    tvm.compile(from_onnx(model, keep_params_in_input=False), target=tvm.target.Target({"kind": "llvm"})).export_library(str(so))
    x = rng.standard_normal((4, 64)).astype(np.float32)
    return so, x, np.maximum(x @ w, 0)


def test_tvm_artifact_runs_through_the_tracker(mlp_so):
    so, x, expected = mlp_so
    with loopback_farm(("board-a",)) as tracker:
        assert list_farm(tracker)["board-a"]["free"] == 1
        r = run_tvm_artifact(tracker, "board-a", so, [x], [expected], repeat=5, number=5)
        assert r.verified is True and r.max_abs_diff < 1e-4
        assert len(r.times_ms) == 5 and r.median_ms > 0
        with pytest.raises(DeviceError, match="no board with key 'nope'"):
            run_tvm_artifact(tracker, "nope", so, [x])


def test_no_tracker_is_a_clear_error():
    from edgeprune.bench.loopback import free_port

    with pytest.raises(DeviceError, match="no RPC tracker"):
        list_farm(TrackerAddress("127.0.0.1", free_port()))


def test_ssh_device_joins_a_tracker_through_the_ssh_session(mlp_so, tmp_path):
    """`tune --device <ssh>`: a tracker here, the board's RPC server registered through SSH
    forwards only (no port opened to the network), and an artifact timed through it from
    another process, as MetaSchedule's runner does (see rpc_tunnel's docstring for why)."""
    import shutil
    import subprocess
    import sys

    from edgeprune.bench.loopback import LoopbackSSHD, find_sshd
    from edgeprune.bench.rpc_tunnel import ssh_rpc_board

    if find_sshd() is None or shutil.which("ssh-keygen") is None:
        pytest.skip("OpenSSH sshd not installed (apt-get install openssh-server; `make test` does)")
    so, x, expected = mlp_so
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", expected)
    client = (
        "import sys, numpy as np\n"
        "from edgeprune.bench.rpc import TrackerAddress, run_tvm_artifact\n"
        "d = sys.argv[3]\n"
        "r = run_tvm_artifact(TrackerAddress.parse(sys.argv[1]), 'ssh-board', sys.argv[2], [np.load(d + '/x.npy')],\n"
        "                     [np.load(d + '/expected.npy')], repeat=3, number=3)\n"
        "print(r.verified, len(r.times_ms))\n"
    )
    with LoopbackSSHD(tmp_path / "sshd") as sshd:
        with ssh_rpc_board(sshd.device("rpc-board"), "ssh-board", register_timeout_s=120) as tracker:
            assert tracker.host == "127.0.0.1"
            assert list_farm(tracker)["ssh-board"]["free"] == 1
            cp = subprocess.run([sys.executable, "-c", client, str(tracker), str(so), str(tmp_path)],
                                capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr[-2000:]
    assert cp.stdout.split() == ["True", "3"]
