"""How much accuracy a pruned model gets back, by recovery recipe (issue 17, item 7).

The latency half of pruning is the device's; the accuracy half is the recipe's. This script
holds the *cut* fixed — the widths a previous ``benchmarks/pruning.py`` run chose (its
``<model>/<strategy>-<budget>.json``), the channels picked by the importance that run used —
and recovers that same cut with several fine-tuning recipes, so the recipes are compared on
exactly the same pruned network. Nothing is timed: it measures accuracy only, through the
library's own ``keep_by_importance`` / ``apply_widths`` / ``recalibrate_bn`` / ``finetune``
(what ``edgeprune prune`` runs after its search).

Recipes are ``NAME=epochs[,kd][,shift=N][,lr=X]``; the defaults compare the current default
recovery (3 epochs, no distillation) with distillation from the unpruned model and with
more epochs.

Usage:
    python benchmarks/recovery.py --from-run /tmp/b17/bench --families-out /tmp/b17/families \
        --models mobilenetv3-small,regnet-x,vit-tiny [--entry knapsack-0.5] [--recipe ft3=3 ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_RECIPES = ["ft3=3", "ft3+kd=3,kd", "ft8+kd=8,kd", "ft8+kd+lr3e-3=8,kd,lr=3e-3"]


def parse_recipe(text: str) -> tuple[str, dict]:
    """``NAME=epochs[,kd][,shift=N][,lr=X]`` -> (name, FinetuneConfig keyword arguments)."""
    name, _, spec = text.partition("=")
    if not name or not spec:
        raise SystemExit(f"recipe {text!r}: expected NAME=epochs[,kd][,shift=N][,lr=X]")
    parts = spec.split(",")
    kw: dict = {"epochs": float(parts[0])}
    for p in parts[1:]:
        if p == "kd":
            kw["distill"] = True
        elif p.startswith("shift="):
            kw["shift"] = int(p[6:])
        elif p.startswith("lr="):
            kw["lr"] = float(p[3:])
        else:
            raise SystemExit(f"recipe {text!r}: unknown part {p!r}")
    return name, kw


def load(name: str, families_out: Path):
    from edgeprune.models.spec import load_model

    rec_path = families_out / name / "train.json"
    if rec_path.is_file():
        rec = json.loads(rec_path.read_text())
        return load_model(rec["spec"], weights=Path(rec["weights"]), data=Path(rec["data"]), log=lambda m: None), 4
    return load_model(f"zoo:{name}", log=lambda m: None), 2


def run_model(name: str, args, recipes: list[tuple[str, dict]], log) -> dict:
    import torch

    from edgeprune.latency.variants import space_of
    from edgeprune.models.train import evaluate, torch_threads
    from edgeprune.prune.finetune import FinetuneConfig, finetune, has_batchnorm, recalibrate_bn
    from edgeprune.prune.graph import apply_widths, keep_by_importance
    from edgeprune.prune.importance import get_importance

    entry = json.loads((args.from_run / name / f"{args.entry}.json").read_text())
    model, shift = load(name, args.families_out)
    data = model.data
    with torch_threads():
        torch.manual_seed(args.seed)
        original = model.module.eval()
        acc0 = float(evaluate(original, data.val, data.task, batch_size=256))
        space = space_of(model)
        scores = get_importance(entry.get("importance", "taylor"))(original, space, data)
        keep = keep_by_importance(space, scores, entry["widths"])
        cut = apply_widths(original, space, keep)
        if has_batchnorm(cut):
            recalibrate_bn(cut, data, seed=args.seed)
        acc_cut = float(evaluate(cut.eval(), data.val, data.task, batch_size=256))
        log(f"[{name}] original {acc0:.2f} %, cut to {args.entry}'s widths {acc_cut:.2f} % before recovery")
        rows = []
        for rname, kw in recipes:
            student = copy.deepcopy(cut)
            cfg = FinetuneConfig(batch_size=64, seed=args.seed + 1, **{"shift": shift, **kw})
            t0 = time.perf_counter()
            acc = finetune(student, data, cfg, teacher=original if cfg.distill else None, log=log, progress=False)
            secs = time.perf_counter() - t0
            rows.append({"recipe": rname, "config": kw, "accuracy": acc, "drop": acc0 - acc, "seconds": round(secs, 1)})
            log(f"[{name}] {rname}: {acc:.2f} % ({acc - acc0:+.2f} points) in {secs:.0f} s")
    return {"model": name, "entry": args.entry, "original": acc0, "after_cut": acc_cut, "recipes": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from-run", type=Path, required=True, help="a benchmarks/pruning.py --out folder")
    ap.add_argument("--families-out", type=Path, default=REPO / "out" / "families")
    ap.add_argument("--models", default="mobilenetv3-small,regnet-x,vit-tiny")
    ap.add_argument("--entry", default="knapsack-0.5", help="which pruned result's widths: STRATEGY-BUDGET")
    ap.add_argument("--recipe", action="append", help="NAME=epochs[,kd][,shift=N][,lr=X] (repeat)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="write recovery.json here")
    args = ap.parse_args(argv)
    recipes = [parse_recipe(r) for r in (args.recipe or DEFAULT_RECIPES)]

    def log(m: str) -> None:
        print(m, flush=True)

    results = [run_model(m, args, recipes, log) for m in args.models.split(",") if m]
    print("\n| model (original) | after the cut | " + " | ".join(n for n, _ in recipes) + " |")
    print("|---|---|" + "---|" * len(recipes))
    for r in results:
        cells = [f"{x['accuracy']:.2f} ({-x['drop']:+.2f}, {x['seconds']:.0f} s)" for x in r["recipes"]]
        print(f"| {r['model']} ({r['original']:.2f}) | {r['after_cut']:.2f} | " + " | ".join(cells) + " |")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "recovery.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
