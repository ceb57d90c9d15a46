"""What kind of noise does this machine have? (the evidence behind ``latency.entry.robust_ms``)

Cycles, for ``--seconds``, through short timed series (~0.08 s each, ONNX Runtime) of

* mobilenetv2 with 2 intra-op threads (many parallel ops per inference),
* a 3x3 conv 64->64 at 28x28 with 2 threads (one parallel op: the profiler's reference layer),
* the same conv with 1 thread pinned to CPU 0, then to CPU 1,

and prints the time series, the correlation matrix and the fraction of time spent in a
slow state (mobilenetv2 > 1.25x its fastest decile). Then it times fresh sessions
against a persistent one, to tell per-session effects (memory placement, thread
placement) from time-varying ones.

On this 2-core VM (2026-11-23): single-threaded work was flat on both CPUs, 2-threaded
work switched between a fast and a slow state for 5-8 s at a time (~28 % slow): the conv
1.18x, mobilenetv2 1.65x; fresh and persistent sessions moved together. So the slow state
adds time per synchronisation between the two threads, and a latency table must be
built from the fast state (benchmarks/results/2026-11-23/host-noise.txt).

Usage: python benchmarks/host_noise.py [--seconds 60] [--fresh 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# as in the runner's workers: BLAS threads sleep at once after a product, so the steady-gate
# probe measures waking the other core (what the slow state makes dearer) and leaves no
# thread spinning behind it (before numpy loads OpenBLAS)
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from edgeprune.runner.gate import gate_probe_ms
from edgeprune.compile.export import export_onnx
from edgeprune.latency.layers import write_layer_onnx
from edgeprune.latency.layer_bundle import REFERENCE_LAYER
from edgeprune.models.spec import load_model


def session(path: Path, threads: int):
    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads = threads, 1
    o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    s = ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.random([d if isinstance(d, int) else 1 for d in i.shape], dtype=np.float32)
             for i in s.get_inputs()}
    return s, feeds


def series(sf, seconds: float = 0.08) -> float:
    """Median ms of single runs over ``seconds`` (at least 5 runs, after 2 warm-up runs)."""
    s, feeds = sf
    for _ in range(2):
        s.run(None, feeds)
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        t0 = time.perf_counter()
        s.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--fresh", type=int, default=15, help="fresh-vs-persistent session pairs")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgeprune-noise-"))
    export_onnx(load_model("zoo:mobilenetv2", log=lambda _m: None), work / "mnv2.onnx")
    write_layer_onnx(REFERENCE_LAYER, 64, 64, work / "conv.onnx", seed=1)
    mnv2, conv2, conv1 = session(work / "mnv2.onnx", 2), session(work / "conv.onnx", 2), session(work / "conv.onnx", 1)
    cpus = sorted(os.sched_getaffinity(0))
    pin = cpus[:2] if len(cpus) >= 2 else cpus * 2
    print(f"CPUs {cpus}; columns: mobilenetv2 2 threads, conv 2 threads, conv 1 thread on CPU {pin[0]} / {pin[1]}, "
          "steady-gate probe (ms)")
    rows, t0 = [], time.time()
    while time.time() - t0 < args.seconds:
        os.sched_setaffinity(0, set(cpus))
        a, b = series(mnv2), series(conv2)
        os.sched_setaffinity(0, {pin[0]})
        c0 = series(conv1)
        os.sched_setaffinity(0, {pin[1]})
        c1 = series(conv1)
        os.sched_setaffinity(0, set(cpus))
        g = gate_probe_ms(np)  # the runner's steady-gate probe (numpy BLAS, all cores)
        time.sleep(0.12)
        rows.append((a, b, c0, c1, g))
        print(f"{time.time() - t0:6.1f}s  {a:7.3f}  {b:6.3f}  {c0:6.3f}  {c1:6.3f}  {g:6.4f}", flush=True)
    x = np.array(rows)
    fast = np.percentile(x, 10, axis=0)
    slow = x[:, 0] > 1.25 * fast[0]
    print("correlation (mnv2-2t, conv-2t, conv-1t cpu a, conv-1t cpu b, gate probe):")
    print(np.corrcoef(x.T).round(2))
    print("fastest decile ms:", fast.round(3), " median:", np.median(x, 0).round(3), " max:", x.max(0).round(3))
    print(f"slow state (mnv2 > 1.25x its fastest decile): {100 * slow.mean():.0f}% of samples; timeline: "
          + "".join("S" if s else "." for s in slow))
    if slow.any() and (~slow).any():
        ratio = np.median(x[slow], 0) / np.median(x[~slow], 0)
        print("slow / fast state, median per column:", ratio.round(2))
    gate_slow = x[:, 4] > 1.25 * np.percentile(x[:, 4], 10)
    print("steady gate (probe > 1.25x its fastest decile) vs slow state: "
          f"flags {gate_slow[slow].sum()}/{slow.sum()} slow samples, {gate_slow[~slow].sum()}/{(~slow).sum()} fast ones")
    print("--- do the probe and the runtime disturb each other (threads still spinning)? ---")
    now, later, p_now, p_later = [], [], [], []
    for _ in range(20):
        gate_probe_ms(np)
        now.append(series(conv2, 0.02))  # conv right after the probe
        gate_probe_ms(np)
        time.sleep(0.12)
        later.append(series(conv2, 0.02))  # ... and 0.12 s after it
        p_now.append(gate_probe_ms(np))  # probe right after a conv series
        series(conv2, 0.02)
        time.sleep(0.12)
        p_later.append(gate_probe_ms(np))  # ... and 0.12 s after it
    print(f"conv right after the probe {statistics.median(now):.3f} ms, 0.12 s later {statistics.median(later):.3f} ms; "
          f"probe right after a conv series {statistics.median(p_now):.4f} ms, 0.12 s later "
          f"{statistics.median(p_later):.4f} ms")
    print(f"--- {args.fresh} fresh sessions vs the persistent one (mnv2, 2 threads, 0.3 s each) ---")
    for _ in range(args.fresh):
        a = series(session(work / "mnv2.onnx", 2), 0.3)
        print(f"fresh {a:7.3f}   persistent {series(mnv2, 0.3):7.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
