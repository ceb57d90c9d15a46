"""``prune_depth``: depth pruning (``--depth only`` / ``--depth auto``), alone or before
width pruning; :func:`edgeprune.flows.prune.prune_model` hands over to it when
``PruneOptions.depth`` is not ``"off"``.

1. the removable residual blocks (:func:`edgeprune.prune.depth.find_blocks`) and the
   latency model of the original (the one width pruning uses); a block's saving is the
   prediction of the model without its layers (``predict_without``);
2. blocks are dropped greedily, the least validation-loss increase per predicted ms
   first (:func:`~edgeprune.prune.depth.greedy_drop`):

   * ``only``: until the whole budget is met;
   * ``auto``: while a block costs less loss per ms than width pruning would pay. That
     price is measured once on the original: the width search (knapsack, the run's
     importance) cut to the whole budget, BN recalibrated, not fine-tuned; its loss
     increase divided by the ms it saves. A block cheaper than that average is a better
     buy than channels; width pruning then finishes the budget on what remains.
3. the depth-pruned model is timed end to end beside the original (one bundle, paired
   rounds, like every budget check); with ``only`` a miss corrects the target and drops
   more (at most ``budget_retries`` times);
4. ``auto``: :func:`~edgeprune.flows.prune.prune_model` prunes the channels of the remaining model to
   ``budget / measured depth fraction`` of it, through its own budget check
   (:func:`edgeprune.flows.budget.meet_budget`); the run's measured fraction is the
   product of the two paired measurements. ``only``: the model is fine-tuned here.
5. the result is described against the original model (cost, accuracy, the accuracy
   gate, the budget verdict), with the dropped blocks in its notes and history.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edgeprune.errors import ModelError, PruneError
from edgeprune.models.base import LoadedModel
from edgeprune.prune.options import (PruneGateError, PruneOptions, PruneResult, eval_batch_size, layer_channels,
                                     torch_inputs)

if TYPE_CHECKING:
    from torch import nn

    from edgeprune.config.devices import Device
    from edgeprune.config.targets import Target
    from edgeprune.latency.adaptive import AdaptiveLatency
    from edgeprune.prune.depth import Block
    from edgeprune.prune.graph import TracedSpace
    from edgeprune.prune.space import LatencyModel

Log = Callable[[str], None]


def _measure_dropped(lm: "AdaptiveLatency", model: LoadedModel, original: "nn.Module", dropped: "nn.Module",
                     space: "TracedSpace", gone_layers: set[str]) -> float:
    """The depth-pruned model end to end as a fraction of the original, paired round by
    round (the original is the bundle's anchor, as in every budget check)."""
    from edgeprune.compile.export import export_onnx
    from edgeprune.errors import BenchError
    from edgeprune.latency.layer_bundle import Job

    def job(module: "nn.Module", key: str, macs: int) -> Job:
        def write(path) -> None:
            export_onnx(dataclasses.replace(model, name=f"{model.name}-{key}", module=module, data=None), path)
        return Job(key=key, write_onnx=write, inputs=lambda: list(model.example_inputs), input_key="model", macs=macs)

    full_macs = space.macs()
    kept = full_macs - sum(l.macs(l.in_channels, l.out_channels) for l in space.layers if l.name in gone_layers)
    timings, errors = lm.measurer.measure([job(dropped, "depth", kept)], lm.settings.model_rounds,
                                          lm.settings.series(models=True), description="depth-pruned model end to end",
                                          anchor=job(original, "full", full_macs))
    if "depth" not in timings or "full" not in timings:
        raise BenchError(f"cannot time the depth-pruned model end to end: {errors.get('depth') or errors.get('full')}")
    tm = timings["depth"]
    return float(tm.fraction if tm.fraction is not None else tm.ms / timings["full"].ms)


def _width_price(original: "nn.Module", space: "TracedSpace", lm: "LatencyModel", budget_ms: float, opts: PruneOptions,
                 data, split, eval_batch: int, base_loss: float) -> float:
    """Loss per ms that width pruning pays to reach ``budget_ms`` (module docstring, 2.)."""
    from edgeprune.prune.depth import val_loss
    from edgeprune.prune.finetune import recalibrate_bn
    from edgeprune.prune.importance import IMPORTANCE
    from edgeprune.prune.strategies import STRATEGIES, SearchContext

    if not space.prunable_groups():
        return math.inf  # channels cannot pay at all
    name = opts.importance or STRATEGIES.get(opts.strategy).default_importance
    imp = IMPORTANCE.get(name)(seed=opts.seed) if name == "taylor" else IMPORTANCE.get(name)()
    ctx = SearchContext(module=original, space=space, latency=lm, budget_ms=budget_ms,
                        scores=imp(original, space, data), data=data, eval_split=split, eval_batch=eval_batch,
                        seed=opts.seed, log=lambda m: None, progress=False)
    floor = ctx.predict(ctx.min_widths())  # a budget channels alone cannot reach: their price down to their floor
    ctx = dataclasses.replace(ctx, budget_ms=max(budget_ms, floor * 1.02))
    res = STRATEGIES.get("knapsack")().search(ctx)
    saved = float(lm.predict(space.full_widths())) - res.predicted_ms
    if saved <= 0:
        return math.inf
    cut = ctx.cut(res.widths)
    recalibrate_bn(cut, data, seed=opts.seed)
    return max(val_loss(cut.eval(), split, data.task, eval_batch) - base_loss, 0.0) / saved


def prune_depth(
    model: LoadedModel, target: "Target | None", device: "Device | None", opts: PruneOptions, *,
    width_stage: Callable[..., PruneResult], latency_of: Callable[..., "AdaptiveLatency"],
    latency_model: "LatencyModel | None" = None, latency_for: "Callable[[LoadedModel], LatencyModel] | None" = None,
    log: Log, progress: bool = True, profile=None, store=None,
) -> PruneResult:
    """Depth pruning, then (``auto``) width pruning: the module docstring. Arguments as
    :func:`edgeprune.flows.prune.prune_model`, which passes itself as ``width_stage`` and
    its ``default_latency_model`` as ``latency_of`` (this module does not import it back:
    no import circle); ``latency_for`` builds the latency model of the depth-pruned model
    for the width stage when no target/device is given."""
    import torch

    from edgeprune.compile.analysis import model_cost
    from edgeprune.latency.adaptive import AdaptiveLatency
    from edgeprune.models.train import evaluate, torch_threads
    from edgeprune.prune.depth import block_sensitivity, find_blocks, greedy_drop, layers_of, val_loss
    from edgeprune.prune.figures import BUDGET_TOLERANCE
    from edgeprune.prune.finetune import FinetuneConfig, finetune, recalibrate_bn, subset
    from edgeprune.prune.graph import build_space

    data = model.data
    if data is None:
        raise PruneError(f"--depth {opts.depth} scores each block by the validation loss without it, and "
                         f"{model.name} has no data", "pass --data x.npz (x_train, y_train, x_val, y_val) or --depth off")
    if model.module is None:
        raise ModelError(f"{model.name} is an ONNX file: depth pruning needs the PyTorch model")
    notes: list[str] = []
    original = copy.deepcopy(model.module).eval()
    inputs = torch_inputs(model)
    with torch_threads():
        space = build_space(original, inputs, opts.keep_layers)
        blocks, why = find_blocks(original, inputs, space, opts.keep_layers)
    notes += why
    if not blocks and opts.depth == "only":
        raise PruneError(f"--depth only: {model.name} has no removable residual block", "; ".join(why)
                         + "; use --depth auto (width pruning) or --depth off")
    profiled: dict[str, Any] = {}
    if latency_model is None:
        if target is None or device is None:
            raise PruneError("prune_depth needs a target and device (or a latency_model)")
        latency_model = latency_of(model, space, target, device, opts, log, notes, None, profile, store, profiled)
    lm = latency_model
    if not hasattr(lm, "predict_without"):
        raise PruneError(f"the latency model {type(lm).__name__} cannot predict a model without some layers",
                         "depth pruning needs the table-based latency model (the default)")
    l0 = float(lm.predict(space.full_widths()))
    frac = opts.budget if opts.budget is not None else opts.latency_ms / l0  # type: ignore[operator]
    budget_ms = frac * l0
    if opts.depth == "only":
        floor = float(lm.predict_without(layers_of(blocks, [b.name for b in blocks])))
        if floor > budget_ms:
            raise PruneError(f"latency budget {budget_ms:.3f} ms ({frac:.2f}x) is unreachable by depth alone: without "
                             f"every removable block the model is predicted at {floor:.3f} ms ({floor / l0:.2f}x)",
                             f"use --depth auto (blocks and channels) or a budget of at least {floor / l0:.2f}")
    task, eval_batch = data.task, eval_batch_size(original, model)
    split = subset(data.val, opts.search_eval_samples, opts.seed)
    t0 = time.perf_counter()
    with torch_threads():
        torch.manual_seed(opts.seed)
        acc_before = float(evaluate(original, data.val, task, batch_size=eval_batch))
        score = lambda m, bl: block_sensitivity(m, bl, data, split, eval_batch, opts.seed)  # noqa: E731
        price = math.inf
        if opts.depth == "auto" and blocks:
            price = _width_price(original, space, lm, budget_ms, opts, data, split, eval_batch,
                                 val_loss(original, split, task, eval_batch))
        target_ms, checks = budget_ms, []
        plan = greedy_drop(original, blocks, lambda gone: float(lm.predict_without(gone)), score, target_ms, price,
                           log=log)
        measured = plan.predicted_ms / l0
        for attempt in range(opts.budget_retries + 1):
            if not plan.dropped or not isinstance(lm, AdaptiveLatency):
                break
            measured = _measure_dropped(lm, model, original, plan.module, space, layers_of(blocks, plan.dropped))
            checks.append({"dropped": list(plan.dropped), "measured_fraction": round(measured, 4),
                           "predicted_fraction": round(plan.predicted_ms / l0, 4)})
            log(f"depth-pruned model measured end to end: {measured:.3f}x the original (predicted "
                f"{plan.predicted_ms / l0:.3f}x)")
            if opts.depth != "only" or measured <= frac * (1 + BUDGET_TOLERANCE) or attempt == opts.budget_retries \
                    or len(plan.dropped) == len(blocks):
                break
            target_ms *= frac / measured  # the device says the prediction was optimistic: aim lower
            before = plan
            plan = greedy_drop(original, blocks, lambda gone: float(lm.predict_without(gone)), score, target_ms,
                               price, dropped=plan.dropped, log=log)
            plan.steps = before.steps + plan.steps
            if len(plan.dropped) == len(before.dropped):
                break
        dropped = plan.module
        recalibrate_bn(dropped, data, seed=opts.seed)
        acc_depth = float(evaluate(dropped, data.val, task, batch_size=eval_batch))
    t_depth = time.perf_counter() - t0
    history: list[dict[str, Any]] = [{
        "step": "depth", "mode": opts.depth, "candidates": [b.name for b in blocks], "dropped": list(plan.dropped),
        "drops": plan.steps, "stopped": plan.stopped, "width_loss_per_ms": None if math.isinf(price) else price,
        "predicted_fraction": round(plan.predicted_ms / l0, 4), "measured": checks}]
    if plan.dropped:
        notes.append(f"depth ({opts.depth}): dropped {len(plan.dropped)} of {len(blocks)} removable block(s): "
                     f"{', '.join(plan.dropped)} (predicted {plan.predicted_ms / l0:.2f}x; {plan.stopped})")
    else:
        notes.append(f"depth ({opts.depth}): no block dropped ({plan.stopped or 'no candidate'})")

    width: PruneResult | None = None
    current, acc_search, predicted, t_ft = dropped, acc_depth, plan.predicted_ms, 0.0
    if opts.depth == "auto" and measured > frac * ((1 + BUDGET_TOLERANCE) if checks else 1.0):
        inner_model, inner_lm = model, lm  # nothing dropped: plain width pruning on the same latency model
        if plan.dropped:
            inner_model = dataclasses.replace(model, name=f"{model.name}-depth", module=dropped)
            inner_lm = latency_for(inner_model) if latency_for is not None else None
            if inner_lm is None and (target is None or device is None):
                raise PruneError("--depth auto without a target and device needs latency_for (the latency model "
                                 "of the depth-pruned model for the width stage)")
        inner_opts = dataclasses.replace(opts, depth="off", budget=min(1.0, frac / measured), latency_ms=None,
                                         max_accuracy_drop=None, accuracy_gate=False, allow_budget_miss=True)
        try:
            width = width_stage(inner_model, target, device, inner_opts, latency_model=inner_lm, log=log,
                                progress=progress, profile=profile, store=store)
        except PruneGateError as e:  # the inner gate compares with the depth-pruned model: judged below
            width = e.result
        current, acc_search = width.module, width.accuracy_after_search
        predicted = plan.predicted_ms * width.predicted_latency_ms / width.original_predicted_ms
        t_ft, notes = width.finetune_seconds, notes + width.notes
        history += width.history
    elif opts.finetune_epochs > 0:
        t1 = time.perf_counter()
        with torch_threads():
            cfg = FinetuneConfig(epochs=opts.finetune_epochs, lr=opts.learning_rate(space), batch_size=opts.batch_size,
                                 distill=opts.distill, seed=opts.seed + 1, shift=opts.shift)
            before = copy.deepcopy(dropped.state_dict())
            acc_ft = finetune(dropped, data, cfg, teacher=original if opts.distill else None, eval_batch=eval_batch,
                              log=log, progress=progress)
            if acc_ft < acc_depth:
                dropped.load_state_dict(before)
                notes.append(f"fine-tuning lowered validation accuracy ({acc_depth:.2f}% -> {acc_ft:.2f}%); kept the "
                             "weights from before fine-tuning")
        t_ft = time.perf_counter() - t1
    current = current.eval()
    with torch_threads():
        acc_after = float(evaluate(current, data.val, task, batch_size=eval_batch))
        final_space = build_space(current, inputs, opts.keep_layers)

    # the run's measured fraction: blocks (paired with the original) x channels (paired
    # with the depth-pruned model); None when a stage was only predicted
    f_depth = measured if checks else (1.0 if not plan.dropped else None)
    f_width = (width.budget_check or {}).get("measured_fraction") if width is not None else 1.0
    total = f_depth * f_width if f_depth is not None and f_width is not None and (checks or width) else None
    budget_check = None
    if total is not None:
        budget_check = {"measured_fraction": round(total, 4), "budget_fraction": round(frac, 4),
                        "tolerance": BUDGET_TOLERANCE, "met": total <= frac * (1 + BUDGET_TOLERANCE),
                        "depth": {"measured_fraction": round(f_depth, 4), "attempts": checks},
                        "width": width.budget_check if width is not None else None}
    limit = opts.accuracy_limit(True)  # the gate judges against the original, here, not in the width stage
    cost_before = model_cost(dataclasses.replace(model, module=original))
    cost_after = model_cost(dataclasses.replace(model, module=current))
    result = PruneResult(
        module=current, space=final_space, widths=dict(width.widths) if width is not None else {},
        channels=layer_channels(original, current), strategy=opts.strategy if width is not None else "depth",
        importance=width.importance if width is not None else "block-drop",
        budget_ms=float(budget_ms), budget_fraction=opts.budget, original_predicted_ms=l0,
        predicted_latency_ms=float(predicted), accuracy_before=acc_before, accuracy_after=acc_after,
        accuracy_after_search=acc_search, params_before=cost_before.params, params_after=cost_after.params,
        macs_before=cost_before.macs, macs_after=cost_after.macs, max_accuracy_drop=limit,
        accuracy_limit_default=opts.max_accuracy_drop is None and limit is not None,
        seed=opts.seed, search_seconds=t_depth + (width.search_seconds if width is not None else 0.0),
        finetune_seconds=t_ft, history=history, notes=list(dict.fromkeys(notes)), latency_model=type(lm).__name__,
        budget_check=budget_check, allow_budget_miss=opts.allow_budget_miss,
        profile=profiled or (width.profile if width is not None else None),
    )
    if budget_check is not None:
        how = (f"measured end to end at {total:.3f}x the original (blocks {f_depth:.3f}x"
               + (f" x channels {f_width:.3f}x" if width is not None else "") + f"; budget {frac:.3f}x, tolerance "
               f"{BUDGET_TOLERANCE:.0%})")
        result.notes.append(("latency budget met: " if budget_check["met"] else "latency budget missed: ") + how)
    log(f"pruned {model.name} (depth {opts.depth}): accuracy {acc_before:.2f}% -> {acc_after:.2f}%, predicted "
        f"{l0:.3f} -> {predicted:.3f} ms")
    if result.gate_passed is False:
        raise PruneGateError(
            f"accuracy gate failed: {acc_before:.2f}% -> {acc_after:.2f}% loses {result.accuracy_drop:.2f} points "
            f"(allowed {limit:g}" + (", the default limit" if result.accuracy_limit_default else "") + ")", result,
            "results were still written; try a looser --latency-budget, more --finetune-epochs or --depth off")
    if budget_check is not None and not budget_check["met"] and not opts.allow_budget_miss:
        raise PruneGateError(result.notes[-1], result,
                             "results were still written; a looser --latency-budget, --depth auto, or "
                             "--allow-budget-miss")
    return result
