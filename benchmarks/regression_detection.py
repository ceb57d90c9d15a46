"""Regression detection on real measurements: edgeprune's detector vs asv's and compare.py's rules.

Question: given the last few nightly runs of a cell as the baseline and tonight's run,
how often does each rule flag a real 3 %, 5 % and 10 % slowdown (detection rate), and
how often does it flag an unchanged artifact (false-alarm rate)?

Method (everything measured on this machine, in one run of this script):

1. ``zoo:digits-cnn`` is exported and built once for ``host`` with ONNX Runtime.
2. The artifact is timed in ``--rounds`` *rounds*. Each round is one fresh runner
   process (the same on-device runner as ``edgeprune bench``) that times five jobs in
   a random order: ``A`` and ``A2`` (the same artifact, unchanged) and ``B3``, ``B5``,
   ``B10`` (the runner's ``inject_slowdown`` hook busy-waits so that every inference
   takes 1.03 / 1.05 / 1.10 x as long). Each job is a full measurement batch with the
   nightly settings (warm-up, then >= ``--min-runs`` inferences and >= ``--min-time``
   seconds), so every batch carries its own process- and time-level noise.
3. A *trial* imitates one night: pick a round ``c`` as "tonight", take ``A`` of 5
   earlier rounds as the baseline (the last good runs), and as tonight's measurement
   the condition's job of round ``c`` (``A2`` for A/A). If edgeprune answers UNKNOWN it
   re-measures, as the nightly runner does: the same job of rounds ``c+1``, ``c+2``.
   asv's rule (Mann–Whitney U p < 0.002 and a 1.1 factor) and compare.py's rule (U test
   at alpha = 0.05) judge the same baseline against tonight's first batch. Trials are
   resampled from the pool of real batches (``--trials`` per condition, >= 50), so
   they are not independent draws of the machine: the rates are estimates over this
   pool, with Wilson 95 % intervals printed beside them.

Detection = verdict SLOWER on an A/B trial; false alarm = SLOWER or FASTER on an A/A
trial. Aim from the issue: >= 95 % detection of 5 % slowdowns with <= 1 % false alarms.

Recorded on the shared 2-core host (load ~10), 200 trials per condition, Wilson 95 % CI:
edgeprune (p10 default) false alarms 0.0 % [0-2], detected +3 % 25.5 %, +5 % 98.0 % [95-99],
+10 % 100 %; edgeprune with the median 9.0 % false alarms, +5 % 42.5 %; asv 0.0 % / 7.0 %
at +5 %; compare.py 75.0 % false alarms / 99.5 % at +5 % (full table in docs/nightly.md).

Usage: python benchmarks/regression_detection.py [--rounds 40] [--trials 200]
       [--save-pool pool.json | --load-pool pool.json]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edgeprune.results.detect import DetectSettings, Verdict, asv_rule, compare, compare_py_rule

CONDITIONS = {"A/A": ("A2", 1.0), "+3%": ("B3", 1.03), "+5%": ("B5", 1.05), "+10%": ("B10", 1.10)}
JOBS = {"A": 1.0, "A2": 1.0, "B3": 1.03, "B5": 1.05, "B10": 1.10}


def collect_pool(args) -> dict:
    """Build the artifact once, then time the five jobs in ``rounds`` runner processes."""
    from edgeprune.bench.bundle import BenchJob
    from edgeprune.bench.measure import Bundle, measure_on
    from edgeprune.bench.settings import BenchSettings
    from edgeprune.flows.compile import CompileOptions, compile_model
    from edgeprune.config.devices import LOCAL
    from edgeprune.config.targets import get_target
    from edgeprune.models.spec import load_model

    def log(m: str) -> None:
        print(m, file=sys.stderr, flush=True)

    out = Path(tempfile.mkdtemp(prefix="edgeprune-regdet-"))
    model = load_model(args.model, log=log)
    settings = BenchSettings(warmup=5, min_runs=args.min_runs, min_time_s=args.min_time, threads=args.threads)
    summary = compile_model(model, get_target("host"), LOCAL, out, CompileOptions(backends=("onnxruntime",), bench=settings),
                            log=log)
    b = summary.backends[0]
    if not b.ok:
        raise SystemExit(f"could not build/run the artifact: {b.error}")
    bundle = out / "bundle"
    base = json.loads((bundle / "manifest.json").read_text())["jobs"][0]
    rng = random.Random(args.seed)
    rounds = []
    t0 = time.monotonic()
    for r in range(args.rounds):
        names = list(JOBS)
        rng.shuffle(names)
        jobs = [BenchJob.from_dict(base | {"id": n, "inject_slowdown": JOBS[n], "eval": None}) for n in names]
        results = measure_on(LOCAL, Bundle(bundle, jobs), timeout_s=600).results
        bad = [n for n in names if not results[n].ok]
        if bad:
            raise SystemExit(f"round {r}: job(s) {bad} failed: {results[bad[0]].error}")
        rounds.append({n: results[n].times_ms for n in JOBS})
        if (r + 1) % 5 == 0:
            el = time.monotonic() - t0
            log(f"round {r + 1}/{args.rounds} ({el:.0f} s, ~{el / (r + 1) * (args.rounds - r - 1):.0f} s left)")
    return {"model": args.model, "backend": "onnxruntime", "threads": b.threads, "min_runs": args.min_runs,
            "min_time_s": args.min_time, "env": b.env, "rounds": rounds}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def edgeprune_verdict(base: list, currents: list, settings: DetectSettings, max_remeasure: int) -> tuple[str, int]:
    """The nightly runner's procedure: judge, and while UNKNOWN measure again (next batch)."""
    cur = [currents[0]]
    verdict = compare(base, cur, settings).verdict
    while verdict is Verdict.UNKNOWN and len(cur) <= max_remeasure:
        cur.append(currents[len(cur)])
        verdict = compare(base, cur, settings).verdict
    return verdict.value, len(cur)


