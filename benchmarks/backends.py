"""Backend latency as a ratio to ONNX Runtime, and the fraction of the fp32 roofline.

For resnet18, mobilenetv2 and digits-cnn on this host, every backend of the ``host``
target is built and timed in one run, through the same on-device runner as
``edgeprune compile``. Absolute times on a shared 2-core machine are noise; the ratios
measured side by side are the figure.

Roofline fraction = achieved FLOP/s (2 x MACs / median latency) / theoretical fp32 peak,
where peak = cores x nominal GHz x FMA units x fp32 lanes per unit x 2, detected from
this machine's CPU flags (edgeprune/host.py; the line printed says how).

Usage: python benchmarks/backends.py [--models resnet18,mobilenetv2,digits-cnn] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from edgeprune.bench.settings import BenchSettings
from edgeprune.flows.compile import CompileOptions, compile_model
from edgeprune.config.devices import LOCAL
from edgeprune.config.targets import get_target
from edgeprune.models.spec import load_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,mobilenetv2,digits-cnn")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    target = get_target("host")
    out_root = args.out or Path(tempfile.mkdtemp(prefix="edgeprune-bench-"))
    settings = BenchSettings(warmup=3, min_runs=30, min_time_s=2.0, max_time_s=20.0)
    rows = []
    for name in args.models.split(","):
        model = load_model(f"zoo:{name}")
        # every backend by name: `auto` would leave the untuned TVM out, and its ratio is one of the figures
        s = compile_model(model, target, LOCAL, out_root / name, CompileOptions(backends=tuple(target.backends), bench=settings), log=lambda m: print(m, file=sys.stderr))
        for b in s.backends:
            rows.append((name, b))
    print(f"\nhost peak fp32: {target.peak_description()}")
    print(f"{'model':<12} {'backend':<12} {'median ms':>10} {'vs ORT':>8} {'ORT/x':>7} {'roofline':>9} {'parity':>8} {'build s':>8}")
    for name, b in rows:
        if b.latency_ms is None:
            print(f"{name:<12} {b.name:<12} {'failed':>10}  {b.error}")
            continue
        ratio = 1 / b.speedup_vs_reference if b.speedup_vs_reference else float("nan")
        print(f"{name:<12} {b.name:<12} {b.latency_ms.median:>10.3f} {ratio:>7.2f}x {b.speedup_vs_reference or float('nan'):>7.2f} "
              f"{100 * (b.roofline_fraction or 0):>8.1f}% {('pass' if b.verified else 'FAIL'):>8} {b.build_seconds or 0:>8.1f}")
    print("vs ORT = median / ONNX Runtime median (lower is faster); TVM is untuned here.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
