"""Do standalone layer times add up to the model? Wall-clock vs kernel timing, side by side.

The evidence behind ``ProfileSettings.timing = "kernel"`` (docs/latency-tables.md, "Kernel
timing"). For one model and backend, in one run, through the same runner and bundles as
``edgeprune profile``: every prunable layer as a standalone graph at full width and the whole
model, each timed both ways in interleaved rounds:

* wall:   each run's wall-clock time (what a standalone graph costs: per-call overhead and
          the conversions of its NCHW float input/output to the runtime's layout included);
* kernel: the sum of the runtime's per-node counters less layout conversions and graph
          boundaries (edgeprune.runner.timing.OV_BOUNDARY_NODES / ORT_BOUNDARY_OPS).

Printed: sum over layers / model, for each mode. Additivity means a ratio near 1 for the
layers' share of the model; the wall ratio shows what a wall-clock table double-counts.

Usage: python benchmarks/kernel_timing.py [--model mobilenetv2] [--backends openvino,onnxruntime] [--rounds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from edgeprune.config.devices import LOCAL
from edgeprune.config.targets import get_target
from edgeprune.latency.layer_bundle import Job
from edgeprune.latency.layers import input_shapes, make_inputs, write_layer_onnx
from edgeprune.latency.measurer import BundleMeasurer
from edgeprune.latency.settings import ProfileSettings
from edgeprune.latency.variants import space_of, variant_job
from edgeprune.models.spec import load_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenetv2")
    ap.add_argument("--backends", default="openvino,onnxruntime")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    target = get_target("host")
    model = load_model(f"zoo:{args.model}", log=lambda m: None)
    space = space_of(model)
    settings = ProfileSettings(timing="kernel")
    print(f"{args.model}: {len(space.layers)} prunable layers at full width + the whole model, "
          f"{args.rounds} interleaved rounds, {target.num_cores()} threads")
    print(f"{'backend':<12} {'layers wall':>11} {'layers kernel':>13} {'model wall':>10} {'model kernel':>12}   "
          f"{'wall: layers/model':>18} {'kernel: layers/model':>20} {'layers kernel/model wall':>24}")
    for backend in args.backends.split(","):
        jobs: list[Job] = []
        for mode in ("wall", "kernel"):
            for l in space.layers:
                jobs.append(Job(key=f"{mode}:{l.name}",
                                write_onnx=lambda dst, l=l: write_layer_onnx(l, l.in_channels, l.out_channels, dst),
                                inputs=lambda l=l: make_inputs(l, l.in_channels),
                                input_key=str(input_shapes(l, l.in_channels)),
                                macs=float(l.macs(l.in_channels, l.out_channels)), timing=mode))
            m = variant_job(model, space, None, f"{mode}:model")
            m.timing = mode
            jobs.append(m)
        measurer = BundleMeasurer(target, LOCAL, backend, settings, log=lambda msg: print(msg, file=sys.stderr))
        series = dataclasses.replace(settings.series(), min_runs=10, min_time_s=0.05)
        timings, errors = measurer.measure(jobs, args.rounds, series, reference=False)
        if errors:
            print(f"{backend}: {len(errors)} job(s) failed, e.g. {next(iter(errors.items()))}")
            continue
        lw, lk = (sum(timings[f"{mode}:{l.name}"].ms for l in space.layers) for mode in ("wall", "kernel"))
        mw, mk = timings["wall:model"].ms, timings["kernel:model"].ms
        print(f"{backend:<12} {lw:>11.3f} {lk:>13.3f} {mw:>10.3f} {mk:>12.3f}   "
              f"{lw / mw:>17.2f}x {lk / mk:>19.2f}x {lk / mw:>23.2f}x")
    print("wall: a standalone graph's wall-clock time; kernel: the runtime's per-node counters without layout\n"
          "conversions. A table of wall times double-counts per-call overhead and conversions the model pays once.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
