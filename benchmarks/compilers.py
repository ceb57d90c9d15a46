"""Compilers side by side on this host: ONNX Runtime, OpenVINO, TVM untuned, TVM tuned
(MetaSchedule, with the tuning time spent) and INT8, as ratios to ONNX Runtime and as a
fraction of the fp32 FLOP roofline; plus ``--backend auto`` against the best single backend.

Models: resnet18, mobilenetv2 (random weights: latency only) and a pruned digits-cnn
(pruned to --prune-budget of its latency with the pruning stage; if pruning is not
available or fails, the unpruned digits-cnn, and the output says so).

Every variant of a model is built into ONE bundle by the library's ``prepare`` and timed
by ``measure`` (the on-device runner, ``--rounds`` interleaved rounds, job order rotated
each round), exactly as ``compile`` times its artifacts, so the ratios compare like with
like on a shared, noisy machine. ``auto`` decides on the
first ``--decide-rounds`` rounds exactly as ``edgeprune compile --rounds N`` does (fastest
artifact that passed parity and accuracy, by the fast state of its round medians); the later
rounds are held out and show how its pick fares against the best single backend there
(per round, and over all held-out rounds).

Tuning: records go to the target's tuning database and are kept, so a rerun tunes only
what is missing (``--trials`` is the *total* per model). The tuning time reported is the
sum of every recorded tuning session of that model (this run and earlier ones).

Usage:
    python benchmarks/compilers.py --trials 64 --model-trials digits-pruned=400 \\
        --model-trials resnet18=200 --time-budget 30m --out out/bench-compilers
    python benchmarks/compilers.py --no-tune          # measure with whatever records exist
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.bench.measure import Measurements, measure
from edgeprune.bench.rounds import fast_state_ms, rounds_faster
from edgeprune.bench.settings import BenchSettings
from edgeprune.bench.stats import LatencyStats
from edgeprune.compile.analysis import graph_cost
from edgeprune.compile.export import export_onnx
from edgeprune.compile.prepare import PrepareOptions, Prepared, Variant, prepare
from edgeprune.compile.quantize import INT8_PARITY_RULE
from edgeprune.compile.summarize import backend_results, choose_backend
from edgeprune.compile.summary import BackendResult
from edgeprune.compile.backends.tvm import TuneSettings, TuningDatabase, tune_model
from edgeprune.durations import parse_duration
from edgeprune.config.devices import LOCAL
from edgeprune.config.targets import Target, get_target
from edgeprune.models.base import LoadedModel
from edgeprune.models.spec import load_model

FP32 = ["onnxruntime", "openvino", "tvm-untuned", "tvm"]
INT8 = ["onnxruntime-int8", "openvino-int8"]
#: what `edgeprune compile --quantize int8` would build and let auto choose from
AUTO_CANDIDATES = ["onnxruntime", "openvino", "tvm"]
AIM = 1.2  # tuned TVM within 1.2x of ONNX Runtime on ResNet-18 (issue 8)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load(name: str, prune_budget: float) -> tuple[LoadedModel, str]:
    """The model and a note on what it is (pruned or not, and why not)."""
    if name != "digits-pruned":
        return load_model(f"zoo:{name}", log=log), ""
    base = load_model("zoo:digits-cnn", log=log)
    try:
        from edgeprune.flows.prune import prune_model
        from edgeprune.prune.options import PruneOptions, pruned_loaded_model
    except ImportError as exc:
        return base, f"pruning unavailable ({exc}): the UNPRUNED digits-cnn is measured"
    try:
        res = prune_model(base, get_target("host"), LOCAL, PruneOptions(budget=prune_budget, finetune_epochs=3),
                          log=log, progress=False)
    except Exception as exc:  # noqa: BLE001 - report and carry on with the unpruned model
        return base, f"pruning failed ({type(exc).__name__}: {exc}): the UNPRUNED digits-cnn is measured"
    pruned = pruned_loaded_model(base, res)
    acc = f", accuracy {res.accuracy_before:.2f}% -> {res.accuracy_after:.2f}%" if res.accuracy_after is not None else ""
    return pruned, (f"digits-cnn pruned to {prune_budget:g} of its predicted latency ({res.strategy}/{res.importance}): "
                    f"{res.macs_before / 1e6:.1f} -> {res.macs_after / 1e6:.1f} M MACs{acc}")


def tuning_spent(db: TuningDatabase, model_name: str) -> tuple[float, int, int]:
    """(seconds, trials, sessions) of every recorded tuning session of ``model_name``."""
    sessions = [s for s in db.read_meta().get("sessions", []) if s.get("model") == model_name]
    return (sum(float(s.get("seconds", 0)) for s in sessions), sum(int(s.get("trials", 0)) for s in sessions),
            len(sessions))


UNTUNED = "untuned:"


def measure_variants(model: LoadedModel, exp, target: Target, work: Path, settings: BenchSettings,
                     rounds: int) -> tuple[Prepared, Measurements]:
    """Every variant built into one bundle by the library (``prepare``: ONNX Runtime,
    OpenVINO, tuned TVM, INT8, and TVM with its tuning records off as a second variant)
    and timed by ``measure`` in ``rounds`` interleaved rounds, as ``compile`` does."""
    untuned = target.model_copy(update={"backend_options": {
        **target.backend_options, "tvm": {**target.options_for("tvm"), "tuning": "off"}}})
    variants = [Variant(model=model, exported=exp),
                Variant(model=model, prefix=UNTUNED, backends=("tvm",), target=untuned, quantize=False, exported=exp)]
    opts = PrepareOptions(backends=tuple(AUTO_CANDIDATES), bench=settings, quantize="int8")
    prepared = prepare(variants, target, work, opts, log)
    measured = measure(prepared.bundle, [LOCAL], rounds=rounds, timeout_s=settings.timeout_s, log=log)[LOCAL.name]
    return prepared, measured


def variant_results(prepared: Prepared, measured: Measurements) -> dict[str, BackendResult]:
    """One merged BackendResult per variant name of FP32 + INT8 (all rounds' times, the
    round medians, parity and accuracy from round 1), as ``compile`` summarizes."""
    rows = {b.name: b for b in backend_results(prepared, measured, True)}
    untuned = prepared.variant(UNTUNED)
    if untuned is not None:
        for b in backend_results(prepared, measured, True, untuned):
            rows[f"{b.name}-untuned"] = dataclasses.replace(b, name=f"{b.name}-untuned")
    return {n: rows.get(n) or BackendResult(name=n, artifact=None, error="not built") for n in FP32 + INT8}


def round_tables(rows: dict[str, BackendResult], rounds: int) -> list[list[BackendResult]]:
    """The merged results split back into one table per round (each row's latency is
    that round's median), for the per-round columns and the held-out checks."""
    tables = []
    for r in range(rounds):
        table = []
        for n in FP32 + INT8:
            b = rows[n]
            if b.ok and r < len(b.round_medians_ms):
                table.append(dataclasses.replace(b, latency_ms=LatencyStats.from_times([b.round_medians_ms[r]]),
                                                 round_medians_ms=[b.round_medians_ms[r]], speedup_vs_reference=None))
            else:
                table.append(dataclasses.replace(b, latency_ms=None, error=b.error or f"round {r + 1} missing"))
        tables.append(table)
    return tables


def held_out_checks(tables: list[list[BackendResult]], k: int, choice: str | None) -> dict[str, Any]:
    """auto's pick against the best single backend in the rounds it did not decide on:
    per round (vs that round's fastest, an oracle no single backend matches) and over
    all held-out rounds (vs the backend with the lowest fast state of its held-out round
    medians, the estimator auto decides with; plain medians beside it)."""
    held = tables[k:] if len(tables) > k else tables
    per_round, meds = [], {}
    for i, rows in enumerate(held):
        by = {b.name: b for b in rows if b.ok and b.verified is not False}
        singles = {n: by[n].latency_ms.median for n in AUTO_CANDIDATES if n in by}  # type: ignore[union-attr]
        for n, v in singles.items():
            meds.setdefault(n, []).append(v)
        if not singles or choice not in singles:
            continue
        best = min(singles, key=singles.get)  # type: ignore[arg-type]
        per_round.append({"round": k + i + 1 if len(tables) > k else i + 1, "auto": choice, "auto_ms": singles[choice],
                          "best": best, "best_ms": singles[best], "ratio": singles[choice] / singles[best]})
    overall = None
    if choice in meds:
        same = {n: v for n, v in meds.items() if len(v) == len(meds[choice])}
        med = {n: fast_state_ms(v) for n, v in same.items()}  # the estimator auto decides with
        plain = {n: float(np.median(v)) for n, v in same.items()}
        best = min(med, key=med.get)  # type: ignore[arg-type]
        best_plain = min(plain, key=plain.get)  # type: ignore[arg-type]
        won, n = rounds_faster(meds[choice], meds[best]) if best != choice else (len(meds[choice]), len(meds[choice]))
        overall = {"best_single": best, "ratio": med[choice] / med[best], "rounds": len(meds[choice]),
                   "pick_faster_rounds": won if best != choice else None,
                   "medians": {n: round(v, 4) for n, v in med.items()},
                   "plain_median": {"best_single": best_plain, "ratio": plain[choice] / plain[best_plain],
                                    "medians": {n: round(v, 4) for n, v in plain.items()}}}
    return {"decided_on_rounds": k, "per_round": per_round, "held_out": overall}


def bench_model(name: str, args, target: Target, root: Path) -> dict[str, Any]:
    log(f"== {name}")
    model, note = load(name, args.prune_budget)
    work = root / name
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    exp = export_onnx(model, work / "model.onnx")
    cost = graph_cost(exp.path)

    db = TuningDatabase.for_target(target)
    trials = dict(args.model_trials).get(name, args.trials)
    tune_report = None
    if not args.no_tune and trials > 0:
        log(f"  tuning {model.name} ({trials} trials in total, time budget {args.time_budget or 'none'}) ...")
        tune_report = tune_model(exp.path, target, TuneSettings(trials=trials, time_budget_s=args.time_budget),
                                 db=db, model_name=model.name, log=log)
    seconds, tuned_trials, sessions = tuning_spent(db, model.name)

    # per round: the requested time and runs (measure splits them over the rounds)
    settings = BenchSettings(warmup=3, min_runs=args.min_runs * args.rounds, min_time_s=args.min_time * args.rounds,
                             max_time_s=args.max_time * args.rounds, steady_gate=args.steady_gate)
    prepared, measured = measure_variants(model, exp, target, work, settings, args.rounds)
    (work / "raw-rounds.json").write_text(json.dumps(  # kept even if the analysis below fails
        {"results": {k: v.to_dict() for k, v in measured.results.items()}, "round_medians": measured.round_medians,
         "error": measured.error}, default=str))
    merged = variant_results(prepared, measured)
    tables = round_tables(merged, args.rounds)
    ref_acc = prepared.deployed.accuracy

    peak = target.peak_gflops() * 1e9
    flops = 2 * cost.macs
    for rows in tables:
        ort = next((b for b in rows if b.name == "onnxruntime" and b.ok), None)
        for b in rows:
            if b.ok:
                b.speedup_vs_reference = ort.latency_ms.median / b.latency_ms.median if ort else None
                b.roofline_fraction = flops / (b.latency_ms.median / 1e3) / peak

    # auto decides on the first --decide-rounds rounds, over what compile would build (untuned TVM is not an
    # option once tuned), exactly as `compile` does with its interleaved rounds; the later rounds are held out
    k = max(1, min(args.decide_rounds, len(tables) - 1 if len(tables) > 1 else 1))
    decide = {n: dataclasses.replace(b, round_medians_ms=b.round_medians_ms[:k]) for n, b in merged.items()}
    fp32_choice, fp32_reason = choose_backend([decide[n] for n in AUTO_CANDIDATES], ref_acc, 1.0)
    all_choice, all_reason = choose_backend([decide[n] for n in AUTO_CANDIDATES + INT8], ref_acc, 1.0)
    checks = held_out_checks(tables, k, fp32_choice)
    tvm_notes = next((b.notes for b in tables[0] if b.name == "tvm"), [])
    return {
        "model": model.name, "requested": name, "note": note, "params": cost.params, "macs": cost.macs,
        "reference_accuracy": ref_acc,
        "tuning": {"trials_recorded_for_model": tune_report.trials_total if tune_report else None,
                   "trials_this_run": tune_report.trials_run if tune_report else 0,
                   "seconds_this_run": tune_report.seconds if tune_report else 0.0,
                   "seconds_all_sessions": seconds, "trials_all_sessions": tuned_trials, "sessions": sessions,
                   "kernels": len(tune_report.tasks) if tune_report else None,
                   "kernels_tuned": next((n for n in tvm_notes if "MetaSchedule records applied" in n), None),
                   "estimated_ms": tune_report.estimated_ms_after if tune_report else None,
                   "stopped_by": tune_report.stopped_by if tune_report else "not tuned in this run"},
        "rounds": [[b.to_dict() for b in rows] for rows in tables],
        "auto": {"fp32_choice": fp32_choice, "fp32_reason": fp32_reason, "with_int8_choice": all_choice,
                 "with_int8_reason": all_reason, "checks": checks},
    }


def markdown(results: list[dict[str, Any]], target: Target, args) -> str:
    lines = [
        "# Compilers on this host: ORT vs OpenVINO vs TVM (untuned / MetaSchedule-tuned) vs INT8", "",
        f"Host peak fp32: {target.peak_description()}. `vs ORT` = median / ONNX Runtime median "
        "(lower is faster; same runner session). Roofline = 2 x MACs / median / fp32 peak (INT8 rows too: the int8 "
        "peak is higher). " + INT8_PARITY_RULE + ".", "",
    ]
    for r in results:
        t = r["tuning"]
        lines += [f"## {r['model']}", ""]
        if r["note"]:
            lines += [f"*{r['note']}*", ""]
        acc = f", fp32 accuracy {r['reference_accuracy']:.2f}%" if r["reference_accuracy"] is not None else ""
        lines += [f"{r['params']:,} params, {r['macs'] / 1e6:.1f} M MACs{acc}.", ""]
        lines += [f"Tuning: {t['trials_all_sessions']} trials in {t['seconds_all_sessions'] / 60:.1f} min over "
                  f"{t['sessions']} session(s) (this run: {t['trials_this_run']} trials, "
                  f"{t['seconds_this_run'] / 60:.1f} min, stopped by {t['stopped_by']}); "
                  f"{t['kernels_tuned'] or 'no records applied'}.", ""]
        n_rounds = len(r["rounds"])
        lines += ["| variant | " + " | ".join(f"median ms (round {i + 1})" for i in range(n_rounds))
                  + " | vs ORT | roofline | parity (max diff) | accuracy | build s |",
                  "|---|" + "---:|" * n_rounds + "---:|---:|---|---:|---:|"]
        by_round = [{b["name"]: b for b in rows} for rows in r["rounds"]]
        for name in FP32 + INT8:
            b = by_round[0][name]
            if b["latency_ms"] is None:
                lines.append(f"| {name} | " + " | ".join("–" for _ in range(n_rounds))
                             + f" | – | – | {(b['error'] or '')[:80]} | – | – |")
                continue
            meds = [by[name]["latency_ms"]["median"] if by[name]["latency_ms"] else float("nan") for by in by_round]
            ratios = [1 / by[name]["speedup_vs_reference"] for by in by_round if by[name].get("speedup_vs_reference")]
            ratio = f"{np.median(ratios):.2f}x" if ratios else "–"
            parity = "–" if b["verified"] is None else ("pass" if b["verified"] else "**FAIL**") + \
                f" ({b['max_abs_diff']:.1e})"
            acc = f"{b['accuracy']:.2f}%" if b["accuracy"] is not None else "–"
            lines.append(f"| {name} | " + " | ".join(f"{m:.3f}" for m in meds)
                         + f" | {ratio} | {100 * (b['roofline_fraction'] or 0):.1f}% | {parity} | {acc} | "
                         f"{b['build_seconds'] or 0:.1f} |")
        a = r["auto"]
        lines += ["", f"- auto (fp32, what `compile` picks): **{a['fp32_choice']}** — {a['fp32_reason']}",
                  f"- auto with `--quantize int8`: **{a['with_int8_choice']}** — {a['with_int8_reason']}"]
        c = a["checks"]
        lines.append(f"- auto decided on round(s) 1-{c['decided_on_rounds']}; held out:")
        for pr in c["per_round"]:
            lines.append(f"  - round {pr['round']}: auto's pick {pr['auto']} {pr['auto_ms']:.3f} ms vs that round's "
                         f"fastest {pr['best']} {pr['best_ms']:.3f} ms ({pr['ratio']:.3f}x)")
        h = c["held_out"]
        if h:
            if h["best_single"] == a["fp32_choice"]:
                verdict = "auto picked it (1.000x)"
            else:
                verdict = (f"auto's pick is {h['ratio']:.3f}x of it and was faster in {h['pick_faster_rounds']} "
                           f"of {h['rounds']} held-out rounds")
            lines.append(f"  - over the {h['rounds']} held-out round(s), the best single backend is "
                         f"**{h['best_single']}** (fast state of the round medians, as auto decides; "
                         + ", ".join(f"{n} {v:.3f} ms" for n, v in h["medians"].items()) + f"): {verdict}")
            pm = h["plain_median"]
            lines.append(f"  - with plain medians of the held-out rounds instead: best {pm['best_single']}, auto's pick "
                         f"{pm['ratio']:.3f}x of it (" + ", ".join(f"{n} {v:.3f} ms" for n, v in pm["medians"].items())
                         + ")")
        lines.append("")
    rn = next((r for r in results if r["requested"] == "resnet18"), None)
    if rn is not None:
        by_round = [{b["name"]: b for b in rows} for rows in rn["rounds"]]
        tvm = [by["tvm"] for by in by_round]
        ratios = [1 / b["speedup_vs_reference"] for b in tvm if b.get("speedup_vs_reference")]
        meds = {n: [by[n]["latency_ms"]["median"] for by in by_round if by[n]["latency_ms"]] for n in ("tvm", "onnxruntime")}
        if ratios and all(meds.values()):
            # the verdict is on the fast state of each one's rounds (as auto decides): a round where
            # only one of the two hit this VM's slow state says nothing about the compilers
            fast = {n: fast_state_ms(m) for n, m in meds.items()}
            got = fast["tvm"] / fast["onnxruntime"]
            lines += ["## ResNet-18: tuned TVM against the 1.2x aim", "",
                      f"Tuned TVM is {got:.2f}x ONNX Runtime's latency (fast state of the rounds: TVM "
                      f"{fast['tvm']:.3f} ms, ORT {fast['onnxruntime']:.3f} ms) after "
                      f"{rn['tuning']['trials_all_sessions']} trials ({rn['tuning']['seconds_all_sessions'] / 60:.0f} "
                      f"min of tuning); the aim is {AIM}x: "
                      + ("met." if got <= AIM else f"{100 * (got / AIM - 1):.0f} % above it.")
                      + " Per round: " + ", ".join(f"{x:.2f}x" for x in ratios)
                      + f" (median {float(np.median(ratios)):.2f}x).", ""]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="digits-pruned,resnet18,mobilenetv2",
                    help="comma list: digits-pruned (pruned digits-cnn), or zoo names")
    ap.add_argument("--trials", type=int, default=64, help="total MetaSchedule trials per model (0 = do not tune)")
    ap.add_argument("--model-trials", action="append", default=[], metavar="MODEL=N",
                    type=lambda s: (s.split("=")[0], int(s.split("=")[1])), help="per-model override of --trials")
    ap.add_argument("--time-budget", type=parse_duration, default=None, metavar="30m",
                    help="cap on each model's tuning session (e.g. 30m)")
    ap.add_argument("--no-tune", action="store_true", help="measure with the records that exist; tune nothing")
    ap.add_argument("--prune-budget", type=float, default=0.5, help="digits-pruned: fraction of original latency")
    ap.add_argument("--rounds", type=int, default=5, help="measurement rounds")
    ap.add_argument("--decide-rounds", type=int, default=2,
                    help="auto decides on the first N rounds (like `compile --rounds N`); the rest are held out")
    ap.add_argument("--steady-gate", action="store_true",
                    help="time every series in the device's steady state (the runner's steady gate)")
    ap.add_argument("--min-runs", type=int, default=30)
    ap.add_argument("--min-time", type=float, default=2.0)
    ap.add_argument("--max-time", type=float, default=20.0)
    ap.add_argument("--out", type=Path, default=Path("out/bench-compilers"))
    args = ap.parse_args()
    target = get_target("host")
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    results = []
    for name in args.models.split(","):
        results.append(bench_model(name.strip(), args, target, args.out))
        (args.out / "compilers.json").write_text(json.dumps(results, indent=1, default=str))
    md = markdown(results, target, args)
    (args.out / "compilers.md").write_text(md)
    print(md)
    log(f"done in {(time.monotonic() - t0) / 60:.1f} min; {args.out / 'compilers.md'}, {args.out / 'compilers.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
