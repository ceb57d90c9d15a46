"""Device farms through TVM's RPC tracker (an existing engine, not a new one).

A tracker keeps a queue of RPC servers per *key* (e.g. ``rpi4``); each board runs
``python -m tvm.exec.rpc_server --tracker HOST:PORT --key rpi4`` and the host asks the
tracker for any free board of that key. This module is the small layer edgeprune
needs on top: list the farm, run a TVM artifact (a Relax ``.so``) on a board of a
key with on-device timing (``time_evaluator``) and output verification, and a
loopback farm for tests and demos.

    python -m edgeprune.bench.rpc demo          # tracker + server on loopback, run a .so through it
    python -m edgeprune.bench.rpc list HOST:PORT

Needs ``tornado`` for the tracker (``pip install 'edgeprune[rpc]'``); boards need only
the TVM runtime (apache-tvm) and numpy. See docs/rpc-tracker.md.
"""

from __future__ import annotations

import contextlib
import socket
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.errors import DependencyError, DeviceError


@dataclass(frozen=True)
class TrackerAddress:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "TrackerAddress":
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit():
            raise DeviceError(f"tracker address {text!r} is not HOST:PORT")
        return cls(host, int(port))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class RPCResult:
    """One TVM artifact timed on a board of the farm (times are per inference, ms)."""

    key: str
    times_ms: list[float]
    max_abs_diff: float | None = None
    verified: bool | None = None
    outputs: list[np.ndarray] = field(default_factory=list, repr=False)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)


def _tvm():
    try:
        import tvm
        from tvm import rpc
    except ImportError as exc:  # pragma: no cover - tvm is a core dependency
        raise DependencyError(f"TVM is not importable: {exc}", "pip install apache-tvm") from exc
    return tvm, rpc


def connect(tracker: TrackerAddress):
    """A tracker session; DeviceError (not a hang) when nothing listens there."""
    _, rpc = _tvm()
    try:
        with socket.create_connection((tracker.host, tracker.port), timeout=5):
            pass
    except OSError as exc:
        raise DeviceError(f"no RPC tracker at {tracker}: {exc}",
                          "start one with: python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190") from None
    return rpc.connect_tracker(tracker.host, tracker.port)


def list_farm(tracker: TrackerAddress) -> dict[str, dict[str, int]]:
    """key -> {"free": n, "pending": n} as the tracker sees it."""
    summary = connect(tracker).summary()
    out: dict[str, dict[str, int]] = {}
    for key, q in (summary.get("queue_info") or {}).items():
        out[key] = {"free": int(q.get("free", 0)), "pending": int(q.get("pending", 0))}
    return out


def run_tvm_artifact(
    tracker: TrackerAddress,
    key: str,
    artifact: Path,
    inputs: list[np.ndarray],
    expected: list[np.ndarray] | None = None,
    tolerance: float = 1e-4,
    number: int = 10,
    repeat: int = 20,
    min_repeat_ms: int = 0,
    session_timeout_s: float = 600.0,
    priority: int = 1,
) -> RPCResult:
    """Upload ``artifact`` to a free board of ``key``, time ``main`` there, check outputs.

    ``time_evaluator`` runs on the board, so network latency is not in the numbers.
    """
    tvm, _ = _tvm()
    from tvm import relax

    client = connect(tracker)
    farm = list_farm(tracker)
    if key not in farm:
        # request() would queue forever for a key no board has registered
        raise DeviceError(f"tracker {tracker} has no board with key '{key}'",
                          f"keys there: {', '.join(sorted(farm)) or 'none'}")
    try:
        remote = client.request(key, priority=priority, session_timeout=session_timeout_s)
    except Exception as exc:  # noqa: BLE001 - tornado/TVM raise assorted types
        raise DeviceError(f"tracker {tracker} has no board for key '{key}': {str(exc).splitlines()[0]}") from None
    remote.upload(str(artifact))
    lib = remote.load_module(Path(artifact).name)
    dev = remote.cpu()
    vm = relax.VirtualMachine(lib, dev)
    args = [tvm.runtime.tensor(np.ascontiguousarray(x), dev) for x in inputs]
    result = vm["main"](*args)
    outputs = [o.numpy() for o in _flatten(result)]
    timer = vm.time_evaluator("main", dev, number=number, repeat=repeat, min_repeat_ms=min_repeat_ms)
    times_ms = [float(t) * 1e3 for t in timer(*args).results]
    res = RPCResult(key=key, times_ms=times_ms, outputs=outputs)
    if expected is not None:
        diffs = [float(np.max(np.abs(o.astype(np.float64) - e))) if o.size else 0.0 for o, e in zip(outputs, expected)]
        res.max_abs_diff = max(diffs) if diffs else 0.0
        res.verified = len(outputs) == len(expected) and res.max_abs_diff <= tolerance
    return res


