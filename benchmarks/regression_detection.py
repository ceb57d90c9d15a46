"""Regression detection on real measurements, on a quiet host and under load.

Question: an unchanged model once came out of a nightly run on a busy host as
``SLOWER +6.8 % [+0.5 %, +13.6 %]``, confirmed by a second batch. How often does each rule
flag an unchanged artifact (false alarms), and how often does it find a real 3 % and 5 %
slowdown (detection), when tonight is quiet and when tonight is busy but the history was
measured quiet?

Method (everything measured on this machine, in one run of this script, through the
library's own nightly pieces):

1. ``zoo:digits-cnn`` is built once for ``host`` with ONNX Runtime
   (:func:`~edgeprune.flows.compile.compile_model`, the nightly's first batch) and its
   artifact is kept with the nightly's :class:`~edgeprune.flows.nightly.keep.ArtifactKeep`.
2. **History**: ``--history`` runner processes time the artifact alone (earlier nights,
   quiet host).
3. **Tonight**, in two phases: *quiet*, then *load* (``--load-procs`` processes, by
   default one per core, each pinned to its core, spinning numpy matmuls and streaming
   64 MB through the caches; started and stopped by this script).
   Each phase times ``--batches`` paired batches per condition with the nightly's
   :func:`~edgeprune.flows.nightly.pair.paired_bundle` / ``time_paired``: the kept
   artifact (the baseline) in alternating rounds with "tonight's" artifact, which is the
   same file with the runner's ``inject_slowdown`` hook (every inference busy-waits to
   1.00 / 1.03 / 1.05 x its time). Conditions are timed in a shuffled order, so the
   host's slow drifts hit all of them.
4. A **trial** is one night: 5 of the history batches are the baseline, tonight's
   batches are drawn from the condition's pool, and the nightly's own rules decide:
   :func:`~edgeprune.results.evaluate.latency_verdict` on the first batch and, while
   :func:`~edgeprune.results.evaluate.another_batch` asks for it (UNKNOWN, or a first
   SLOWER to confirm), on one more. The history method (the fallback when no baseline
   artifact is kept) judges the same nights on tonight's halves alone; asv's rule
   (U p < 0.002 and a 1.1 factor) and compare.py's (U p < 0.05) judge the baseline
   against tonight's first half.

False alarm = SLOWER or FASTER on an A/A night; detection = SLOWER on a slowed night;
busy = the paired method refused to judge (UNKNOWN, "device busy"). Trials resample a
finite pool of real batches, so they are not independent draws of the machine: the
brackets are Wilson 95 % intervals over trials, and the pool size is printed beside them.
Aim (issue 18): <= 1 % false alarms with >= 95 % of 5 % slowdowns found, under load too;
on a quiet host also >= 95 % of 3 %.

Usage: python benchmarks/regression_detection.py            # ~10 min on 2 cores
       python benchmarks/regression_detection.py --quick    # smoke test, ~1-2 min
       [--save-pool pool.json | --load-pool pool.json] [--json rates.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeprune.results.detect import DetectSettings, asv_rule, compare_py_rule
from edgeprune.results.evaluate import CellOutcome, Paired, Policy, another_batch, latency_verdict
from edgeprune.results.paired import PairedBatch, batch_stats
from edgeprune.results.records import Measurement

CELL = ("bench", "host", "local", "onnxruntime", "")
PHASES = ("quiet", "load")
SPIN = ("import os, sys, numpy as np\n"
        "if hasattr(os, 'sched_setaffinity'):\n    os.sched_setaffinity(0, {int(sys.argv[1])})\n"
        "a = np.random.default_rng(0).random((1024, 1024)) / 1024\n"
        "big = np.zeros(8 << 20)\n"  # 64 MB streamed each turn: the caches the benchmark shares are thrashed too
        "while True:\n    a = a @ a + 0.5\n    a /= np.abs(a).max()\n    big += 1.0\n")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- measuring
class Load:
    """``n`` processes spinning numpy matmuls (1024 x 1024) and streaming 64 MB, each pinned to
    one of the last cores: cores and caches are shared, as on a busy CI host."""

    def __init__(self, n: int) -> None:
        self.n, self.procs = n, []

    def __enter__(self) -> "Load":
        has_mask = hasattr(os, "sched_getaffinity")
        cores = sorted(os.sched_getaffinity(0)) if has_mask else list(range(os.cpu_count() or 1))
        env = os.environ | {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        for i in range(self.n):
            core = cores[-1 - (i % len(cores))]
            self.procs.append(subprocess.Popen([sys.executable, "-c", SPIN, str(core)], env=env))
        time.sleep(1.0)  # let them reach full speed
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def collect_pool(args) -> dict:
    """Build and keep the artifact, time the history, then the paired batches of both phases
    (in a temporary folder, removed afterwards)."""
    out = Path(tempfile.mkdtemp(prefix="edgeprune-regdet-"))
    try:
        return _measure(args, out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _measure(args, out: Path) -> dict:
    from edgeprune.bench.measure import Bundle, measure_on
    from edgeprune.bench.settings import BenchSettings
    from edgeprune.config.devices import LOCAL
    from edgeprune.config.targets import get_target
    from edgeprune.flows.compile import CompileOptions, compile_model
    from edgeprune.flows.nightly.keep import ArtifactKeep, copy_job
    from edgeprune.flows.nightly.pair import paired_bundle, time_paired
    from edgeprune.models.spec import load_model
    from edgeprune.results.records import artifact_files, file_sha256

    settings = BenchSettings(warmup=args.warmup, min_runs=args.min_runs, min_time_s=args.min_time,
                             threads=args.threads)
    summary = compile_model(load_model(args.model, log=log), get_target("host"), LOCAL, out,
                            CompileOptions(backends=("onnxruntime",), bench=settings), log=log)
    b = summary.backends[0]
    if not b.ok:
        raise SystemExit(f"could not build/run the artifact: {b.error}")
    job = next(j for j in Bundle.load(out / "bundle").jobs if j.id == "onnxruntime")
    keep = ArtifactKeep(out / "kept")
    digest = file_sha256(artifact_files(b.artifact))
    keep.add(CELL, digest, job, out / "bundle")
    kept = keep.get(CELL, digest)
    if kept is None:
        raise SystemExit(f"could not keep the artifact in {keep.root}")
    t0 = time.monotonic()
    alone = dataclasses.replace(copy_job(job, out / "bundle", out / "alone"), warmup=settings.warmup,
                                min_runs=settings.min_runs, min_time_s=settings.min_time_s)
    history = []
    for i in range(args.history):
        r = measure_on(LOCAL, Bundle(out / "alone", [alone]), timeout_s=600).results["onnxruntime"]
        if not r.ok:
            raise SystemExit(f"history batch {i}: {r.error}")
        history.append(r.times_ms)
    log(f"history: {args.history} batches in {time.monotonic() - t0:.0f} s")
    conditions = {"A/A": 1.0} | {f"+{s:g}%": 1 + s / 100 for s in args.slowdowns}
    rng = random.Random(args.seed)
    pool: dict = {"model": args.model, "threads": b.threads, "min_runs": args.min_runs, "min_time_s": args.min_time,
                  "rounds": args.pair_rounds, "load_procs": args.load_procs, "env": b.env, "history": history,
                  "conditions": conditions, "phases": {}}
    for phase in PHASES:
        order = [c for c in conditions for _ in range(args.batches)]
        rng.shuffle(order)
        got: dict[str, list] = {c: [] for c in conditions}
        with (Load(args.load_procs) if phase == "load" else _Nothing()):
            t1 = time.monotonic()
            for i, cond in enumerate(order):
                new = (dataclasses.replace(job, inject_slowdown=conditions[cond]), out / "bundle")
                bundle = paired_bundle(out / "paired", new, kept, settings, args.pair_rounds)
                batch, _, _ = time_paired(LOCAL, bundle, timeout_s=600, log=lambda m: None)
                got[cond].append(batch.rounds)
                if (i + 1) % 10 == 0 or i + 1 == len(order):
                    el = time.monotonic() - t1
                    log(f"{phase}: {i + 1}/{len(order)} paired batches ({el:.0f} s, "
                        f"~{el / (i + 1) * (len(order) - i - 1):.0f} s left)")
        pool["phases"][phase] = got
    return pool


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


# --------------------------------------------------------------------------- judging
def _m(times: list[float], run_id: int, artifact: str, attempt: int = 0) -> Measurement:
    return Measurement(model=CELL[0], target=CELL[1], device=CELL[2], backend=CELL[3], times_ms=list(times),
                       verified=True, series="bench", artifact_hash=artifact, model_hash=artifact, run_id=run_id,
                       id=run_id * 10 + attempt, attempt=attempt)


def night(policy: Policy, base: list[Measurement], tonight: list[list], paired: bool) -> tuple[str, bool, int]:
    """One night with the nightly's rules: (latency verdict, refused as busy, batches used)."""
    ref = base[-1]
    state = Paired(reference=ref) if paired else None
    good: list[Measurement] = []

    def add() -> None:
        batch = PairedBatch(rounds=[(list(c), list(b)) for c, b in tonight[len(good)]])
        good.append(_m(batch.current_times, 999, "tonight", len(good)))
        if state is not None:
            state.batches.append(batch)

    add()
    while True:
        v = latency_verdict(good, base, "5 earlier runs", policy, state)
        outcome = CellOutcome(cell=CELL, measurements=good, verdicts=[v])
        if len(good) >= len(tonight) or not another_batch(outcome, policy):
            return v.verdict, bool(v.data.get("busy")), len(good)
        add()


