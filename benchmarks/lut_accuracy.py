"""How well do measured latency tables predict pruned models? (and what do they cost?)

For resnet18, mobilenetv2 and digits-cnn on this host, with ONNX Runtime and OpenVINO,
in one run: profile the model's per-layer latency table from scratch (time and number of
points), then measure >= 20 random pruned variants end to end and compare

* the LUT predictor (sum of table entries + measured remainder, calibrated), with
* a FLOPs-proportional predictor (the full model's measured latency x MACs fraction),

side by side: median and p95 absolute % error, fraction within +-10 %. The variants'
channel counts are drawn around a random global keep ratio in [0.3, 1] and snapped to the
pruning candidates (what a latency-aware pruner produces); ``--any-widths N`` adds N
variants with arbitrary channel counts (off the SIMD lattice), reported separately.

This 2-core machine is shared and switches between fast and slow states: absolute
milliseconds move between profiling and validation. The unpruned model is therefore timed
in the same interleaved rounds as the variants, and a variant's measured latency is
rescaled to the profiling session by it (variant / unpruned, round by round, x the
unpruned model at profiling): the error of the predicted latency *relative to the
unpruned model*, which is what a pruning budget is. The FLOPs predictor is anchored at the
same full model, so the comparison is like for like. The ``raw`` column compares with raw
times instead (it contains the machine's drift, column ``drift``); errors in the small
reference layer's unit are in the JSON (``reference_unit``).

Usage: python benchmarks/lut_accuracy.py [--models resnet18,mobilenetv2,digits-cnn]
       [--backends onnxruntime,openvino] [--variants 20] [--any-widths 0] [--cache-dir DIR]
       [--timing auto|kernel|wall] [--calibration-variants 6] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from edgeprune.config.devices import LOCAL
from edgeprune.config.targets import get_target
from edgeprune.flows.profile import profile_model
from edgeprune.flows.validate import validate
from edgeprune.latency.grid import GridSettings
from edgeprune.latency.settings import ProfileSettings
from edgeprune.latency.store import LUTStore
from edgeprune.latency.variants import space_of
from edgeprune.models.spec import load_model


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,mobilenetv2,digits-cnn")
    ap.add_argument("--backends", default="onnxruntime,openvino")
    ap.add_argument("--variants", type=int, default=20)
    ap.add_argument("--any-widths", type=int, default=0, help="extra variants with arbitrary widths")
    ap.add_argument("--density", default="normal", choices=["coarse", "normal", "dense"])
    ap.add_argument("--threads", type=int, default=None, help="threads per inference (default: the target's cores)")
    ap.add_argument("--drift", default="bundle", choices=["bundle", "local", "none"],
                    help="how table points are corrected for the machine's drift (ProfileSettings.drift)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per layer point")
    ap.add_argument("--no-steady-gate", dest="gate", action="store_false",
                    help="time without the runner's steady gate (ProfileSettings.gate)")
    ap.add_argument("--timing", default="auto", choices=["auto", "kernel", "wall"],
                    help="what a layer point's time is (ProfileSettings.timing)")
    ap.add_argument("--calibration-variants", type=int, default=ProfileSettings.calibration_variants)
    ap.add_argument("--model-rounds", type=int, default=ProfileSettings.model_rounds,
                    help="interleaved rounds per whole model (calibration and validation variants)")
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="reuse tables from here (default: a fresh temp dir, so profiling time is from scratch)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    target = get_target("host")
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="edgeprune-lut-bench-"))
    store = LUTStore(cache)
    settings = ProfileSettings(grid=GridSettings(lanes=target.fp32_lanes(), density=args.density),
                               threads=args.threads, drift=args.drift, rounds=args.rounds,
                               model_rounds=args.model_rounds, gate=args.gate, timing=args.timing,
                               calibration_variants=args.calibration_variants)
    rows, dump = [], []
    t_all = time.perf_counter()
    load_start = os.getloadavg()
    for name in args.models.split(","):
        model = load_model(f"zoo:{name}", log=log)
        space = space_of(model)
        for backend in args.backends.split(","):
            log(f"== {name} / {backend}: profiling ...")
            res = profile_model(model, target, LOCAL, backend, settings, store, space=space, log=log)
            modes = [("candidates", args.variants)] + ([("any", args.any_widths)] if args.any_widths else [])
            for mode, n in modes:
                log(f"== {name} / {backend}: validating {n} variants ({mode} widths) ...")
                rep = validate(model, res, target, LOCAL, backend, n=n, settings=settings, widths_mode=mode, log=log)
                rows.append((name, backend, mode, res, rep))
                dump.append({"model": name, "backend": backend, "profile": res.to_dict(), "validation": rep.to_dict()})
                s = rep.stats
                log(f"== {name} / {backend} ({mode}): LUT median {s['median_abs_pct_error']:.2f}%, "
                    f"p95 {s['p95_abs_pct_error']:.2f}%, within 10% {100 * s['within_10pct']:.0f}%; FLOPs median "
                    f"{rep.flops_stats['median_abs_pct_error']:.2f}%")
                if args.json:  # after every row: a long run that fails late keeps what it measured
                    args.json.write_text(json.dumps(dump, indent=1, default=str))

    load_end = os.getloadavg()
    print(f"\nhost: {target.num_cores()} cores, fp32 lanes {target.fp32_lanes()}, "
          f"{settings.threads or target.num_cores()} thread(s) per inference; tables in {cache}")
    print("layer timing: " + ", ".join(sorted({f"{b} {res.key.timing}" for _, b, _, res, _ in rows}))
          + f" (--timing {args.timing}; kernel = per-node counters, wall = wall-clock); "
          f"{settings.calibration_variants} calibration variants")
    print(f"load average (1/5/15 min) at start {load_start[0]:.1f}/{load_start[1]:.1f}/{load_start[2]:.1f}, "
          f"at end {load_end[0]:.1f}/{load_end[1]:.1f}/{load_end[2]:.1f} (other processes share the 2 cores)")
    print("errors = |predicted - measured| / measured over random pruned variants measured end to end; measured =\n"
          "variant / unpruned model (same rounds) x unpruned model at profiling, i.e. relative to the unpruned model")
    hdr = (f"{'model':<12} {'backend':<12} {'widths':<10} {'LUT pts':>7} {'LUT s':>7} {'calib':<12} {'n':>3} "
           f"{'LUT med':>8} {'LUT p95':>8} {'LUT ±10%':>8}   {'FLOPs med':>9} {'FLOPs p95':>9} {'FLOPs ±10%':>10} "
           f"{'raw med':>8} {'drift':>7}")
    print(hdr)
    print("-" * len(hdr))
    for name, backend, mode, res, rep in rows:
        s, f = rep.stats, rep.flops_stats
        print(f"{name:<12} {backend:<12} {mode:<10} {res.points_used:>7} {res.seconds:>7.0f} {rep.method:<12} "
              f"{len(rep.variants):>3} {s['median_abs_pct_error']:>7.2f}% {s['p95_abs_pct_error']:>7.2f}% "
              f"{100 * s['within_10pct']:>7.0f}%   {f['median_abs_pct_error']:>8.2f}% {f['p95_abs_pct_error']:>8.2f}% "
              f"{100 * f['within_10pct']:>9.0f}% {rep.raw_stats['median_abs_pct_error']:>7.2f}% "
              f"{100 * ((rep.drift or 1) - 1):>+6.1f}%")
    print("LUT pts: table points this model uses (shared signatures measured once); LUT s: profiling wall time from an\n"
          "empty cache incl. the end-to-end calibration variants (0 when reused). Aim: median <= 3 %, >= 95 % within\n"
          "+-10 %, clearly better than FLOPs. The machine is shared and noisy: ratios, not absolute ms, are the figure.")
    print(f"total benchmark time: {time.perf_counter() - t_all:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(dump, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
