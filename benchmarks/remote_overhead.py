"""What does benchmarking over SSH cost? Two numbers, from one run on this machine.

1. **Measurement overhead**: the same bundle (an ONNX Runtime artifact of a ~1 ms MLP)
   timed by the local executor and through SSH to a loopback sshd. The runner times on
   the device, so the ratio of medians should be ~1 (aim: within 2 %). Rounds alternate
   local / SSH so drift on this shared machine hits both alike.
2. **Scale-out**: wall time of N loopback "boards" benchmarked in parallel vs one. Each
   job runs for a fixed time (min_time = max_time), so near-linear means the SSH
   orchestration (connect, upload, lock, download, cleanup) overlaps instead of queuing.

    .venv/bin/python benchmarks/remote_overhead.py [--rounds 5] [--devices 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgeprune.bench.io import save_arrays  # noqa: E402
from edgeprune.bench.loopback import LoopbackSSHD  # noqa: E402
from edgeprune.bench.measure import Bundle, measure, measure_on  # noqa: E402
from edgeprune.bench.settings import BenchSettings  # noqa: E402
from edgeprune.config.devices import LOCAL  # noqa: E402


def mlp_onnx(path: Path, batch: int = 16, width: int = 512, layers: int = 4) -> None:
    """batch x width MLP, ~2*batch*width^2*layers FLOPs (about 33 MFLOP: ~1 ms on 1 core)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), f"W{i}"))
        nodes += [helper.make_node("MatMul", [prev, f"W{i}"], [f"h{i}"]), helper.make_node("Relu", [f"h{i}"], [f"r{i}"])]
        prev = f"r{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, width])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [batch, width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def make_bundle(path: Path, onnx_path: Path, min_time_s: float, max_time_s: float, min_runs: int) -> Bundle:
    import shutil

    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(onnx_path, path / "model.onnx")
    save_arrays(path / "data" / "inputs.npz", "in", [np.ones((16, 512), np.float32)])
    settings = BenchSettings(warmup=20, min_runs=min_runs, min_time_s=min_time_s, max_time_s=max_time_s)
    return Bundle(path, [settings.job(id="mlp", backend="onnxruntime", artifact="model.onnx", inputs="data/inputs.npz",
                                      threads=1)])


def median_ms(measured) -> float:
    r = measured.results.get("mlp")
    if r is None or not r.ok:
        raise SystemExit(f"benchmark job failed: {measured.error or (r.error if r else 'no result')}")
    return statistics.median(r.times_ms)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="alternating local/SSH rounds")
    ap.add_argument("--devices", type=int, default=4, help="parallel loopback devices for the scale-out test")
    ap.add_argument("--job-seconds", type=float, default=2.0, help="fixed run time per job in the scale-out test")
    ap.add_argument("--json", type=Path, help="write the numbers here")
    args = ap.parse_args()
    quiet = lambda msg: None  # noqa: E731

    with tempfile.TemporaryDirectory(prefix="edgeprune-remote-overhead-") as tmp, LoopbackSSHD() as sshd:
        tmp = Path(tmp)
        onnx_path = tmp / "mlp.onnx"
        mlp_onnx(onnx_path)

        # 1. local vs SSH, same bundle contents, alternating
        local_meds, ssh_meds, ssh_walls, local_walls = [], [], [], []
        dev = sshd.device("loopback", workdir=str(tmp / "remote"))
        for i in range(args.rounds):
            for kind in ("local", "ssh") if i % 2 == 0 else ("ssh", "local"):
                b = make_bundle(tmp / f"b-{kind}-{i}", onnx_path, min_time_s=1.0, max_time_s=5.0, min_runs=200)
                t0 = time.monotonic()
                m = median_ms(measure_on(LOCAL if kind == "local" else dev, b, timeout_s=120, log=quiet))
                (local_meds if kind == "local" else ssh_meds).append(m)
                (local_walls if kind == "local" else ssh_walls).append(time.monotonic() - t0)
        local_med, ssh_med = statistics.median(local_meds), statistics.median(ssh_meds)
        ratio = ssh_med / local_med
        print(f"median latency  local {local_med:.4f} ms   ssh {ssh_med:.4f} ms   ratio ssh/local {ratio:.4f} "
              f"({(ratio - 1) * 100:+.2f} %, aim within 2 %)")
        print(f"per-round medians local {[round(x, 4) for x in local_meds]}")
        print(f"per-round medians ssh   {[round(x, 4) for x in ssh_meds]}")
        print(f"wall per run    local {statistics.median(local_walls):.2f} s   ssh {statistics.median(ssh_walls):.2f} s "
              f"(SSH connect + probe + upload + download + cleanup: "
              f"{statistics.median(ssh_walls) - statistics.median(local_walls):+.2f} s)")

        # 2. one device vs N in parallel, fixed-duration jobs
        def run_on(devs) -> float:
            bundles = {d.name: make_bundle(tmp / f"p-{d.name}-{time.monotonic_ns()}", onnx_path,
                                           min_time_s=args.job_seconds, max_time_s=args.job_seconds, min_runs=1)
                       for d in devs}
            t0 = time.monotonic()
            measured = measure(bundles, devs, timeout_s=300, log=quiet)  # one thread per device
            errors = [f"{n}: {m.error or m.results['mlp'].error}" for n, m in measured.items()
                      if m.error or not m.results.get("mlp") or not m.results["mlp"].ok]
            if errors:
                raise SystemExit("; ".join(errors))
            return time.monotonic() - t0

        boards = [sshd.device(f"board-{i}", workdir=str(tmp / f"board-{i}")) for i in range(args.devices)]
        one = run_on(boards[:1])
        many = run_on(boards)
        efficiency = args.devices * one / many / args.devices
        print(f"scale-out       1 device {one:.2f} s   {args.devices} devices in parallel {many:.2f} s   "
              f"speed-up {args.devices * one / many:.2f}x of {args.devices} ({efficiency:.0%} of linear)")

    numbers = {
        "local_median_ms": local_med, "ssh_median_ms": ssh_med, "ratio_ssh_over_local": ratio,
        "local_round_medians_ms": local_meds, "ssh_round_medians_ms": ssh_meds,
        "local_wall_s": statistics.median(local_walls), "ssh_wall_s": statistics.median(ssh_walls),
        "parallel_devices": args.devices, "one_device_wall_s": one, "n_devices_wall_s": many,
        "scale_out_speedup": args.devices * one / many, "job_seconds": args.job_seconds,
    }
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