def run_trials(pool: dict, trials: int, baseline_runs: int, max_remeasure: int, variants: dict[str, DetectSettings],
               seed: int) -> dict[str, dict[str, list]]:
    """Per condition and rule: the verdicts of ``trials`` resampled nights."""
    rounds = pool["rounds"]
    n = len(rounds)
    if n < baseline_runs + 1 + max_remeasure:
        raise SystemExit(f"need at least {baseline_runs + 1 + max_remeasure} rounds, have {n}")
    rng = random.Random(seed)
    default = next(iter(variants))
    out: dict[str, dict[str, list]] = {}
    for cond, (job, _factor) in CONDITIONS.items():
        res: dict[str, list] = {}
        for _ in range(trials):
            c = rng.randrange(baseline_runs, n - max_remeasure)
            base = [rounds[i]["A"] for i in rng.sample(range(c), baseline_runs)]
            currents = [rounds[c + k][job] for k in range(max_remeasure + 1)]
            for name, settings in variants.items():
                v, k = edgeprune_verdict(base, currents, settings, max_remeasure)
                res.setdefault(name, []).append(v)
                res.setdefault(f"{name}: batches", []).append(k)
            v, _ = edgeprune_verdict(base, currents, variants[default], 0)
            res.setdefault(f"{default}, no re-measure", []).append(v)
            a = asv_rule(base, currents[0])
            res.setdefault("asv (p<0.002, x1.1)", []).append("SLOWER" if a.slower else "FASTER" if a.flagged else "SAME")
            g = compare_py_rule(base, currents[0])
            res.setdefault("compare.py (p<0.05)", []).append("SLOWER" if g.slower else "FASTER" if g.flagged else "SAME")
        out[cond] = res
    return out


