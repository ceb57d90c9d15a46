"""The peer baseline of benchmarks/pruning.py: Torch-Pruning's own pruner, as a user of
that library would run it, pruned to the MACs of edgeprune's hardware-aware result and
fine-tuned with the same recipe; and the issue-17 aims the two are judged by.

Torch-Pruning (1.6.1, the library edgeprune traces with) is run the way its README runs
it: ``tp.pruner.MetaPruner(model, example_inputs, importance, global_pruning=True,
pruning_ratio=r, ignored_layers=[the output layer], num_heads={each nn.MultiheadAttention:
its heads})`` and one ``pruner.step()``. Labels:

* ``tp`` / ``tp/groupnorm`` - ``GroupMagnitudeImportance(p=2)``, Torch-Pruning's default:
  the L2 norm of each channel over every coupled layer of its group, mean-normalised per
  group (the DepGraph paper's group-norm importance, without its sparse training);
* ``tp/l2`` - plain global magnitude: the L2 norm of the channel's own weights in the
  group's first layer, not normalised (``MagnitudeImportance(p=2, "first", None)``);
* ``tp/l1`` - group L1 norm; ``tp/taylor`` - ``GroupTaylorImportance`` (gradients of the
  loss over 8 training batches, accumulated before the step).

The ratio ``r`` is searched (a regula-falsi bracket from a (1 - r)^2 guess) so that the pruned model's MACs match the matched
edgeprune run's, both counted by edgeprune's own counter
(:func:`edgeprune.compile.analysis.model_cost`: the ONNX export, the same count every
record of the benchmark carries), never Torch-Pruning's ``count_ops_and_params`` (which
counts differently). Recovery is the one ``prune_model`` applies: BatchNorm statistics
recalibrated on training batches after the cut, ``finetune`` with the same
``FinetuneConfig``, the pre-fine-tune weights kept when fine-tuning lowered accuracy.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable

import numpy as np

TP_IMPORTANCES = ("groupnorm", "l2", "l1", "taylor")
BISECT_STEPS = 10
MACS_TOLERANCE = 0.01  # matched MACs within 1 %
MAX_RATIO = 0.95
#: issue 17's aims
AIM_VS_TP = 0.8  # <= 0.8x Torch-Pruning's measured latency at equal accuracy
AIM_HALF_RATIO = 0.65  # at a 0.5 budget: <= 0.65x the unpruned model's measured latency
AIM_HALF_LOSS = {"cnn": 1.0, "transformer": 2.0}  # ... losing at most this many points


def tp_importance(name: str):
    import torch_pruning as tp

    if name == "groupnorm":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "l2":
        return tp.importance.MagnitudeImportance(p=2, group_reduction="first", normalizer=None)
    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise ValueError(f"unknown Torch-Pruning importance '{name}'; choose {', '.join(TP_IMPORTANCES)}")


def output_layers(module, inputs) -> list:
    """The Conv/Linear layer that computes the model's output (a user passes it as
    ``ignored_layers``: the class count is not prunable): the last one run in forward."""
    import torch
    from torch import nn

    order: list = []
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append(mod)) for m in module.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            module.eval()(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return order[-1:]


def _taylor_grads(module, data, batches: int = 8, batch_size: int = 64, seed: int = 0) -> None:
    import torch
    from torch.nn import functional as F

    rng = np.random.default_rng(seed)
    x, y = data.train.inputs[0], data.train.labels
    module.zero_grad()
    module.train()
    for _ in range(batches):
        idx = rng.choice(len(y), size=min(batch_size, len(y)), replace=False)
        F.cross_entropy(module(torch.from_numpy(x[idx])), torch.from_numpy(y[idx])).backward()
    module.eval()


def tp_cut(module, inputs, importance: str, ratio: float, data=None, seed: int = 0):
    """A pruned copy of ``module``: one global MetaPruner step at ``ratio``."""
    import torch
    import torch_pruning as tp

    m = copy.deepcopy(module).eval()
    if ratio <= 0:
        return m
    if importance == "taylor":
        _taylor_grads(m, data, seed=seed)
    example = inputs[0] if len(inputs) == 1 else tuple(inputs)
    # as Torch-Pruning's own torchvision example does: attention's channels are pruned
    # per head (embed_dim stays a multiple of num_heads)
    heads = {a: a.num_heads for a in m.modules() if isinstance(a, torch.nn.MultiheadAttention)}
    pruner = tp.pruner.MetaPruner(m, example, importance=tp_importance(importance), global_pruning=True,
                                  pruning_ratio=ratio, max_pruning_ratio=MAX_RATIO, num_heads=heads,
                                  ignored_layers=output_layers(m, inputs))
    with torch.no_grad() if importance != "taylor" else torch.enable_grad():
        pruner.step()
    m.zero_grad(set_to_none=True)
    return m.eval()


def match_macs(model, importance: str, target_macs: int, seed: int, log: Callable[[str], None]):
    """(pruned module, ratio, macs): the global ratio whose MACs (edgeprune's counter) come
    within ``MACS_TOLERANCE`` of ``target_macs`` (else the closest tried). MACs fall
    smoothly as the ratio grows (about as (1 - r)^2: both sides of a layer shrink), so the
    search starts from that guess and refines by regula falsi on a bracket: a handful of
    cuts, each of which retraces the model (seconds), instead of a dozen bisection steps."""
    from edgeprune.compile.analysis import model_cost
    from edgeprune.prune.options import torch_inputs

    inputs = torch_inputs(model)
    full = model_cost(model).macs
    tried: list[tuple[float, int, object]] = []

    def cut(r: float) -> int:
        m = tp_cut(model.module, inputs, importance, r, model.data, seed)
        c = model_cost(dataclasses.replace(model, module=m)).macs
        tried.append((r, c, m))
        return c

    lo, c_lo = 0.0, full  # MACs above the target
    hi, c_hi = MAX_RATIO, None  # MACs below it (evaluated lazily)
    r = min(MAX_RATIO, max(0.0, 1.0 - (target_macs / full) ** 0.5))
    for _ in range(BISECT_STEPS):
        c = cut(r)
        if abs(c - target_macs) <= MACS_TOLERANCE * target_macs:
            break
        if c > target_macs:
            lo, c_lo = r, c
        else:
            hi, c_hi = r, c
        if c_hi is None:  # no lower point yet: step towards MAX_RATIO by the same curve
            r = min(MAX_RATIO, lo + (1 - lo) * (1 - (target_macs / c_lo) ** 0.5) * 1.2)
            continue
        t = (c_lo - target_macs) / max(1, c_lo - c_hi)
        r = lo + min(0.9, max(0.1, t)) * (hi - lo)  # regula falsi, kept off the bracket ends
        if hi - lo < 1e-4:
            break
    r, c, m = min(tried, key=lambda t: abs(t[1] - target_macs))
    log(f"torch-pruning/{importance}: ratio {r:.4f} gives {c / 1e6:.2f} M MACs (target {target_macs / 1e6:.2f} M, "
        f"{len(tried)} cut(s))")
    return m, r, c


def tp_prune(model, importance: str, target_macs: int, opts, log: Callable[[str], None]) -> dict:
    """Torch-Pruning at ``target_macs``, recovered with ``opts``' fine-tuning recipe exactly as
    ``prune_model`` recovers its own cut. Returns the record fields and ``module``."""
    import torch

    from edgeprune.latency.variants import space_of
    from edgeprune.models.train import evaluate, torch_threads
    from edgeprune.prune.finetune import FinetuneConfig, finetune, has_batchnorm, recalibrate_bn

    data = model.data
    t0 = time.perf_counter()
    with torch_threads():
        torch.manual_seed(opts.seed)
        try:
            pruned, ratio, macs = match_macs(model, importance, target_macs, opts.seed, log)
        except Exception as exc:  # the peer library failing on a model is a result, not a crash
            raise RuntimeError(f"Torch-Pruning could not prune this model: {type(exc).__name__}: {exc}") from exc
        search_s = time.perf_counter() - t0
        if has_batchnorm(pruned):
            recalibrate_bn(pruned, data, seed=opts.seed)
        acc_search = float(evaluate(pruned, data.val, data.task, batch_size=256))
        t1 = time.perf_counter()
        if opts.finetune_epochs > 0:
            cfg = FinetuneConfig(epochs=opts.finetune_epochs, lr=opts.learning_rate(space_of(model)), batch_size=opts.batch_size,
                                 distill=opts.distill, seed=opts.seed + 1, shift=opts.shift)
            before = copy.deepcopy(pruned.state_dict())
            teacher = copy.deepcopy(model.module).eval() if opts.distill else None
            acc_ft = finetune(pruned, data, cfg, teacher=teacher, log=log, progress=False,
                              description=f"fine-tuning tp/{importance}")
            if acc_ft < acc_search:
                pruned.load_state_dict(before)
        ft_s = time.perf_counter() - t1
        acc = float(evaluate(pruned.eval(), data.val, data.task, batch_size=256))
    return {"module": pruned, "ratio": ratio, "accuracy": acc, "accuracy_after_search": acc_search,
            "search_seconds": search_s, "finetune_seconds": ft_s, "matched_macs": target_macs, "tp_macs": macs}


# --------------------------------------------------------------------------- aims
def aims(res: dict, vs_tp: dict | None, kind: str, strategies: list[str]) -> list[dict]:
    """Issue 17's aims per edgeprune strategy: (1) at equal accuracy <= 0.8x Torch-Pruning's
    measured latency (every accuracy level both curves separate; the worst ratio is the
    verdict), (2) at the 0.5 budget <= 0.65x the unpruned model's measured latency losing
    <= 1 point (CNN) / 2 points (transformer). ``passed`` is None when the data cannot
    decide (no tp run, curves not separated)."""
    base = res["original"]
    rows = []
    ran = {r["strategy"] for r in res["runs"].values()}
    for s in strategies:
        if s.startswith("tp") or s not in ran:
            continue
        if vs_tp is not None:
            mine = [e for e in vs_tp["same_accuracy"] if e["strategy"] == s]
            ratios = [e["ratio"] for e in mine if e["ratio"] is not None]
            never = [e for e in mine if e["strategy_ms"] is None and e["ref_ms"] is not None]
            only = [e for e in mine if e["strategy_ms"] is not None and e["ref_ms"] is None]  # tp never gets there
            if ratios or never or only:
                worst = max(ratios) if ratios else None
                ok = not never and (worst is None or worst <= AIM_VS_TP)
                value = "; ".join(filter(None, [
                    f"worst {worst:.2f}x over {len(ratios)} level(s)" if ratios else "",
                    f"never reaches {len(never)} of tp's level(s)" if never else "",
                    f"reaches {len(only)} level(s) tp never does" if only else ""]))
            else:
                ok, value = None, "not separated (both curves reach every level at their fastest point)"
            rows.append({"strategy": s, "aim": f"<= {AIM_VS_TP}x tp latency at equal accuracy", "value": value,
                         "passed": ok})
            rows += _same_macs(res, s, vs_tp["reference"])
        r = res["runs"].get(f"{s}-0.5")
        if r is not None:
            loss = base["accuracy"] - r["accuracy"]
            limit = AIM_HALF_LOSS.get(kind, 1.0)
            ok = r["measured_ratio"] <= AIM_HALF_RATIO and loss <= limit
            rows.append({"strategy": s, "aim": f"0.5 budget: <= {AIM_HALF_RATIO}x measured, <= {limit:g} point(s) lost",
                         "value": f"{r['measured_ratio']:.2f}x, {-loss:+.2f} points", "passed": ok})
    return rows


def _same_macs(res: dict, s: str, tp: str) -> list[dict]:
    """Per budget, the two points pruned to the same MACs side by side (information: a
    point of ``s`` at least as accurate as tp's and <= 0.8x its latency meets the aim there)."""
    rows = []
    for key, t in sorted(res["runs"].items()):
        if t["strategy"] != tp or t.get("matched") is None:
            continue
        r = res["runs"].get(t["matched"])
        if r is None or r["strategy"] != s:
            continue
        ratio = r["measured_ms"] / t["measured_ms"]
        dominates = r["accuracy"] >= t["accuracy"] and ratio <= AIM_VS_TP
        rows.append({"strategy": s, "aim": f"same MACs as {tp} (budget {r['budget']:g}): latency ratio, accuracy",
                     "value": f"{ratio:.2f}x, {r['accuracy']:.2f}% vs {t['accuracy']:.2f}%",
                     "passed": True if dominates else None})
    return rows


def render_aims(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    mark = {True: "pass", False: "FAIL", None: "n/a"}
    lines = ["", "| strategy | aim | measured | verdict |", "|---|---|---|---|"]
    lines += [f"| {r['strategy']} | {r['aim']} | {r['value']} | {mark[r['passed']]} |" for r in rows]
    return lines
