"""Compilers side by side on this host: ONNX Runtime, OpenVINO, TVM untuned, TVM tuned
(MetaSchedule, with the tuning time spent) and INT8, as ratios to ONNX Runtime and as a
fraction of the fp32 FLOP roofline; plus ``--backend auto`` against the best single backend.

Models: resnet18, mobilenetv2 (random weights: latency only) and a pruned digits-cnn
(pruned to --prune-budget of its latency with the pruning stage; if pruning is not
available or fails, the unpruned digits-cnn, and the output says so).

Every variant of a model is built into ONE bundle and timed by the same on-device runner
in the same session, round after round (``--rounds``, job order rotated each round), so
the ratios compare like with like on a shared, noisy machine. ``auto`` decides on the
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
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.bench.bundle import BenchJob
from edgeprune.bench.io import save_arrays, save_eval
from edgeprune.bench.rounds import SEP, fast_state_ms, merge, rounds_faster
from edgeprune.bench.stats import LatencyStats
from edgeprune.compile.analysis import graph_cost
from edgeprune.compile.backends import get_backend
from edgeprune.compile.export import export_onnx
from edgeprune.compile.pipeline import (BenchSettings, CompileOptions, build_int8_artifacts, choose_backend,
                                        reference_accuracy, reference_outputs, run_bundle)
from edgeprune.compile.quantize import INT8_OUTPUT_REL_TOL, INT8_PARITY_RULE
from edgeprune.compile.summary import BackendResult
from edgeprune.compile.tuning import TuneSettings, TuningDatabase, parse_duration, tune_model
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
        from edgeprune.prune.api import PruneOptions, prune_model, pruned_loaded_model
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


def build_all(model: LoadedModel, onnx: Path, target: Target, bundle: Path, threads: int) -> tuple[dict, dict]:
    """Every variant's artifact (name -> Artifact) and build errors (name -> message)."""
    arts, errors = {}, {}
    untuned = target.model_copy(update={"backend_options": {
        **target.backend_options, "tvm": {**target.options_for("tvm"), "tuning": "off"}}})
    for name, backend, tgt in (("onnxruntime", "onnxruntime", target), ("openvino", "openvino", target),
                               ("tvm-untuned", "tvm", untuned), ("tvm", "tvm", target)):
        log(f"  building {name} ...")
        try:
            arts[name] = get_backend(backend).build(onnx, tgt, bundle / name, threads=threads)
        except Exception as exc:  # noqa: BLE001 - recorded, the others carry on
            errors[name] = str(exc)
    build_int8_artifacts(model, onnx, target, ["onnxruntime", "openvino"], bundle, threads,
                         CompileOptions(quantize="int8"), arts, errors, log)
    return arts, errors


def measure(model: LoadedModel, onnx: Path, target: Target, arts: dict, bundle: Path, threads: int,
            settings: BenchSettings, rounds: int) -> list[dict[str, Any]]:
    """Time every artifact ``rounds`` times in one runner session per round; raw job results per round."""
    expected = reference_outputs(model, onnx)
    save_arrays(bundle / "data" / "inputs.npz", "in", model.example_inputs)
    save_arrays(bundle / "data" / "expected.npz", "out", expected)
    scale = max(float(np.max(np.abs(e))) for e in expected)
    tol = 1e-4 + 1e-3 * scale
    has_eval = model.data is not None and save_eval(bundle / "data" / "eval.npz", model.data.val, model.batch_size) > 0
    names = list(arts)
    out = []
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]  # rotate: no variant always runs first
        jobs = [BenchJob(id=n, backend=arts[n].backend, artifact=str(arts[n].path.relative_to(bundle)),
                         inputs="data/inputs.npz", expected="data/expected.npz",
                         eval="data/eval.npz" if has_eval and r == 0 else None,
                         task=model.data.task if model.data else None,
                         tolerance=INT8_OUTPUT_REL_TOL * scale if n.endswith("-int8") else tol, threads=threads,
                         options=arts[n].options, warmup=settings.warmup, min_runs=settings.min_runs,
                         min_time_s=settings.min_time_s, max_time_s=settings.max_time_s,
                         gate=settings.gate)
                for n in order]
        (bundle / "results.jsonl").unlink(missing_ok=True)
        log(f"  round {r + 1}/{rounds}: timing {len(jobs)} artifacts ...")
        out.append(run_bundle(LOCAL, bundle, jobs, settings.timeout_s, log))
    return out