def noise_summary(pool: dict) -> str:
    a = np.array([np.median(r["A"]) for r in pool["rounds"]])
    a2 = np.array([np.median(r["A2"]) for r in pool["rounds"]])
    within = np.median([np.std(r["A"], ddof=1) / np.mean(r["A"]) for r in pool["rounds"]])
    between = np.std(np.log(np.concatenate([a, a2])), ddof=1)
    ratios = {j: np.median([np.median(r[j]) / np.median(r["A"]) for r in pool["rounds"]]) for j in ("A2", "B3", "B5", "B10")}
    return (f"median {np.median(a):.3f} ms per inference; within-batch CV {within:.1%} (median); "
            f"between-batch sd of medians {between:.2%}; measured median ratio vs A: "
            + ", ".join(f"{j} {v:.3f}" for j, v in ratios.items()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="zoo:digits-cnn")
    ap.add_argument("--rounds", type=int, default=40, help="runner processes, each timing all five jobs")
    ap.add_argument("--trials", type=int, default=200, help="trials per condition (>= 50)")
    ap.add_argument("--min-runs", type=int, default=100, help="as in nightly.yaml")
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds, as in nightly.yaml")
    ap.add_argument("--threads", type=int, default=1, help="inference threads (1 keeps the shared box calmer)")
    ap.add_argument("--baseline-runs", type=int, default=5)
    ap.add_argument("--max-remeasure", type=int, default=2)
    ap.add_argument("--min-effect", type=float, default=DetectSettings().min_effect)
    ap.add_argument("--statistic", default=DetectSettings().statistic, help="edgeprune's per-run location (first row)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-pool", type=Path)
    ap.add_argument("--load-pool", type=Path, help="re-analyse saved measurements instead of measuring")
    ap.add_argument("--json", type=Path, help="also write the rates as JSON here")
    args = ap.parse_args()
    if args.trials < 50:
        ap.error("--trials must be >= 50")

    t0 = time.monotonic()
    pool = json.loads(args.load_pool.read_text()) if args.load_pool else collect_pool(args)
    if args.save_pool:
        args.save_pool.write_text(json.dumps(pool))
    measured_s = time.monotonic() - t0
    stats = [args.statistic] + [x for x in ("median", "p10") if x != args.statistic]
    variants = {f"edgeprune ({st})": DetectSettings(min_effect=args.min_effect, statistic=st) for st in stats}
    res = run_trials(pool, args.trials, args.baseline_runs, args.max_remeasure, variants, args.seed)
    first = next(iter(variants.values()))

    env = pool.get("env") or {}
    print(f"\n{pool['model']} / {pool['backend']} on {env.get('cpu', '?')} ({env.get('cores', '?')} cores), "
          f"{pool['threads']} thread(s); {len(pool['rounds'])} rounds x 5 batches of >= {pool['min_runs']} runs "
          f"and >= {pool['min_time_s']} s" + (f"; measured in {measured_s:.0f} s" if not args.load_pool else ""))
    print(noise_summary(pool))
    print(f"{args.trials} trials per condition; baseline = {args.baseline_runs} earlier batches of A; edgeprune: "
          f"min effect {first.min_effect:.0%}, {first.confidence:.0%} CI, up to {args.max_remeasure} re-measurements")
    print()
    rules = [r for r in next(iter(res.values())) if not r.endswith(": batches")]
    width = max(len(r) for r in rules) + 2
    print(f"{'rule':<{width}}" + "".join(f"{c:>21}" for c in CONDITIONS))
    print(f"{'':<{width}}" + f"{'false alarms':>21}" + "".join(f"{'detected':>21}" for _ in list(CONDITIONS)[1:]))
    table: dict[str, dict] = {}
    for rule in rules:
        cells = []
        for cond, r in res.items():
            v = r[rule]
            flagged = ("SLOWER", "FASTER") if cond == "A/A" else ("SLOWER",)
            k = sum(x in flagged for x in v)
            lo, hi = wilson(k, len(v))
            table.setdefault(rule, {})[cond] = {"rate": k / len(v), "ci95": [lo, hi], "n": len(v)}
            cells.append(f"{k / len(v):>6.1%} [{lo:.0%}-{hi:.0%}]")
        print(f"{rule:<{width}}" + "".join(f"{c:>21}" for c in cells))
    print()
    for name in variants:
        for cond, r in res.items():
            v = r[name]
            print(f"{name} {cond:>5}: " + ", ".join(f"{x} {v.count(x)}" for x in ("SLOWER", "SAME", "UNKNOWN", "FASTER")
                                                    if v.count(x))
                  + f"; batches measured per night {np.mean(r[name + ': batches']):.2f}")
    print("\nasv: U test p < 0.002 and ratio > 1.1; compare.py: U test p < 0.05 (both on the pooled per-inference "
          "times of the same baseline and first batch).")
    if args.json:
        args.json.write_text(json.dumps({"settings": {k: asdict(v) for k, v in variants.items()}, "trials": args.trials,
                                         "rates": table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