def detect_settings(args) -> DetectSettings:
    """The library's defaults, with what the command line overrides (to try a threshold
    on saved measurements: --load-pool)."""
    d = DetectSettings()
    return DetectSettings(min_effect=args.min_effect, busy_noise=args.busy_noise or d.busy_noise,
                          pair_noise=args.pair_noise if args.pair_noise is not None else d.pair_noise,
                          confidence=args.confidence or d.confidence)


def run_trials(pool: dict, args) -> dict:
    policy = Policy(detect=detect_settings(args), max_remeasure=args.max_remeasure, pair_rounds=args.pair_rounds)
    history = [_m(t, i + 1, "baseline") for i, t in enumerate(pool["history"])]
    rng = random.Random(args.seed)
    k = min(args.baseline_runs, len(history))
    need = 1 + args.max_remeasure
    res: dict = {}
    for phase, conds in pool["phases"].items():
        for cond, batches in conds.items():
            rows: dict[str, list] = {}
            for _ in range(args.trials):
                base = sorted(rng.sample(history, k), key=lambda m: m.run_id)
                tonight = rng.sample(batches, min(need, len(batches)))
                for name, paired in (("edgeprune paired (default)", True), ("edgeprune history (fallback)", False)):
                    v, busy, n = night(policy, base, tonight, paired)
                    rows.setdefault(name, []).append((v, busy, n))
                first = [t for c, _ in tonight[0] for t in c]
                sessions = [m.times_ms for m in base]
                a, g = asv_rule(sessions, first), compare_py_rule(sessions, first)
                rows.setdefault("asv (U p<0.002, x1.1)", []).append(
                    ("SLOWER" if a.slower else "FASTER" if a.flagged else "SAME", False, 1))
                rows.setdefault("compare.py (U p<0.05)", []).append(
                    ("SLOWER" if g.slower else "FASTER" if g.flagged else "SAME", False, 1))
            res.setdefault(phase, {})[cond] = rows
    return res


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def noise_summary(pool: dict, settings: DetectSettings) -> list[str]:
    """Per phase: the level, how far the load moved the baseline artifact, and how much the pairs scatter."""
    hist = pool["history"]
    q = settings.quantile
    lines = [f"history: {len(hist)} batches, p10 {np.median([np.quantile(t, q) for t in hist]):.3f} ms "
             f"(median {np.median([np.median(t) for t in hist]):.3f} ms)"]
    for phase, conds in pool["phases"].items():
        batches = [PairedBatch(rounds=r) for r in conds["A/A"]]
        st = [batch_stats(b, settings, hist) for b in batches]
        cv = np.median([np.std(b.baseline_times) / np.mean(b.baseline_times) for b in batches])
        lines.append(f"{phase}: baseline artifact vs history {np.median([s.drift for s in st]) - 1:+.1%} (median), "
                     f"pair scatter {np.median([s.scatter for s in st]):.2%} (median sd), within-batch CV {cv:.0%}, "
                     f"{sum(bool(s.busy) for s in st)}/{len(st)} A/A batches busy")
    return lines


