"""Harness fidelity: does edgeprune time a model as the runtimes' own tools do?

The same digits-cnn artifacts, timed four ways, interleaved in one run (A B, B A, A B,
... for ``--rounds`` rounds, so slow drift of a shared host hits both sides alike):

* OpenVINO IR: edgeprune (``prepare`` + ``measure_on``, the on-device runner exactly as
  ``compile`` runs it) against OpenVINO's own ``benchmark_app`` (``-hint latency
  -infer_precision f32``, the same thread count, ``-t`` seconds; its reported median,
  which is OpenVINO's own per-request timer). Twice: with ``-api async -nireq 1``, the
  API the runner uses (one request, started and waited for), and with benchmark_app's
  latency-mode default ``-api sync`` (the graph partly on the calling thread; see
  ``edgeprune/runner/adapters/openvino.py`` for why the runner does not). The aim is
  judged on the same-API pair; the sync ratio is printed beside it. benchmark_app
  refuses ``-nthreads`` together with a hint (a rule of its command line, not of
  OpenVINO), so the threads go in through ``-load_config`` as ``INFERENCE_NUM_THREADS``,
  which is what ``-nthreads`` sets;
* the ONNX file: edgeprune against a bare ONNX Runtime loop (``sess.run`` timed with
  ``perf_counter_ns`` in a fresh process, the same session options the runner uses:
  intra-op threads, one inter-op thread, sequential, ``ORT_ENABLE_ALL``).

Printed: each pair's medians and ratio per round (the order rotates every round), then
the median over rounds and the verdict against the aim (medians within 5 %). edgeprune's runtime settings (threads,
streams, pinning, precision, read back from the runtime) are printed beside
benchmark_app's, so a difference in settings is visible rather than guessed.

Absolute numbers on a shared machine are noise; the ratio measured side by side is the
figure. The whole run holds this host's device lock, so no other edgeprune run times
at the same moment.

Usage: python benchmarks/harness_fidelity.py [--rounds 6] [--seconds 10] [--threads N] [--out DIR]
       python benchmarks/harness_fidelity.py --rounds 1 --seconds 1      # smoke run
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgeprune.bench.device_lock import device_lock
from edgeprune.bench.measure import measure_on
from edgeprune.bench.settings import BenchSettings
from edgeprune.compile.prepare import PrepareOptions, Prepared, Variant, prepare
from edgeprune.config.devices import LOCAL
from edgeprune.config.targets import get_target
from edgeprune.models.spec import load_model

AIM = 0.05  # medians within 5 %
WARMUP = 10
#: the bare ONNX Runtime loop, run as ``python -c`` in a fresh process (as the runner's worker is)
ORT_LOOP = r"""
import json, sys, time
import numpy as np, onnxruntime as ort
path, inputs, threads, seconds, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
so = ort.SessionOptions()
so.intra_op_num_threads = threads
so.inter_op_num_threads = 1
so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
so.log_severity_level = 3
sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
with np.load(inputs) as d:
    arrays = [d["in%d" % i] for i in range(len(d.files))]
feed = dict(zip([i.name for i in sess.get_inputs()], arrays))
for _ in range(warmup):
    sess.run(None, feed)
ns, times, end = time.perf_counter_ns, [], time.perf_counter_ns() + int(seconds * 1e9)
while True:
    t0 = ns(); sess.run(None, feed); t1 = ns()
    times.append((t1 - t0) / 1e6)
    if t1 >= end and len(times) >= 50:
        break
print(json.dumps({"median_ms": float(np.median(times)), "runs": len(times)}))
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def benchmark_app() -> str:
    """OpenVINO's benchmark_app next to this Python (the venv's), else on PATH."""
    here = Path(sys.executable).with_name("benchmark_app")
    found = str(here) if here.exists() else shutil.which("benchmark_app")
    if not found:
        raise SystemExit("benchmark_app not found (it comes with: pip install openvino)")
    return found


def parse_benchmark_app(text: str) -> dict:
    """benchmark_app's median latency (ms) and the runtime settings it reports."""
    m = re.search(r"Median:\s+([0-9.]+)\s*(ms|us)", text)
    if not m:
        raise RuntimeError("no median latency in benchmark_app's output:\n" + text[-2000:])
    median = float(m.group(1)) / (1000.0 if m.group(2) == "us" else 1.0)
    settings = {}
    for key in ("INFERENCE_NUM_THREADS", "NUM_STREAMS", "ENABLE_CPU_PINNING", "INFERENCE_PRECISION_HINT",
                "PERFORMANCE_HINT", "ENABLE_HYPER_THREADING"):
        s = re.search(rf"\b{key}:[ \t]*(.+)$", text, re.MULTILINE)
        if s:
            settings[key] = s.group(1).strip()
    c = re.search(r"Count:\s+(\d+)", text)
    return {"median_ms": median, "runs": int(c.group(1)) if c else None, "settings": settings}


def run_benchmark_app(xml: Path, threads: int, seconds: int, work: Path, api: str) -> dict:
    cfg = work / "benchmark_app_config.json"
    cfg.write_text(json.dumps({"CPU": {"INFERENCE_NUM_THREADS": str(threads)}}))
    cmd = [benchmark_app(), "-m", str(xml), "-d", "CPU", "-hint", "latency", "-infer_precision", "f32",
           "-t", str(seconds), "-load_config", str(cfg), "-api", api] + (["-nireq", "1"] if api == "async" else [])
    cp = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 10 + 120)
    if cp.returncode != 0:
        raise RuntimeError(f"benchmark_app failed ({cp.returncode}): {cp.stdout[-1500:]}{cp.stderr[-1500:]}")
    return parse_benchmark_app(cp.stdout + cp.stderr)