def results_of(round_results: dict, arts: dict, errors: dict, first: dict | None = None) -> list[BackendResult]:
    rows = []
    for n in FP32 + INT8:
        br = BackendResult(name=n, artifact=str(arts[n].path) if n in arts else None,
                           build_seconds=getattr(arts.get(n), "build_seconds", None),
                           precision="int8" if n in INT8 else "fp32", notes=list(getattr(arts.get(n), "notes", [])))
        jr = round_results.get(n)
        if n not in arts:
            br.error = errors.get(n, "not built")
        elif jr is None or not jr.ok or not jr.times_ms:
            br.error = (jr.error if jr else None) or "not run"
        else:
            br.latency_ms = LatencyStats.from_times(jr.times_ms)
            br.runs = len(jr.times_ms)
            src = first.get(n) if first else jr  # parity and accuracy come from round 1
            br.verified, br.max_abs_diff, br.accuracy = src.verified, src.max_abs_diff, src.accuracy
        rows.append(br)
    return rows


def decision_results(per_round: list[dict], arts: dict, errors: dict) -> dict[str, BackendResult]:
    """One BackendResult per variant from the decision rounds, folded exactly as `compile
    --rounds k` folds its interleaved rounds (``bench.rounds.merge``): every round's times,
    the round medians, parity and accuracy from round 1."""
    joined = {(n if i == 0 else f"{n}{SEP}{i + 1}"): jr for i, rr in enumerate(per_round) for n, jr in rr.items()}
    merged, medians = merge(joined)
    out = {b.name: b for b in results_of(merged, arts, errors)}
    for b in out.values():
        b.round_medians_ms = medians.get(b.name, []) if b.ok else []
    return out


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
    bundle = work / "bundle"
    bundle.mkdir(parents=True)
    exp = export_onnx(model, work / "model.onnx")
    cost = graph_cost(exp.path)
    threads = target.num_cores()

    db = TuningDatabase.for_target(target)
    trials = dict(args.model_trials).get(name, args.trials)
    tune_report = None
    if not args.no_tune and trials > 0:
        log(f"  tuning {model.name} ({trials} trials in total, time budget {args.time_budget or 'none'}) ...")
        tune_report = tune_model(exp.path, target, TuneSettings(trials=trials, time_budget_s=args.time_budget),
                                 db=db, model_name=model.name, log=log)
    seconds, tuned_trials, sessions = tuning_spent(db, model.name)

    arts, errors = build_all(model, exp.path, target, bundle, threads)
    settings = BenchSettings(warmup=3, min_runs=args.min_runs, min_time_s=args.min_time, max_time_s=args.max_time,
                             steady_gate=args.steady_gate)
    per_round = measure(model, exp.path, target, arts, bundle, threads, settings, args.rounds)
    (work / "raw-rounds.json").write_text(json.dumps(  # kept even if the analysis below fails
        [{k: v.to_dict() for k, v in rr.items()} for rr in per_round], default=str))
    first = per_round[0]
    tables = [results_of(rr, arts, errors, first) for rr in per_round]
    ref_acc = reference_accuracy(model)

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
    decide = decision_results(per_round[:k], arts, errors)
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
        f"Host peak fp32: {target.peak_gflops():.1f} GFLOP/s ({target.num_cores()} cores x {target.clock():.2f} GHz x "
        f"{target.fma_units} FMA x {target.vector_bits // 32} lanes x 2). `vs ORT` = median / ONNX Runtime median "
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