def report(pool: dict, res: dict, args, measured_s: float | None) -> dict:
    env = pool.get("env") or {}
    conds = list(pool["conditions"])
    print(f"\n{pool['model']} / onnxruntime on {env.get('cpu', '?')} ({env.get('cores', '?')} cores), "
          f"{pool['threads']} thread(s); paired batches of {pool['rounds']} rounds, >= {pool['min_runs']} runs and "
          f">= {pool['min_time_s']} s per artifact; load: {pool['load_procs']} spinning process(es)"
          + (f"; measured in {measured_s:.0f} s" if measured_s else ""))
    for line in noise_summary(pool, detect_settings(args)):
        print("  " + line)
    sizes = {ph: len(next(iter(c.values()))) for ph, c in pool["phases"].items()}
    print(f"{args.trials} trials per cell, resampled from {sizes} batches per condition; baseline = "
          f"{min(args.baseline_runs, len(pool['history']))} history batches; min effect {args.min_effect:.0%}, "
          f"up to {args.max_remeasure} more batches per night\n")
    rules = list(next(iter(next(iter(res.values())).values())))
    width = max(len(r) for r in rules) + 8
    head = "".join(f"{('false alarms' if c == 'A/A' else 'detected ' + c):>22}" for c in conds)
    print(f"{'phase / rule':<{width}}{head}{'busy (A/A)':>12}{'batches':>9}")
    table: dict = {}
    for phase in res:
        for rule in rules:
            cells = []
            for cond in conds:
                v = res[phase][cond][rule]
                flagged = ("SLOWER", "FASTER") if cond == "A/A" else ("SLOWER",)
                k = sum(x[0] in flagged for x in v)
                lo, hi = wilson(k, len(v))
                table.setdefault(phase, {}).setdefault(rule, {})[cond] = {"rate": k / len(v), "ci95": [lo, hi],
                                                                          "n": len(v)}
                cells.append(f"{k / len(v):>7.1%} [{lo:.0%}-{hi:.0%}]")
            aa = res[phase]["A/A"][rule]
            busy = sum(x[1] for x in aa) / len(aa)
            batches = np.mean([x[2] for c in conds for x in res[phase][c][rule]])
            table[phase][rule]["busy_aa"], table[phase][rule]["batches"] = busy, float(batches)
            print(f"{phase + ' / ' + rule:<{width}}" + "".join(f"{c:>22}" for c in cells) + f"{busy:>12.1%}"
                  + f"{batches:>9.2f}")
    print("\npaired: the kept baseline artifact and tonight's timed in alternating rounds of one runner process; "
          f"history: tonight's batches against the {min(args.baseline_runs, len(pool['history']))} earlier ones "
          "(the fallback);\nasv / compare.py: U tests on "
          "the pooled per-inference times of the same baseline and tonight's first batch.")
    return table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny settings: a smoke test in a minute or two")
    ap.add_argument("--model", default="zoo:digits-cnn")
    ap.add_argument("--history", type=int, default=8, help="earlier nights: batches of the artifact alone")
    ap.add_argument("--batches", type=int, default=12, help="paired batches per condition and phase")
    ap.add_argument("--slowdowns", type=float, nargs="+", default=[3.0, 5.0], help="injected slowdowns, percent")
    ap.add_argument("--load-procs", type=int, default=0,
                    help="spinning processes in the load phase (0: one per core, as on a host whose load average "
                         "exceeds its cores; 1: a single competing core)")
    ap.add_argument("--trials", type=int, default=200, help="nights resampled per phase and condition")
    ap.add_argument("--warmup", type=int, default=10, help="as in nightly.yaml")
    ap.add_argument("--min-runs", type=int, default=100, help="per artifact and batch, as in nightly.yaml")
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per artifact and batch, as in nightly.yaml")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pair-rounds", type=int, default=Policy().pair_rounds)
    ap.add_argument("--baseline-runs", type=int, default=5)
    ap.add_argument("--max-remeasure", type=int, default=Policy().max_remeasure)
    ap.add_argument("--min-effect", type=float, default=DetectSettings().min_effect)
    ap.add_argument("--busy-noise", type=float, default=None, help="default: the library's DetectSettings")
    ap.add_argument("--pair-noise", type=float, default=None, help="default: the library's DetectSettings")
    ap.add_argument("--confidence", type=float, default=None, help="default: the library's DetectSettings")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-pool", type=Path)
    ap.add_argument("--load-pool", type=Path, help="re-analyse saved measurements instead of measuring")
    ap.add_argument("--json", type=Path, help="also write the rates as JSON here")
    args = ap.parse_args()
    if args.quick:
        args.history, args.batches, args.trials = min(args.history, 3), min(args.batches, 2), min(args.trials, 40)
        args.warmup, args.min_runs, args.min_time = 3, 60, 0.3
    if args.batches < 1 or args.history < 1 or args.trials < 1 or args.load_procs < 0:
        ap.error("--batches, --history and --trials must be >= 1, --load-procs >= 0")
    if args.load_procs == 0:
        args.load_procs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    t0 = time.monotonic()
    pool = json.loads(args.load_pool.read_text()) if args.load_pool else collect_pool(args)
    if args.save_pool:
        args.save_pool.write_text(json.dumps(pool))
    measured_s = None if args.load_pool else time.monotonic() - t0
    res = run_trials(pool, args)
    table = report(pool, res, args, measured_s)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rates": table},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