def run_ort_loop(onnx_path: Path, inputs: Path, threads: int, seconds: float) -> dict:
    cp = subprocess.run([sys.executable, "-c", ORT_LOOP, str(onnx_path), str(inputs), str(threads), str(seconds),
                         str(WARMUP)], capture_output=True, text=True, timeout=seconds * 10 + 120)
    if cp.returncode != 0:
        raise RuntimeError(f"bare ONNX Runtime loop failed: {cp.stderr[-1500:]}")
    return json.loads(cp.stdout.strip().splitlines()[-1])


def run_edgeprune(p: Prepared, job: str) -> dict:
    """One job of the bundle through the runner, as ``compile`` times it."""
    m = measure_on(LOCAL, p.bundle, rounds=1, only=[job])
    r = m.results[job]
    if not r.ok:
        raise RuntimeError(f"edgeprune {job} failed: {r.error}")
    return {"median_ms": float(np.median(r.times_ms)), "runs": len(r.times_ms),
            "settings": r.env.get("runtime_settings", {}), "verified": r.verified}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="zoo:digits-cnn")
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds (each times all four)")
    ap.add_argument("--seconds", type=int, default=10, help="timed seconds per measurement (benchmark_app -t)")
    ap.add_argument("--threads", type=int, default=None, help="threads per inference (default: the host's cores)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    target = get_target("host")
    threads = args.threads or target.num_cores()
    out = args.out or Path(tempfile.mkdtemp(prefix="edgeprune-fidelity-"))
    model = load_model(args.model, log=log)
    settings = BenchSettings(warmup=WARMUP, min_runs=50, min_time_s=float(args.seconds),
                             max_time_s=float(args.seconds) * 3 + 5, threads=threads, rounds=1)
    p = prepare([Variant(model=model)], target, out, PrepareOptions(backends=("openvino", "onnxruntime"),
                                                                    bench=settings), log)
    arts = p.deployed.artifacts
    xml, onnx_path = arts["openvino"].path, arts["onnxruntime"].path
    inputs = p.bundle.dir / "data" / "inputs.npz"
    log(f"{model.name}: {threads} thread(s), {args.rounds} round(s) of {args.seconds} s per measurement")

    # per runtime: edgeprune first, then its references; the first reference judges the aim
    groups = {
        "openvino": [("edgeprune", lambda: run_edgeprune(p, "openvino")),
                     ("benchmark_app async", lambda: run_benchmark_app(xml, threads, args.seconds, out, "async")),
                     ("benchmark_app sync", lambda: run_benchmark_app(xml, threads, args.seconds, out, "sync"))],
        "onnxruntime": [("edgeprune", lambda: run_edgeprune(p, "onnxruntime")),
                        ("bare loop", lambda: run_ort_loop(onnx_path, inputs, threads, args.seconds))],
    }
    got: dict[str, dict[str, list[dict]]] = {k: {name: [] for name, _ in v} for k, v in groups.items()}
    with device_lock(LOCAL, log=log):  # nothing else of edgeprune times on this CPU meanwhile
        for r in range(args.rounds):
            for runtime, sides in groups.items():
                k = r % len(sides)
                for name, fn in sides[k:] + sides[:k]:  # rotated each round: order effects cancel
                    got[runtime][name].append(fn())
                ours = got[runtime]["edgeprune"][-1]["median_ms"]
                refs = "   ".join(f"{name} {got[runtime][name][-1]['median_ms']:.4f} ms "
                                  f"(ratio {ours / got[runtime][name][-1]['median_ms']:.3f})" for name, _ in sides[1:])
                print(f"round {r + 1}  {runtime:<11}  edgeprune {ours:.4f} ms   {refs}", flush=True)

    print(f"\n{model.name}, {threads} thread(s), {args.rounds} interleaved round(s), {args.seconds} s each")
    summary = {"model": model.name, "threads": threads, "rounds": args.rounds, "seconds": args.seconds, "pairs": {}}
    ok_all = True
    for runtime, sides in groups.items():
        ours = [x["median_ms"] for x in got[runtime]["edgeprune"]]
        print(f"{runtime}: edgeprune median {statistics.median(ours):.4f} ms; settings {got[runtime]['edgeprune'][-1]['settings']}")
        for i, (name, _) in enumerate(sides[1:]):
            ref = [x["median_ms"] for x in got[runtime][name]]
            ratios = [a / b for a, b in zip(ours, ref)]
            ratio = statistics.median(ours) / statistics.median(ref)
            judged = i == 0
            ok = abs(ratio - 1) <= AIM
            ok_all &= ok or not judged
            verdict = (f"{'within' if ok else 'OUTSIDE'} {AIM:.0%}" if judged else "for context, not judged")
            print(f"  vs {name}: {statistics.median(ref):.4f} ms, ratio {ratio:.3f} "
                  f"(per round {min(ratios):.3f}-{max(ratios):.3f}) {verdict}")
            if got[runtime][name][-1].get("settings"):
                print(f"    {name} settings: {got[runtime][name][-1]['settings']}")
            summary["pairs"][f"{runtime} vs {name}"] = {"edgeprune_ms": ours, "reference_ms": ref, "ratio": ratio,
                                                         "round_ratios": ratios, "judged": judged, "within_aim": ok}
    (out / "harness_fidelity.json").write_text(json.dumps(summary, indent=1))
    print(f"aim: medians within {AIM:.0%}: {'met' if ok_all else 'NOT met'}; results in {out / 'harness_fidelity.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
