"""The headline figure: hardware-aware pruning vs uniform pruning, measured on this host.

For each model (digits-cnn, lstm-digits, mlp-recsys, digits-resnet by default):

1. the latency table of the model is profiled on this host with ONNX Runtime (cached in
   the LUT store, so a second run reuses it);
2. ``uniform`` (same ratio everywhere, L1), ``knapsack`` (HALP-like, Taylor) and
   ``greedy`` (NetAdapt-like, L1) prune to each latency budget (fractions of the
   original's predicted latency) and fine-tune with the same recipe;
3. every pruned model and the original are exported to ONNX and timed with ONNX
   Runtime by the library's own ``prepare`` + ``measure`` (one bundle, the on-device
   runner, ``rounds`` interleaved rounds in rotated order; a model's latency is the
   median of its round medians), so load from other processes hits all of them alike;
4. accuracy is on the full validation split.

Reported, per model:

- **same latency**: accuracy of each strategy at uniform's measured latency (linear
  interpolation along the strategy's accuracy-vs-measured-latency curve);
- **same accuracy**: the measured latency each strategy needs to reach uniform's
  accuracy at each budget, as a ratio to uniform's latency (aim: <= 0.8);
- **0.5x budget**: accuracy loss vs the unpruned model at the 0.5 budget (aim: <= 1 point)
  and the measured latency ratio actually achieved.

Each prune run is cached in ``--out`` (JSON + ONNX), so an interrupted run resumes.

Strategy labels are ``strategy[/importance][@gradual_steps]``: ``knapsack/l1`` uses L1
instead of the default Taylor importance, ``knapsack@3`` prunes in 3 steps with
fine-tuning between them (same total fine-tuning epochs).

Usage: python benchmarks/pruning.py [--models digits-cnn,...] [--budgets 0.15,0.25,0.35,0.5]
       [--strategies uniform,knapsack,greedy,knapsack@3] [--out out/bench-pruning] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

#: fine-tuning recipe per model (the same for every strategy): epochs, batch size, lr
RECIPES = {
    "digits-cnn": {"finetune_epochs": 4, "batch_size": 64, "lr": 1e-3, "shift": 2},
    "digits-resnet": {"finetune_epochs": 4, "batch_size": 64, "lr": 1e-3, "shift": 2},
    "lstm-digits": {"finetune_epochs": 6, "batch_size": 64, "lr": 2e-3, "shift": 0},
    "gru-digits": {"finetune_epochs": 6, "batch_size": 64, "lr": 2e-3, "shift": 0},
    "mlp-recsys": {"finetune_epochs": 1, "batch_size": 1024, "lr": 5e-4, "shift": 0},
}
IMPORTANCE = {"uniform": "l1", "knapsack": "taylor", "greedy": "l1", "genetic": "l1"}
GREEDY = {"iterations": 4, "proposal_steps": 6, "step_finetune": 25}
GENETIC = {"population": 8, "generations": 4, "recovery_steps": 4}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_label(label: str) -> tuple[str, str, int]:
    """``strategy[/importance][@gradual_steps]``, e.g. ``knapsack``, ``knapsack/l1``,
    ``knapsack@3`` (prune in 3 steps with fine-tuning between them)."""
    steps = 1
    if "@" in label:
        label, n = label.split("@", 1)
        steps = int(n)
    strategy, _, importance = label.partition("/")
    return strategy, importance or IMPORTANCE[strategy], steps


def measure_interleaved(paths: dict[str, Path], work: Path, target, device, rounds: int,
                        min_time: float) -> dict[str, dict]:
    """Median-of-round-medians latency (ms) of every ONNX file, measured in interleaved
    rounds through the library: each file is a variant of one bundle
    (:func:`edgeprune.compile.prepare.prepare`, ONNX Runtime artifacts) and
    :func:`edgeprune.bench.measure.measure` times them on ``device`` in ``rounds``
    rotated rounds, exactly as ``compile`` times its artifacts."""
    from edgeprune.bench.measure import measure
    from edgeprune.bench.settings import BenchSettings
    from edgeprune.compile.prepare import PrepareOptions, Variant, prepare
    from edgeprune.models.spec import load_model

    variants = [Variant(model=load_model(str(p), log=lambda m: None), prefix=f"{k}:", onnx_name=f"measured-{k}.onnx",
                        quantize=False) for k, p in paths.items()]
    settings = BenchSettings(warmup=10, min_runs=10 * rounds, min_time_s=min_time * rounds,
                             max_time_s=max(30.0, 4 * min_time * rounds), rounds=rounds)
    prepared = prepare(variants, target, work, PrepareOptions(backends=("onnxruntime",), bench=settings), log)
    m = measure(prepared.bundle, [device], rounds=rounds, timeout_s=settings.timeout_s, log=log)[device.name]
    if m.error:
        raise RuntimeError(f"measurement failed: {m.error}")
    out = {}
    for k in paths:
        v = m.round_medians.get(f"{k}:onnxruntime")
        if not v:
            jr = m.results.get(f"{k}:onnxruntime")
            raise RuntimeError(f"{k} was not measured: {jr.error if jr else 'no result'}")
        out[k] = {"median_ms": float(np.median(v)), "rounds_ms": v, "spread": float((max(v) - min(v)) / np.median(v))}
    return out


def interp_acc_at(curve: list[tuple[float, float]], lat: float) -> float | None:
    """Accuracy of a (latency, accuracy) curve at ``lat`` (linear; None outside its range)."""
    pts = sorted(curve)
    xs = [p[0] for p in pts]
    if not pts or lat < xs[0] - 1e-12 or lat > xs[-1] + 1e-12:
        return None
    return float(np.interp(lat, xs, [p[1] for p in pts]))


def latency_for_acc(curve: list[tuple[float, float]], acc: float) -> tuple[float | None, str]:
    """Smallest measured latency at which the curve reaches ``acc`` (linear between points).
    Returns (latency, kind): kind "" exact, "<=" if even the fastest point is above acc."""
    pts = sorted(curve)
    if not pts:
        return None, ""
    if pts[0][1] >= acc:
        return pts[0][0], "<="
    for (l0, a0), (l1, a1) in zip(pts, pts[1:]):
        if a0 < acc <= a1:
            return float(l0 + (acc - a0) / (a1 - a0) * (l1 - l0)), ""
    return None, ""  # never reaches it


def run_model(name: str, args, target, device) -> dict:
    import torch

    from edgeprune.compile.analysis import graph_cost
    from edgeprune.compile.export import export_onnx
    from edgeprune.errors import PruneError
    from edgeprune.flows.profile import profile_model
    from edgeprune.flows.prune import prune_model
    from edgeprune.models.spec import load_model
    from edgeprune.models.train import evaluate
    from edgeprune.prune.options import PruneOptions, pruned_loaded_model
    from edgeprune.prune.graph import build_space

    out = args.out / name
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(f"zoo:{name}", log=log)
    data = model.data
    assert data is not None and model.module is not None
    space = build_space(model.module, [torch.from_numpy(x) for x in model.example_inputs])
    t0 = time.perf_counter()
    prof = profile_model(model, target, device, "onnxruntime", space=space, log=log)
    predictor = prof.predictor
    log(f"[{name}] latency table ready in {time.perf_counter() - t0:.0f} s: "
        f"predicted full {predictor.predict(space.full_widths()):.3f} ms")
    onnx_paths = {"original": out / "original.onnx"}
    if not onnx_paths["original"].exists():
        export_onnx(model, onnx_paths["original"])
    base_acc = float(evaluate(model.module, data.val, data.task, batch_size=256))
    recipe = RECIPES.get(name, RECIPES["digits-cnn"])
    runs: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    for label in args.strategies:
        strategy, importance, steps = parse_label(label)
        for b in args.budgets:
            key = f"{label}-{b:g}"
            rec_path = out / f"{key}.json"
            onnx_paths[key] = out / f"{key}.onnx"
            if rec_path.exists() and onnx_paths[key].exists():
                runs[key] = json.loads(rec_path.read_text())
                continue
            log(f"[{name}] {label} at {b:g}x ...")
            extra = GREEDY if strategy == "greedy" else GENETIC if strategy == "genetic" else {}
            opts = PruneOptions(budget=b, strategy=strategy, importance=importance, seed=args.seed,
                                distill=args.distill, strategy_options=extra, gradual_steps=steps, **recipe)
            t1 = time.perf_counter()
            try:
                res = prune_model(model, options=opts, latency_model=predictor, log=log, progress=False)
            except PruneError as exc:  # e.g. a budget below what the minimum widths can reach
                log(f"[{name}] {key}: skipped: {exc}")
                skipped[key] = str(exc)
                del onnx_paths[key]
                continue
            seconds = time.perf_counter() - t1
            export_onnx(pruned_loaded_model(model, res), onnx_paths[key])
            cost = graph_cost(onnx_paths[key])
            runs[key] = {
                "strategy": label, "importance": res.importance, "budget": b, "gradual_steps": steps,
                "accuracy": float(evaluate(res.module, data.val, data.task, batch_size=256)),
                "accuracy_after_search": res.accuracy_after_search,
                "predicted_ms": res.predicted_latency_ms, "original_predicted_ms": res.original_predicted_ms,
                "params": cost.params, "macs": cost.macs, "widths": res.widths, "seconds": seconds,
                "search_seconds": res.search_seconds, "finetune_seconds": res.finetune_seconds,
            }
            rec_path.write_text(json.dumps(runs[key], indent=1))
            log(f"[{name}] {key}: acc {runs[key]['accuracy']:.2f}% (before fine-tune {res.accuracy_after_search:.2f}%), "
                f"predicted {res.predicted_latency_ms:.3f} ms, {seconds:.0f} s")
    log(f"[{name}] measuring {len(onnx_paths)} ONNX models interleaved ({args.rounds} rounds) ...")
    meas = measure_interleaved(onnx_paths, out / "measure", target, device, args.rounds, args.min_time)
    orig_ms = meas["original"]["median_ms"]
    orig_cost = graph_cost(onnx_paths["original"])
    for key, r in runs.items():
        r["measured_ms"] = meas[key]["median_ms"]
        r["measured_ratio"] = meas[key]["median_ms"] / orig_ms
        r["spread"] = meas[key]["spread"]
    return {"model": name, "original": {"accuracy": base_acc, "measured_ms": orig_ms, "params": orig_cost.params,
                                        "val_samples": len(data.val),
                                        "macs": orig_cost.macs, "predicted_ms": predictor.predict(space.full_widths()),
                                        "spread": meas["original"]["spread"]},
            "runs": runs, "skipped": skipped, "calibration": predictor.describe() if hasattr(predictor, "describe") else None}


def compare(res: dict, strategies: list[str], budgets: list[float], field: str = "accuracy") -> dict:
    """Comparisons on ``field``: "accuracy" (after fine-tuning) or "accuracy_after_search"
    (after the cut and BN recalibration only: what the search itself preserved).

    Same accuracy compares *curves*: for an accuracy level A, the smallest measured
    latency at which each strategy reaches A (linear between budgets). When both curves
    reach A already at their fastest point, the data cannot separate them and the pair
    is reported as such, not as a ratio."""
    runs = {k: {**r, "accuracy": r[field]} for k, r in res["runs"].items()}
    base = res["original"]
    curves = {s: [(r["measured_ms"], r["accuracy"]) for r in runs.values() if r["strategy"] == s] for s in strategies}
    out: dict = {"same_latency": [], "same_accuracy": [], "half_budget": {}}
    levels = [("within 1 point of the original", base["accuracy"] - 1.0)]
    for b in budgets:
        u = runs.get(f"uniform-{b:g}")
        if u is None:
            continue
        levels.append((f"uniform's accuracy at budget {b:g}", u["accuracy"]))
        for s in strategies:
            if s == "uniform" or f"{s}-{b:g}" not in runs:
                continue
            acc = interp_acc_at(curves[s], u["measured_ms"])
            out["same_latency"].append({"budget": b, "strategy": s, "uniform_ms": u["measured_ms"],
                                        "uniform_acc": u["accuracy"], "strategy_acc_at_same_ms": acc})
    seen: set[float] = set()
    for label, level in levels:
        if round(level, 6) in seen:
            continue
        seen.add(round(level, 6))
        lu, ku = latency_for_acc(curves.get("uniform", []), level)
        for s in strategies:
            if s == "uniform":
                continue
            ls, ks = latency_for_acc(curves[s], level)
            entry = {"level": label, "accuracy": level, "strategy": s, "strategy_ms": ls, "strategy_bound": ks,
                     "uniform_ms": lu, "uniform_bound": ku, "ratio": None, "verdict": ""}
            if ls is None and lu is None:
                entry["verdict"] = "neither reaches it"
            elif ls is None:
                entry["verdict"] = f"{s} never reaches it (uniform at {lu:.3f} ms)"
            elif lu is None:
                entry["verdict"] = f"uniform never reaches it; {s} at {ks}{ls:.3f} ms"
            elif ku and ks:
                entry["verdict"] = (f"not separated: both reach it at every measured budget (fastest: {s} "
                                    f"{ls:.3f} ms, uniform {lu:.3f} ms)")
            else:
                entry["ratio"] = ls / lu
                bound = "<= " if ks and not ku else ">= " if ku and not ks else ""
                entry["verdict"] = f"{s} {ls:.3f} ms vs uniform {lu:.3f} ms: {bound}{ls / lu:.2f}x"
            out["same_accuracy"].append(entry)
    for s in strategies:
        r = runs.get(f"{s}-0.5")
        if r is not None:
            out["half_budget"][s] = {"measured_ratio": r["measured_ratio"], "accuracy": r["accuracy"],
                                     "loss": base["accuracy"] - r["accuracy"]}
    return out


def render(results: list[dict], comparisons: dict, strategies: list[str]) -> str:
    lines = ["# Pruning benchmark (host, ONNX Runtime)", ""]
    for res in results:
        name, base = res["model"], res["original"]
        lines += [f"## {name}", "",
                  f"original: {base['accuracy']:.2f}% accuracy, {base['measured_ms']:.3f} ms measured "
                  f"({base['predicted_ms']:.3f} ms predicted), {base['macs'] / 1e6:.1f} M MACs"
                  + (f"; {base['val_samples']} validation samples (one sample = {100 / base['val_samples']:.2f} points)"
                     if base.get("val_samples") else ""), "",
                  "| strategy | budget | measured ms | ratio | predicted ratio | accuracy | before FT | MACs (M) | search s | total s |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(res["runs"].values(), key=lambda r: (r["strategy"], r["budget"])):
            lines.append(f"| {r['strategy']} | {r['budget']:g} | {r['measured_ms']:.3f} | {r['measured_ratio']:.2f} | "
                         f"{r['predicted_ms'] / r['original_predicted_ms']:.2f} | {r['accuracy']:.2f} | "
                         f"{r['accuracy_after_search']:.2f} | {r['macs'] / 1e6:.1f} | {r['search_seconds']:.0f} | "
                         f"{r['seconds']:.0f} |")
        for key, why in res.get("skipped", {}).items():
            lines.append(f"\n{key}: not run ({why})")
        for title, c in (("after fine-tuning", comparisons[name]),
                         ("before fine-tuning (cut + BN recalibration only)", comparisons.get(name + ":before-ft"))):
            if c is not None:
                lines += ["", f"### {title}"] + _render_comparison(c)
        lines.append("")
    return "\n".join(lines)


def _render_comparison(c: dict) -> list[str]:
    lines: list[str] = ["", "Same measured latency as uniform (accuracy, interpolated):", ""]
    for e in c["same_latency"]:
        a = e["strategy_acc_at_same_ms"]
        lines.append(f"- budget {e['budget']:g}: uniform {e['uniform_acc']:.2f}% at {e['uniform_ms']:.3f} ms; "
                     f"{e['strategy']} {'n/a (outside its measured range)' if a is None else f'{a:.2f}%'}")
    lines += ["", "Same accuracy (smallest measured latency reaching it, strategy / uniform; aim <= 0.8):", ""]
    for e in c["same_accuracy"]:
        lines.append(f"- {e['level']} ({e['accuracy']:.2f}%): {e['verdict']}")
    lines += ["", "At the 0.5 budget (aim: <= 1 point below the unpruned model):", ""]
    for s, e in c["half_budget"].items():
        lines.append(f"- {s}: measured {e['measured_ratio']:.2f}x of the original, accuracy {e['accuracy']:.2f}% "
                     f"({-e['loss']:+.2f} points)")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lstm-digits,mlp-recsys,digits-cnn,digits-resnet")
    ap.add_argument("--budgets", default="0.15,0.25,0.35,0.5")
    ap.add_argument("--strategies", default="uniform,knapsack,greedy,knapsack@3")
    ap.add_argument("--out", type=Path, default=Path("out/bench-pruning"))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds per model per round")
    ap.add_argument("--distill", action="store_true", help="fine-tune every strategy with distillation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--render-only", action="store_true", help="re-render pruning.md from --out/pruning.json")
    args = ap.parse_args()
    args.budgets = [float(b) for b in args.budgets.split(",")]
    args.strategies = args.strategies.split(",")
    if args.render_only:
        saved = json.loads((args.out / "pruning.json").read_text())
        results = saved["results"]
        comparisons = {}
        for res in results:
            strategies = sorted({r["strategy"] for r in res["runs"].values()}, key=lambda s: s != "uniform")
            budgets = sorted({r["budget"] for r in res["runs"].values()})
            comparisons[res["model"]] = compare(res, strategies, budgets)
            comparisons[res["model"] + ":before-ft"] = compare(res, strategies, budgets, "accuracy_after_search")
        text = render(results, comparisons, args.strategies)
        (args.out / "pruning.md").write_text(text)
        print(text)
        return 0

    from edgeprune.config.devices import LOCAL
    from edgeprune.config.targets import get_target

    target = get_target("host")
    args.out.mkdir(parents=True, exist_ok=True)
    results, comparisons = [], {}
    t0 = time.perf_counter()
    for name in args.models.split(","):
        res = run_model(name, args, target, LOCAL)
        results.append(res)
        comparisons[name] = compare(res, args.strategies, args.budgets)
        comparisons[name + ":before-ft"] = compare(res, args.strategies, args.budgets, "accuracy_after_search")
        (args.out / "pruning.json").write_text(json.dumps({"results": results, "comparisons": comparisons}, indent=1))
        (args.out / "pruning.md").write_text(render(results, comparisons, args.strategies))
    text = render(results, comparisons, args.strategies)
    print(text)
    print(f"\n(total {time.perf_counter() - t0:.0f} s; JSON and Markdown in {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
