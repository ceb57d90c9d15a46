"""The headline figure: hardware-aware pruning vs uniform pruning and vs Torch-Pruning, measured on this host.

For each model - the zoo's (digits-cnn, digits-resnet, lstm-digits, mlp-recsys) and the
user-style families of ``benchmarks/families.py`` (MobileNetV3-Small, ShuffleNetV2,
RegNetX, ResNet-18, ViT-tiny at 64x64 RGB, trained on the digits and given to edgeprune
as ``module:factory`` + weights + ``.npz`` data, exactly as a user gives them):

1. the latency model is built once per model (``--tables model``: the device model plus
   the few points this model needs, from ``--device-model-cache`` when given; ``--tables
   full``: a measured table of every layer) and cached in the LUT store;
2. every strategy prunes to each latency budget (fractions of the original's predicted
   latency) and fine-tunes with the same recipe: ``uniform`` (same ratio everywhere,
   L1), ``knapsack`` (HALP-like), ``greedy`` (NetAdapt-like) ... through ``prune_model``;
   ``tp`` is Torch-Pruning's own ``MetaPruner`` (global, group-norm importance) pruned
   to the MACs of the ``--tp-match`` strategy's result at the same budget and recovered
   with the same recipe (benchmarks/peer.py);
3. every pruned model and the original are exported to ONNX and timed with ONNX Runtime
   by the library's ``prepare`` + ``measure`` in ``rounds`` interleaved rounds (median of
   round medians), so load hits all alike; accuracy is on the whole validation split.

Reported, per model, against each reference (``tp`` and ``uniform`` when run):

- **same latency**: accuracy of each strategy at the reference's measured latency
  (linear interpolation along the strategy's accuracy-vs-measured-latency curve);
- **same accuracy**: the measured latency each strategy needs to reach the reference's
  accuracy at each budget, as a ratio to the reference's latency (aim: <= 0.8);
- **aims** (issue 17), a pass/fail table: <= 0.8x Torch-Pruning's measured latency at
  equal accuracy; at the 0.5 budget <= 0.65x the unpruned model's measured latency with
  <= 1 point lost (CNNs) / <= 2 points (transformers).

Each prune run is cached in ``--out`` (JSON + ONNX), the families' weights in ``--families-out``.

Labels ``strategy[/importance][@gradual_steps][+depth]``: ``knapsack/l1`` uses L1, ``knapsack@3`` prunes in 3 steps with
fine-tuning between them (same total fine-tuning epochs), ``knapsack+depth`` lets the
search remove whole blocks too (``PruneOptions(depth="auto")``, where this edgeprune has
it), ``tp``, ``tp/groupnorm``, ``tp/l2``, ``tp/l1``, ``tp/taylor`` are Torch-Pruning.

Usage: python benchmarks/pruning.py [--models ...] [--budgets 0.35,0.5] [--strategies knapsack,greedy,tp]
       [--tables model|full] [--device-model-cache DIR] [--out out/bench-pruning] [--rounds 7] (see --help)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import peer  # noqa: E402
from benchmarks.families import FAMILIES, INPUT_SHAPE, train_family  # noqa: E402

#: fine-tuning recipe per model (the same for every strategy): epochs, batch size, lr. The
#: families and digits-cnn recover with the library's defaults (edgeprune.prune.recipe:
#: what a user gets), only their augmentation is set here
RECIPES = {
    "digits-cnn": {"shift": 2},
    "digits-resnet": {"finetune_epochs": 4, "batch_size": 64, "lr": 1e-3, "shift": 2, "distill": False},
    "lstm-digits": {"finetune_epochs": 6, "batch_size": 64, "lr": 2e-3, "shift": 0, "distill": False},
    "gru-digits": {"finetune_epochs": 6, "batch_size": 64, "lr": 2e-3, "shift": 0, "distill": False},
    "mlp-recsys": {"finetune_epochs": 1, "batch_size": 1024, "lr": 5e-4, "shift": 0, "distill": False},
    "family": {"shift": 4},  # 64x64: 4 px = half a scan pixel
}
IMPORTANCE = {"uniform": "l1", "knapsack": "taylor", "greedy": "l1", "genetic": "l1"}
GREEDY = {"iterations": 4, "proposal_steps": 6, "step_finetune": 25}
GENETIC = {"population": 8, "generations": 4, "recovery_steps": 4}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_label(label: str) -> tuple[str, str, int, bool]:
    """``strategy[/importance][@gradual_steps][+depth]``, e.g. ``knapsack``, ``knapsack/l1``,
    ``knapsack@3`` (prune in 3 steps with fine-tuning between them), ``knapsack+depth``
    (whole blocks may go too), ``tp`` / ``tp/l2`` (Torch-Pruning's MetaPruner)."""
    depth = label.endswith("+depth")
    label = label.removesuffix("+depth")
    steps = 1
    if "@" in label:
        label, n = label.split("@", 1)
        steps = int(n)
    strategy, _, importance = label.partition("/")
    if strategy == "tp":
        if steps != 1 or depth or (importance or "groupnorm") not in peer.TP_IMPORTANCES:
            raise SystemExit(f"{label}: Torch-Pruning runs one-shot width pruning here (no @steps, no +depth) "
                             f"with importance {', '.join(peer.TP_IMPORTANCES)}")
        return strategy, importance or "groupnorm", 1, False
    if strategy not in IMPORTANCE:
        raise SystemExit(f"unknown strategy '{strategy}' in '{label}'; choose {', '.join([*IMPORTANCE, 'tp'])}")
    return strategy, importance or IMPORTANCE[strategy], steps, depth


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


def load_bench_model(name: str, args):
    """(LoadedModel, kind, recipe): a zoo model by name, or a family from
    benchmarks/families.py trained (once, cached) and then loaded exactly as a user's
    model: ``load_model("benchmarks.families:FACTORY", weights=w.pt, data=data.npz)``."""
    from edgeprune.models.spec import load_model

    if name in FAMILIES:
        rec = train_family(name, args.families_out, args.train_epochs, log=log)
        model = load_model(rec["spec"], weights=Path(rec["weights"]), data=Path(rec["data"]),
                           input_shape=[INPUT_SHAPE], log=log)
        return model, rec["kind"], dict(RECIPES["family"])
    return load_model(f"zoo:{name}", log=log), "cnn", dict(RECIPES.get(name, RECIPES["digits-cnn"]))


def lut_store(args):
    """The LUT store of edgeprune's latency model: a copy of ``--device-model-cache`` under
    ``--out`` (the points measured here never change the given cache), or the usual cache."""
    from edgeprune.latency.store import LUTStore

    if args.device_model_cache is None:
        return LUTStore()
    src = args.device_model_cache / "lut" if (args.device_model_cache / "lut").is_dir() else args.device_model_cache
    dst = args.out / "lut"
    if not dst.exists():
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.lock"))
    return LUTStore(dst)


def _prune_options(args, recipe: dict, b: float, strategy: str, importance: str, steps: int, depth: bool):
    from edgeprune.prune.options import PruneOptions

    extra = GREEDY if strategy == "greedy" else GENETIC if strategy == "genetic" else {}
    kw = dict(budget=b, strategy=strategy, importance=importance, seed=args.seed,
              strategy_options=extra, gradual_steps=steps, tables=args.tables, profile_budget_s=args.profile_budget,
              allow_budget_miss=True, **recipe)  # the benchmark measures every artifact itself
    if args.distill is not None:
        kw["distill"] = args.distill
    fields = {f.name for f in dataclasses.fields(PruneOptions)}
    if depth:
        if "depth" not in fields:
            return None
        kw["depth"] = "auto"
    return PruneOptions(**{k: v for k, v in kw.items() if k in fields})


def run_model(name: str, args, target, device) -> dict:
    import torch

    from edgeprune.compile.analysis import graph_cost
    from edgeprune.compile.export import export_onnx
    from edgeprune.errors import EdgepruneError
    from edgeprune.flows.prune import default_latency_model, prune_model
    from edgeprune.models.train import evaluate
    from edgeprune.prune.graph import build_space
    from edgeprune.prune.options import PruneGateError, pruned_loaded_model

    out = args.out / name
    out.mkdir(parents=True, exist_ok=True)
    model, kind, recipe = load_bench_model(name, args)
    if args.finetune_epochs is not None:
        recipe["finetune_epochs"] = args.finetune_epochs
    data = model.data
    assert data is not None and model.module is not None
    space = build_space(copy.deepcopy(model.module), [torch.from_numpy(x) for x in model.example_inputs])  # may convert
    t0 = time.perf_counter()
    notes: list[str] = []
    profiled: dict = {}
    opts0 = _prune_options(args, recipe, 0.5, "knapsack", "l1", 1, False)
    predictor = default_latency_model(model, space, target, device, opts0, log, notes, store=lut_store(args),
                                      profiled=profiled)
    log(f"[{name}] latency model ready in {time.perf_counter() - t0:.0f} s ({profiled.get('table_source')} tables): "
        f"predicted full {predictor.predict(space.full_widths()):.3f} ms")
    onnx_paths = {"original": out / "original.onnx"}
    if not onnx_paths["original"].exists():
        export_onnx(model, onnx_paths["original"])
    base_acc = float(evaluate(model.module, data.val, data.task, batch_size=256))
    runs: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    labels = sorted(args.strategies, key=lambda s: s.startswith("tp"))  # tp matches an edgeprune run's MACs
    for label in labels:
        strategy, importance, steps, depth = parse_label(label)
        for b in args.budgets:
            key = f"{label}-{b:g}"
            rec_path = out / f"{key}.json"
            onnx_paths[key] = out / f"{key}.onnx"
            if rec_path.exists() and onnx_paths[key].exists():
                runs[key] = json.loads(rec_path.read_text())
                continue
            log(f"[{name}] {label} at {b:g}x ...")
            t1 = time.perf_counter()
            try:
                if strategy == "tp":
                    match = runs.get(f"{args.tp_match}-{b:g}")
                    if match is None:
                        raise EdgepruneError(f"no {args.tp_match} run at {b:g} to match the MACs of")
                    r = peer.tp_prune(model, importance, match["macs"],
                                      _prune_options(args, recipe, b, "knapsack", "l1", 1, False), log)
                    module, rec = r.pop("module"), {**r, "importance": importance, "predicted_ms": None,
                                                    "original_predicted_ms": None, "widths": None,
                                                    "matched": f"{args.tp_match}-{b:g}"}
                    pruned = dataclasses.replace(model, module=module)
                else:
                    opts = _prune_options(args, recipe, b, strategy, importance, steps, depth)
                    if opts is None:
                        raise EdgepruneError("this edgeprune's PruneOptions has no depth field yet")
                    try:
                        res = prune_model(model, options=opts, latency_model=predictor, log=log, progress=False)
                    except PruneGateError as exc:  # a default accuracy limit: the result is still the figure
                        res = exc.result
                        log(f"[{name}] {key}: {exc}")
                    pruned = pruned_loaded_model(model, res)
                    rec = {"importance": res.importance, "accuracy_after_search": res.accuracy_after_search,
                           "predicted_ms": res.predicted_latency_ms, "original_predicted_ms": res.original_predicted_ms,
                           "widths": res.widths, "search_seconds": res.search_seconds,
                           "finetune_seconds": res.finetune_seconds, "notes": res.notes,
                           "budget_check": res.budget_check}
                    module = res.module
            except (EdgepruneError, RuntimeError, ValueError) as exc:  # e.g. an unreachable budget, a tp failure
                log(f"[{name}] {key}: skipped: {type(exc).__name__}: {exc}")
                skipped[key] = f"{type(exc).__name__}: {exc}"
                del onnx_paths[key]
                continue
            seconds = time.perf_counter() - t1
            export_onnx(pruned, onnx_paths[key])
            cost = graph_cost(onnx_paths[key])
            runs[key] = {"strategy": label, "budget": b, "gradual_steps": steps, "depth": depth,
                         **rec, "accuracy": float(evaluate(module, data.val, data.task, batch_size=256)),
                         "params": cost.params, "macs": cost.macs, "seconds": seconds}
            rec_path.write_text(json.dumps(runs[key], indent=1, default=str))
            log(f"[{name}] {key}: acc {runs[key]['accuracy']:.2f}% (before fine-tune "
                f"{runs[key]['accuracy_after_search']:.2f}%), {cost.macs / 1e6:.2f} M MACs, {seconds:.0f} s")
    log(f"[{name}] measuring {len(onnx_paths)} ONNX models interleaved ({args.rounds} rounds) ...")
    meas = measure_interleaved(onnx_paths, out / "measure", target, device, args.rounds, args.min_time)
    orig_ms = meas["original"]["median_ms"]
    orig_cost = graph_cost(onnx_paths["original"])
    for key, r in runs.items():
        r["measured_ms"] = meas[key]["median_ms"]
        r["measured_ratio"] = meas[key]["median_ms"] / orig_ms
        r["spread"] = meas[key]["spread"]
    return {"model": name, "kind": kind, "spec": model.spec,
            "original": {"accuracy": base_acc, "measured_ms": orig_ms, "params": orig_cost.params,
                         "val_samples": len(data.val), "macs": orig_cost.macs,
                         "predicted_ms": predictor.predict(space.full_widths()), "spread": meas["original"]["spread"]},
            "runs": runs, "skipped": skipped, "latency_model": profiled, "notes": notes, "recipe": recipe}


def compare(res: dict, strategies: list[str], budgets: list[float], field: str = "accuracy",
            reference: str = "uniform") -> dict:
    """Comparisons against ``reference`` (a strategy label: "uniform", "tp", ...) on
    ``field``: "accuracy" (after fine-tuning) or "accuracy_after_search" (after the cut
    and BN recalibration only: what the search itself preserved).

    Same accuracy compares *curves*: for an accuracy level A, the smallest measured
    latency at which each strategy reaches A (linear between budgets). When both curves
    reach A already at their fastest point, the data cannot separate them and the pair
    is reported as such, not as a ratio."""
    ref = reference
    runs = {k: {**r, "accuracy": r[field]} for k, r in res["runs"].items()}
    base = res["original"]
    curves = {s: [(r["measured_ms"], r["accuracy"]) for r in runs.values() if r["strategy"] == s]
              for s in set(strategies) | {ref}}
    others = [s for s in strategies if s != ref and curves.get(s) and not (ref.startswith("tp") and s.startswith("tp"))]
    out: dict = {"reference": ref, "same_latency": [], "same_accuracy": [], "half_budget": {}}
    levels = [("within 1 point of the original", base["accuracy"] - 1.0)]
    for b in budgets:
        u = runs.get(f"{ref}-{b:g}")
        if u is None:
            continue
        levels.append((f"{ref}'s accuracy at budget {b:g}", u["accuracy"]))
        for s in others:
            if f"{s}-{b:g}" not in runs:
                continue
            acc = interp_acc_at(curves[s], u["measured_ms"])
            out["same_latency"].append({"budget": b, "strategy": s, "ref_ms": u["measured_ms"],
                                        "ref_acc": u["accuracy"], "strategy_acc_at_same_ms": acc})
    seen: set[float] = set()
    for label, level in levels:
        if round(level, 6) in seen:
            continue
        seen.add(round(level, 6))
        lu, ku = latency_for_acc(curves.get(ref, []), level)
        for s in others:
            ls, ks = latency_for_acc(curves[s], level)
            entry = {"level": label, "accuracy": level, "strategy": s, "strategy_ms": ls, "strategy_bound": ks,
                     "ref_ms": lu, "ref_bound": ku, "ratio": None, "verdict": ""}
            if ls is None and lu is None:
                entry["verdict"] = "neither reaches it"
            elif ls is None:
                entry["verdict"] = f"{s} never reaches it ({ref} at {lu:.3f} ms)"
            elif lu is None:
                entry["verdict"] = f"{ref} never reaches it; {s} at {ks}{ls:.3f} ms"
            elif ku and ks:
                entry["verdict"] = (f"not separated: both reach it at every measured budget (fastest: {s} "
                                    f"{ls:.3f} ms, {ref} {lu:.3f} ms)")
            else:
                entry["ratio"] = ls / lu
                bound = "<= " if ks and not ku else ">= " if ku and not ks else ""
                entry["verdict"] = f"{s} {ls:.3f} ms vs {ref} {lu:.3f} ms: {bound}{ls / lu:.2f}x"
            out["same_accuracy"].append(entry)
    for s in strategies:
        r = runs.get(f"{s}-0.5")
        if r is not None:
            out["half_budget"][s] = {"measured_ratio": r["measured_ratio"], "accuracy": r["accuracy"],
                                     "loss": base["accuracy"] - r["accuracy"]}
    return out


def references(strategies: list[str], runs: dict) -> list[str]:
    """The references a model is compared against: its first Torch-Pruning label, then
    uniform, each only when it was run."""
    ran = {r["strategy"] for r in runs.values()}
    tp = [s for s in strategies if s.startswith("tp") and s in ran][:1]
    return tp + ["uniform"] * ("uniform" in ran)


def comparisons_of(res: dict, strategies: list[str], budgets: list[float]) -> dict:
    out = {}
    for ref in references(strategies, res["runs"]):
        out[ref] = compare(res, strategies, budgets, reference=ref)
        out[ref + ":before-ft"] = compare(res, strategies, budgets, "accuracy_after_search", reference=ref)
    tp = next((r for r in out if r.startswith("tp") and ":" not in r), None)
    out["aims"] = peer.aims(res, out.get(tp), res.get("kind", "cnn"), strategies)
    return out


def _f(v, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


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
            pred = r["predicted_ms"] / r["original_predicted_ms"] if r.get("predicted_ms") else None
            lines.append(f"| {r['strategy']} | {r['budget']:g} | {r['measured_ms']:.3f} | {r['measured_ratio']:.2f} | "
                         f"{_f(pred)} | {r['accuracy']:.2f} | {_f(r.get('accuracy_after_search'))} | "
                         f"{r['macs'] / 1e6:.1f} | {_f(r.get('search_seconds'), '.0f')} | {r['seconds']:.0f} |")
        for key, why in res.get("skipped", {}).items():
            lines.append(f"\n{key}: not run ({why})")
        comp = comparisons[name]
        lines += ["", "### Aims (issue 17)"] + peer.render_aims(comp.get("aims", []))
        for ref in (k for k in comp if k != "aims" and ":" not in k):
            for title, c in ((f"vs {ref}, after fine-tuning", comp[ref]),
                             (f"vs {ref}, before fine-tuning (cut + BN recalibration only)", comp.get(ref + ":before-ft"))):
                if c is not None:
                    lines += ["", f"### {title}"] + _render_comparison(c)
        lines.append("")
    return "\n".join(lines)


def _render_comparison(c: dict) -> list[str]:
    ref = c["reference"]
    lines: list[str] = ["", f"Same measured latency as {ref} (accuracy, interpolated):", ""]
    for e in c["same_latency"]:
        a = e["strategy_acc_at_same_ms"]
        lines.append(f"- budget {e['budget']:g}: {ref} {e['ref_acc']:.2f}% at {e['ref_ms']:.3f} ms; "
                     f"{e['strategy']} {'n/a (outside its measured range)' if a is None else f'{a:.2f}%'}")
    lines += ["", f"Same accuracy (smallest measured latency reaching it, strategy / {ref}; aim <= 0.8):", ""]
    for e in c["same_accuracy"]:
        lines.append(f"- {e['level']} ({e['accuracy']:.2f}%): {e['verdict']}")
    lines += ["", "At the 0.5 budget (the aims table above judges it):", ""]
    for s, e in c["half_budget"].items():
        lines.append(f"- {s}: measured {e['measured_ratio']:.2f}x of the original, accuracy {e['accuracy']:.2f}% "
                     f"({-e['loss']:+.2f} points)")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="digits-cnn,digits-resnet,mobilenetv3-small,shufflenet-v2,regnet-x,vit-tiny",
                    help=f"zoo names and/or families of benchmarks/families.py ({', '.join(FAMILIES)})")
    ap.add_argument("--budgets", default="0.35,0.5")
    ap.add_argument("--strategies", default="knapsack,greedy,tp",
                    help="labels strategy[/importance][@steps][+depth]; tp[/groupnorm|l2|l1|taylor] = Torch-Pruning")
    ap.add_argument("--tp-match", default=None, metavar="LABEL",
                    help="the strategy whose MACs Torch-Pruning is pruned to (default: the first non-tp label)")
    ap.add_argument("--tables", choices=("model", "full"), default="model",
                    help="edgeprune's latency model: the device model (+ this model's points) or full tables")
    ap.add_argument("--device-model-cache", type=Path, default=None, metavar="DIR",
                    help="an $EDGEPRUNE_CACHE holding a built device model (copied into --out, never changed)")
    ap.add_argument("--profile-budget", type=float, default=180.0, help="device seconds a 'model' profile may spend")
    ap.add_argument("--finetune-epochs", type=float, default=None, help="override every model's fine-tuning epochs")
    ap.add_argument("--out", type=Path, default=Path("out/bench-pruning"))
    ap.add_argument("--families-out", type=Path, default=Path("out/families"),
                    help="where the families' trained weights and data.npz are cached")
    ap.add_argument("--train-epochs", type=int, default=None, help="families: override the training epochs")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds per model per round")
    ap.add_argument("--distill", action=argparse.BooleanOptionalAction, default=None,
                    help="fine-tune every strategy with (--distill) or without (--no-distill) distillation "
                         "(default: each model's recipe, else the library's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--render-only", action="store_true", help="re-render pruning.md from --out/pruning.json")
    args = ap.parse_args()
    args.budgets = [float(b) for b in args.budgets.split(",")]
    args.strategies = args.strategies.split(",")
    for label in args.strategies:
        parse_label(label)  # a bad label fails now, not after an hour
    args.tp_match = args.tp_match or next((s for s in args.strategies if not s.startswith("tp")), "knapsack")
    if args.render_only:
        saved = json.loads((args.out / "pruning.json").read_text())
        results = saved["results"]
        comparisons = {}
        for res in results:
            strategies = sorted({r["strategy"] for r in res["runs"].values()}, key=lambda s: s != "uniform")
            budgets = sorted({r["budget"] for r in res["runs"].values()})
            comparisons[res["model"]] = comparisons_of(res, strategies, budgets)
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
    from edgeprune.errors import EdgepruneError
    failed: dict[str, str] = {}
    for name in args.models.split(","):
        try:
            res = run_model(name, args, target, LOCAL)
        except EdgepruneError as exc:  # e.g. a family this edgeprune cannot trace yet: the others still run
            failed[name] = f"{type(exc).__name__}: {exc}"
            log(f"[{name}] not benchmarked: {failed[name]}")
            continue
        results.append(res)
        comparisons[name] = comparisons_of(res, args.strategies, args.budgets)
        (args.out / "pruning.json").write_text(json.dumps({"results": results, "comparisons": comparisons}, indent=1,
                                                          default=str))
        (args.out / "pruning.md").write_text(render(results, comparisons, args.strategies))
    text = render(results, comparisons, args.strategies)
    text += "".join(f"\n## {n}\n\nnot benchmarked: {why}\n" for n, why in failed.items())
    (args.out / "pruning.md").write_text(text)
    print(text)
    print(f"\n(total {time.perf_counter() - t0:.0f} s; JSON and Markdown in {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
