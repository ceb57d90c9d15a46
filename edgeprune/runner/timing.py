"""How a job is timed: the timing loop, and the runtimes' own per-node (kernel) counters.

The loop warms up, then times single synchronous inferences with
``time.perf_counter_ns`` until BOTH ``min_runs`` runs and ``min_time_s`` seconds are
reached (``max_time_s`` stops early and keeps what was measured; it also bounds the
warm-up).

``inject_slowdown`` (a job field, default 1.0) is a TEST/BENCHMARK HOOK ONLY: after each
timed run the loop busy-waits an extra (factor - 1) x the run's duration and counts it
in the time, to exercise regression detection. Real measurements leave it at 1.0.
"""

from __future__ import annotations

import bisect
import time

#: "wall": each run's wall-clock time (what a user of the model waits); "kernel": the
#: layers' own work from the runtime's per-node counters (latency tables, see Model.kernel_times)
TIMING_MODES = ("wall", "kernel")

#: per-node counters that are graph boundaries or layout/precision conversions, not the
#: work of the layers: a standalone layer graph pays them (its NCHW float input and output
#: are converted to and from the runtime's blocked layout), a whole model pays them once.
#: Measured on this host (benchmarks/kernel_timing.py, mobilenetv2, OpenVINO): standalone
#: layers' wall times summed to 1.79x the model's, their kernel times to 0.81x the model's
#: kernels (which also count its adds, pooling and fused activations).
OV_BOUNDARY_NODES = ("Reorder", "Convert", "Parameter", "Result", "Input", "Output", "Constant")
ORT_BOUNDARY_OPS = ("ReorderInput", "ReorderOutput")


def time_runs(run, job: dict) -> tuple[list[float], dict]:
    """Warm up, then time single runs until min_runs AND min_time_s (or max_time_s).

    Returns the per-run ms and what the loop did (``env.timing``: warm-up runs, measured
    seconds, whether ``max_time_s`` cut the run short).
    """
    ns = time.perf_counter_ns
    warmup = max(0, int(job["warmup"]))
    min_runs = max(1, int(job["min_runs"]))
    min_ns = float(job["min_time_s"]) * 1e9
    max_ns = max(float(job["max_time_s"]) * 1e9, 1.0)
    slow = float(job.get("inject_slowdown") or 1.0)
    w0 = ns()
    warm = 0
    while warm < warmup:
        run()
        warm += 1
        if ns() - w0 >= max_ns:
            break
    times = []
    start = ns()
    stopped = False
    while True:
        t0 = ns()
        run()
        t1 = ns()
        if slow > 1.0:  # test hook: busy-wait (factor - 1) x the run, counted in the time
            until = t1 + int((slow - 1.0) * (t1 - t0))
            while ns() < until:
                pass
            t1 = ns()
        times.append((t1 - t0) / 1e6)
        elapsed = t1 - start
        if len(times) >= min_runs and elapsed >= min_ns:
            break
        if elapsed >= max_ns:
            stopped = len(times) < min_runs or elapsed < min_ns
            break
    info = {"warmup_runs": warm, "measure_s": round((ns() - start) / 1e9, 4), "stopped_by_max_time": stopped}
    if slow != 1.0:
        info["inject_slowdown"] = slow
    return times, info


def ort_kernel_times(events: list[dict], n: int) -> list[float]:
    """Per-run ms of ONNX Runtime's node kernels (less ORT_BOUNDARY_OPS) for the last
    ``n`` ``model_run`` events of a profile (chrome-trace events, times in us)."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")[-n:]
    nodes = sorted((e["ts"], e["dur"]) for e in events
                   if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")
                   and (e.get("args") or {}).get("op_name") not in ORT_BOUNDARY_OPS)
    starts = [t for t, _ in nodes]
    out = []
    for a, b in runs:
        i = bisect.bisect_left(starts, a)
        total = 0
        while i < len(nodes) and nodes[i][0] <= b:
            total += nodes[i][1]
            i += 1
        out.append(total / 1e3)
    return out


def ov_kernel_ms(profiling_info) -> float:
    """ms of OpenVINO's node counters, less OV_BOUNDARY_NODES. The CPU plugin reports each
    node's running average since compile, not the last inference's time."""
    return sum(p.real_time.total_seconds() for p in profiling_info if p.node_type not in OV_BOUNDARY_NODES) * 1e3
