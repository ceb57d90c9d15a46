"""Which probe tells this VM's slow state? (the evidence behind the runner's steady-gate probe)

Cycles for N seconds (argv[1]): mobilenetv2 2 threads (ORT), a 3x3 conv 2 threads, then three
candidate probes back to back: numpy BLAS 128x128 products (x24), 64x64 products (x60) and
a Python thread ping-pong (x200), then mobilenetv2 again after 0.12 s. A sample is *slow*
when mobilenetv2 ran > 1.25x its fastest decile both before and after the probes, *clearly
fast* when < 1.1x both times; each probe is scored by how many slow samples it flags and how
many clearly fast ones it flags by mistake. It sets OPENBLAS_THREAD_TIMEOUT=4, as the
runner's workers have it (BLAS threads sleep right after each product, so each product wakes
the other core).

Usage: python benchmarks/steady_gate_probe.py 75
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as in the runner's workers, before numpy loads
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from host_noise import session, series  # noqa: E402

from edgeprune.compile.export import export_onnx  # noqa: E402
from edgeprune.latency.layers import write_layer_onnx  # noqa: E402
from edgeprune.latency.layer_bundle import REFERENCE_LAYER  # noqa: E402
from edgeprune.models.spec import load_model  # noqa: E402

w = Path(tempfile.mkdtemp())
export_onnx(load_model("zoo:mobilenetv2", log=lambda _m: None), w / "mnv2.onnx")
write_layer_onnx(REFERENCE_LAYER, 64, 64, w / "conv.onnx", seed=1)
mnv2, conv2 = session(w / "mnv2.onnx", 2), session(w / "conv.onnx", 2)
rng = np.random.default_rng(0)
mats = {n: (rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)) for n in (64, 128)}
def blas(n, calls):
    a, b = mats[n]; np.dot(a, b); ts = []
    for _ in range(calls):
        t0 = time.perf_counter_ns(); np.dot(a, b); ts.append(time.perf_counter_ns() - t0)
    return statistics.median(ts) / 1e6
ping, pong = threading.Event(), threading.Event()
stop = False
def partner():
    while not stop:
        if ping.wait(1.0):
            ping.clear(); pong.set()
th = threading.Thread(target=partner, daemon=True); th.start()
def pingpong(n=200):
    ts = []
    for _ in range(n):
        t0 = time.perf_counter_ns(); ping.set(); pong.wait(); pong.clear(); ts.append(time.perf_counter_ns() - t0)
    return statistics.median(ts) / 1e6
rows = []; t0 = time.time()
while time.time() - t0 < float(sys.argv[1]):
    a = series(mnv2, 0.08); b = series(conv2, 0.08)
    p1 = blas(128, 24); p2 = blas(64, 60); p3 = pingpong()
    time.sleep(0.12)
    a2 = series(mnv2, 0.08)
    rows.append((a, b, p1, p2, p3, a2))
x = np.array(rows)
slow = ((x[:, 0] > 1.25 * np.percentile(x[:, 0], 10)) & (x[:, 5] > 1.25 * np.percentile(x[:, 5], 10)))
fast = ((x[:, 0] < 1.1 * np.percentile(x[:, 0], 10)) & (x[:, 5] < 1.1 * np.percentile(x[:, 5], 10)))
print(f"{len(x)} samples; slow (mnv2 before and after > 1.25x): {slow.sum()}, clearly fast: {fast.sum()}")
print("corr with mnv2:", [round(float(np.corrcoef(x[:, 0], x[:, i])[0, 1]), 2) for i in (1, 2, 3, 4)])
for i, name in ((2, "blas128x24"), (3, "blas64x60"), (4, "pingpong")):
    p = x[:, i]; b = np.percentile(p, 10)
    for t in (1.15, 1.25, 1.4):
        f = p > t * b
        print(f"{name} >{t}x p10: slow caught {f[slow].sum()}/{slow.sum()}, fast flagged {f[fast].sum()}/{fast.sum()}")