def _flatten(x) -> list[Any]:
    if hasattr(x, "numpy"):
        return [x]
    out: list[Any] = []
    for item in x:
        out += _flatten(item)
    return out


def start_local_tracker():
    """A TVM RPC tracker on this host's 127.0.0.1 (first free port from 9190, TVM's
    default), in a child process the caller terminates. Loopback only: boards reach it
    through a tunnel (:mod:`edgeprune.bench.rpc_tunnel`) or live on this host."""
    _tvm()
    try:
        from tvm.rpc.tracker import Tracker
    except ImportError as exc:
        raise DependencyError(f"the TVM RPC tracker needs tornado: {exc}", "pip install 'edgeprune[rpc]'") from None
    return Tracker(host="127.0.0.1", port=9190, port_end=9390, silent=True)


@contextlib.contextmanager
def loopback_farm(keys: tuple[str, ...] = ("host-cpu",)) -> Iterator[TrackerAddress]:
    """A tracker and one RPC server per key, all on 127.0.0.1, for tests and demos."""
    _tvm()
    from tvm.rpc.server import Server

    tracker = start_local_tracker()
    servers = []
    try:
        for key in keys:
            servers.append(Server(host="127.0.0.1", port=9090, port_end=9190, key=key,
                                  tracker_addr=("127.0.0.1", tracker.port), silent=True))
        addr = TrackerAddress("127.0.0.1", tracker.port)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # servers register asynchronously
            farm = list_farm(addr)
            if all(farm.get(k, {}).get("free", 0) >= 1 for k in keys):
                break
            time.sleep(0.2)
        else:
            raise DeviceError(f"RPC servers did not register with the tracker at {addr}")
        yield addr
    finally:
        for s in servers:
            s.terminate()
        tracker.terminate()


def _demo() -> int:
    """Build a small MLP for this host with TVM, run it through a loopback tracker."""
    import tempfile

    from onnx import TensorProto, helper, numpy_helper

    tvm, _ = _tvm()
    from tvm.relax.frontend.onnx import from_onnx

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((256, 128)) / 16).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 128])], [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = rng.standard_normal((8, 256)).astype(np.float32)
    expected = [np.maximum(x @ w, 0)]
    with tempfile.TemporaryDirectory() as tmp:
        so = Path(tmp) / "mlp.so"
        mod = from_onnx(model, keep_params_in_input=False)
        tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"})).export_library(str(so))
        with loopback_farm(("host-cpu",)) as tracker:
            print(f"tracker {tracker}: {list_farm(tracker)}")
            r = run_tvm_artifact(tracker, "host-cpu", so, [x], expected, tolerance=1e-4)
            print(f"ran {so.name} on a 'host-cpu' board: median {r.median_ms:.4f} ms over {len(r.times_ms)} "
                  f"repeats, max abs diff {r.max_abs_diff:.2g}, verified {r.verified}")
    return 0 if r.verified else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["demo"]:
        return _demo()
    if argv[:1] == ["list"] and len(argv) == 2:
        for key, q in list_farm(TrackerAddress.parse(argv[1])).items():
            print(f"{key}: {q['free']} free, {q['pending']} pending")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
