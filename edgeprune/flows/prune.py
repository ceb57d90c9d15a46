"""``prune_model``: the library function behind ``edgeprune prune`` and the pruning stage
of ``edgeprune compile``.

trace -> latency model of the target -> importance -> search under the budget ->
confirm + measure the choice end to end, search again on a miss (:mod:`~.budget`) ->
cut -> fine-tune (optionally distilled, optionally in gradual steps) -> accuracy gate and
budget verdict.

The budget is either a fraction of the original model's latency on the target
(``budget=0.5``) or milliseconds (``latency_ms=2.0``). The search works on the latency
model (the device model plus this model's own points, or a full measured table,
calibrated on the whole model); the pruned model is then timed end to end beside the
original, and a miss beyond 5 % that retries cannot fix fails the run (the pruning exit
code, the result kept) unless a miss is allowed; the compile flow measures the artifact
once more. A budget the model cannot meet even with every prunable group at its
narrowest snapped width is refused before any work is done — with a device model,
before anything is measured.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edgeprune.errors import ModelError, PruneError
from edgeprune.models.base import LoadedModel
from edgeprune.prune.options import (PruneGateError, PruneOptions, PruneResult, eval_batch_size, layer_channels,
                                     torch_inputs)

if TYPE_CHECKING:
    from edgeprune.config.devices import Device
    from edgeprune.latency.adaptive import AdaptiveLatency
    from edgeprune.latency.settings import ProfileSettings
    from edgeprune.latency.store import LUTStore
    from edgeprune.config.targets import Target
    from edgeprune.prune.graph import TracedSpace
    from edgeprune.prune.space import LatencyModel

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def default_latency_model(
    model: LoadedModel, space: "TracedSpace", target: "Target", device: "Device", opts: PruneOptions, log: Log,
    notes: list[str] | None = None, feasible: "Callable[[LatencyModel], None] | None" = None,
    profile: "ProfileSettings | None" = None, store: "LUTStore | None" = None,
    profiled: dict[str, Any] | None = None,
) -> "AdaptiveLatency":
    """The latency model of ``target`` on ``device`` for ``space`` with the options'
    backend (default: the target's preferred one): the device model plus this model's
    own points (``opts.tables == "model"``) or a full measured table, profiled on first
    use and reused from the cache afterwards (:func:`edgeprune.flows.profile.profile_model`).
    ``feasible`` sees the device model's prediction before anything is measured (an
    unreachable budget fails in seconds). The profiling is part of the pruning run:
    ``notes`` gets how it went."""
    from edgeprune.flows.profile import profile_model
    from edgeprune.latency.grid import GridSettings
    from edgeprune.latency.settings import ProfileSettings

    name = opts.backend or (list(target.backends) or ["onnxruntime"])[0]
    base = profile or ProfileSettings(grid=GridSettings(lanes=target.fp32_lanes()))
    settings = dataclasses.replace(base, tables=opts.tables, profile_budget_s=opts.profile_budget_s)
    result = profile_model(model, target, device, name, settings, store, space=space, log=log, feasible=feasible)
    if notes is not None:
        notes += result.notes
        notes.append(result.note())
    if profiled is not None:
        profiled.update({"table_source": result.tables, "profile_seconds": round(result.seconds, 2),
                         "points_measured": result.points_measured, "points_used": result.points_used,
                         "table": str(result.table_path)})
    assert result.adaptive is not None  # profile_model always builds it
    return result.adaptive


def prune_model(
    model: LoadedModel,
    target: "Target | None" = None,
    device: "Device | None" = None,
    options: PruneOptions | None = None,
    *,
    latency_model: "LatencyModel | None" = None,
    log: Log = _stderr,
    progress: bool = True,
    profile: "ProfileSettings | None" = None,
    store: "LUTStore | None" = None,
    **overrides: Any,
) -> PruneResult:
    """Prune ``model`` to a latency budget on ``target`` and fine-tune it.

    ``options`` (or keyword overrides of its fields, e.g. ``budget=0.5,
    strategy="knapsack"``) say what to do. ``latency_model`` defaults to the measured
    table of ``target`` on ``device``, measured with ``profile`` (default: the
    target's lanes and the profile defaults; ``options.tables`` and
    ``options.profile_budget_s`` always apply) into ``store`` (default: the cache). Raises :class:`ModelError` for a model that
    cannot be pruned or traced, :class:`PruneError` for an unreachable budget, and
    :class:`PruneGateError` (carrying the result) when ``max_accuracy_drop`` is missed.
    """
    import torch

    from edgeprune.compile.analysis import model_cost
    from edgeprune.flows.budget import BudgetOutcome, meet_budget
    from edgeprune.latency.adaptive import AdaptiveLatency
    from edgeprune.prune.figures import BUDGET_TOLERANCE
    from edgeprune.models.train import evaluate, torch_threads
    from edgeprune.prune.finetune import FinetuneConfig, finetune, recalibrate_bn, subset
    from edgeprune.prune.graph import build_space
    from edgeprune.prune.importance import IMPORTANCE
    from edgeprune.prune.strategies import STRATEGIES, SearchContext

    opts = dataclasses.replace(options or PruneOptions(), **overrides)
    opts.validate()
    if model.module is None:
        raise ModelError(f"{model.name} is an ONNX file: structured pruning needs the PyTorch model",
                         "give zoo:NAME, module:factory (+ --weights) or a .pt2/.pt torch model")
    strategy_cls = STRATEGIES.get(opts.strategy)
    importance_name = opts.importance or strategy_cls.default_importance
    importance_cls = IMPORTANCE.get(importance_name)
    data = model.data
    # distillation (on by default) is part of fine-tuning, which a model without data skips
    if data is None and (strategy_cls.needs_data or importance_cls.needs_data):
        if opts.importance is None and importance_cls.needs_data and not strategy_cls.needs_data:
            importance_name, importance_cls = "l1", IMPORTANCE.get("l1")  # default falls back quietly
        else:
            need = [n for n, c in ((opts.strategy, strategy_cls), (importance_name, importance_cls)) if c.needs_data]
            raise PruneError(f"{' and '.join(need)} needs training data and {model.name} has none",
                             "pass --data x.npz (x_train, y_train, x_val, y_val)")
    notes: list[str] = []
    if data is None:
        notes.append("no data: pruned without fine-tuning or accuracy checks")
        if opts.max_accuracy_drop is not None:
            raise PruneError("--max-accuracy-drop needs validation data", "pass --data")
    limit = opts.accuracy_limit(data is not None)  # None: no gate

    if isinstance(model.module, (torch.jit.ScriptModule, torch.fx.GraphModule)):
        kind = "TorchScript" if isinstance(model.module, torch.jit.ScriptModule) else "torch.export / FX"
        raise ModelError(
            f"{model.name} is a {kind} graph: its layers are not nn.Modules, so channels cannot be traced and cut",
            "give the model as Python code: module:factory (+ --weights state_dict) or zoo:NAME",
        )
    # ---- depth pruning (--depth only / auto): its own flow, which calls back here for width
    if opts.depth != "off":
        from edgeprune.flows.depth import prune_depth

        return prune_depth(model, target, device, opts, width_stage=prune_model, latency_of=default_latency_model,
                           latency_model=latency_model, log=log, progress=progress, profile=profile, store=store)
    # ---- end depth pruning
    original = copy.deepcopy(model.module).eval()
    inputs = torch_inputs(model)
    with torch_threads():
        space = build_space(original, inputs, opts.keep_layers)
    notes += space.notes
    if not space.prunable_groups():
        raise PruneError(*_no_groups_message(model.name, space.notes, opts.keep_layers))
    def unreachable(lm: "LatencyModel", what: str, slack: float = 0.0) -> None:
        """Refuse a budget the narrowest widths cannot reach (``what``: by which model)."""
        ctx0 = SearchContext(module=original, space=space, latency=lm, budget_ms=0.0, scores={})
        mins = ctx0.min_widths()
        l0_, l_min = float(lm.predict(space.full_widths())), ctx0.predict(mins)
        need = opts.latency_ms if opts.latency_ms is not None else opts.budget * l0_  # type: ignore[operator]
        if l_min <= need * (1 + slack):
            return
        fixed = [layer.name for layer in space.layers if not (layer.in_group in mins or layer.out_group in mins)]
        raise PruneError(
            f"latency budget {need:.3f} ms ({need / l0_:.2f}x) is unreachable: {what} the original at {l0_:.3f} ms "
            f"and even the narrowest width of every prunable group at {l_min:.3f} ms ({l_min / l0_:.2f}x)",
            ("layers that pruning cannot shrink: " + ", ".join(fixed[:8]) + "; ") * bool(fixed)
            + f"use a budget of at least {l_min / l0_:.2f} of the original"
            + (" or fewer --keep-layer" if opts.keep_layers else ""),
        )

    profiled: dict[str, Any] = {}  # how the latency model was profiled (for the result)
    if latency_model is None:
        if target is None or device is None:
            raise PruneError("prune_model needs a target and device (or a latency_model)")
        def feasible(lm: "LatencyModel") -> None:
            # before measuring: the device model's layer sum (no remainder yet: a lower
            # bound of the reachable fraction when the remainder does not shrink), with
            # 10 % for the device model's error
            if opts.budget is not None:
                unreachable(lm, "before measuring anything, the device model predicts", slack=0.10)

        latency_model = default_latency_model(model, space, target, device, opts, log, notes, feasible, profile,
                                              store, profiled)
    unreachable(latency_model, "the latency model predicts")
    full = space.full_widths()
    l0 = float(latency_model.predict(full))
    budget_ms = opts.latency_ms if opts.latency_ms is not None else opts.budget * l0  # type: ignore[operator]

    task = data.task if data is not None else "classification"
    eval_batch = eval_batch_size(original, model)
    acc_before = float(evaluate(original, data.val, task, batch_size=eval_batch)) if data is not None else None
    eval_split = subset(data.val, opts.search_eval_samples, opts.seed) if data is not None else None
    importance = importance_cls() if importance_name != "taylor" else importance_cls(seed=opts.seed)
    teacher = original if opts.distill else None
    log(f"pruning {model.name}: predicted {l0:.3f} ms -> budget {budget_ms:.3f} ms "
        f"({budget_ms / l0:.2f}x) with {opts.strategy} / {importance_name}")

    outcome: BudgetOutcome | None = None
    current, cur_space = original, space
    history: list[dict[str, Any]] = []
    widths: dict[str, int] = dict(full)
    predicted = l0
    acc_search: float | None = None
    t_search = t_ft = 0.0
    steps = opts.gradual_steps
    with torch_threads():
        torch.manual_seed(opts.seed)
        for k in range(1, steps + 1):
            step_budget = l0 * (budget_ms / l0) ** (k / steps) if steps > 1 else budget_ms
            t0 = time.perf_counter()
            scores = importance(current, cur_space, data)
            ctx = SearchContext(
                module=current, space=cur_space, latency=latency_model, budget_ms=step_budget, scores=scores,
                data=data, eval_split=eval_split, eval_batch=eval_batch, teacher=teacher,
                rescore=lambda m, sp: importance(m, sp, data), seed=opts.seed + k - 1, log=log,
                progress=progress, options=opts.strategy_options,
            )
            if k == steps and isinstance(latency_model, AdaptiveLatency):  # the device has the last word
                outcome = meet_budget(latency_model, lambda b: STRATEGIES.get(opts.strategy)().search(
                    dataclasses.replace(ctx, budget_ms=b)), step_budget, BUDGET_TOLERANCE, opts.budget_retries, log)
                res = outcome.result
            else:
                res = STRATEGIES.get(opts.strategy)().search(ctx)
            pruned = res.module if res.module is not None else ctx.cut(res.widths)
            t_search += time.perf_counter() - t0
            widths = {**widths, **res.widths}
            predicted = res.predicted_ms
            history.append({"step": k, "budget_ms": step_budget, "predicted_ms": predicted,
                            "widths": dict(res.widths), "evaluations": res.evaluations, "search": res.history})
            notes += res.notes
            if data is not None:
                recalibrate_bn(pruned, data, seed=opts.seed)  # cut inputs shift the BN statistics after them
                acc_search = float(evaluate(pruned, data.val, task, batch_size=eval_batch))
                epochs = opts.finetune_epochs / steps
                t0 = time.perf_counter()
                if epochs > 0:
                    cfg = FinetuneConfig(epochs=epochs, lr=opts.learning_rate(space), batch_size=opts.batch_size, distill=opts.distill,
                                         seed=opts.seed + k, shift=opts.shift)
                    before = copy.deepcopy(pruned.state_dict())
                    acc_ft = finetune(pruned, data, cfg, teacher=teacher, eval_batch=eval_batch, log=log,
                                      progress=progress,
                                      description=f"fine-tuning ({k}/{steps})" if steps > 1 else "fine-tuning")
                    if acc_ft < acc_search:  # fine-tuning overfit (or the lr is too high): keep the better weights
                        pruned.load_state_dict(before)
                        notes.append(f"fine-tuning lowered validation accuracy ({acc_search:.2f}% -> {acc_ft:.2f}%); "
                                     "kept the weights from before fine-tuning (try a lower lr or fewer epochs)")
                t_ft += time.perf_counter() - t0
            current = pruned.eval()
            if k < steps:
                cur_space = space.rebuild(current)
        acc_after = None
        if data is not None:
            # finetune() re-estimated the BN statistics of the weights it left (a model's own
            # small momentum would not have followed them); the gate judges exactly those
            acc_after = float(evaluate(current, data.val, task, batch_size=eval_batch))
        final_space = space.rebuild(current)

    # one counter for every report of this model: its ONNX export (compile counts the same way)
    cost_before = model_cost(dataclasses.replace(model, module=original))
    cost_after = model_cost(dataclasses.replace(model, module=current))
    result = PruneResult(
        module=current, space=final_space, widths={g: int(w) for g, w in widths.items() if g in space.groups},
        channels=layer_channels(original, current), strategy=opts.strategy, importance=importance_name,
        budget_ms=float(budget_ms), budget_fraction=opts.budget, original_predicted_ms=l0, predicted_latency_ms=float(predicted),
        accuracy_before=acc_before, accuracy_after=acc_after, accuracy_after_search=acc_search,
        params_before=cost_before.params, params_after=cost_after.params,
        macs_before=cost_before.macs, macs_after=cost_after.macs,
        max_accuracy_drop=limit, accuracy_limit_default=limit is not None and opts.max_accuracy_drop is None,
        seed=opts.seed, search_seconds=t_search, finetune_seconds=t_ft,
        history=history, notes=list(dict.fromkeys(notes)), latency_model=type(latency_model).__name__,
        budget_check=outcome.to_dict() if outcome is not None else None, allow_budget_miss=opts.allow_budget_miss,
        profile=profiled or None,
    )
    missed = None
    if outcome is not None and outcome.measured_fraction is not None:
        how = (f"measured end to end at {outcome.measured_fraction:.3f}x the original (budget "
               f"{outcome.target_fraction:.3f}x, tolerance {BUDGET_TOLERANCE:.0%}) after {outcome.searches} search(es) "
               f"and {len(outcome.checks)} measured variant(s)")
        if outcome.met:
            result.notes.append(f"latency budget met: {how}")
        else:
            missed = f"latency budget missed: {how}"
            result.notes.append(missed + (" (allowed by --allow-budget-miss)" if opts.allow_budget_miss else ""))
    if acc_before is not None and acc_after is not None:
        log(f"pruned {model.name}: accuracy {acc_before:.2f}% -> {acc_after:.2f}%, predicted "
            f"{l0:.3f} -> {predicted:.3f} ms, params {result.params_before:,} -> {result.params_after:,}")
    if result.gate_passed is False:
        which = (f"the default limit of {limit:g}; set --max-accuracy-drop POINTS, or none for no limit"
                 if result.accuracy_limit_default else f"allowed {limit:g}")
        raise PruneGateError(
            f"accuracy gate failed: {acc_before:.2f}% -> {acc_after:.2f}% loses {result.accuracy_drop:.2f} points "
            f"({which}); best trade-off found: {acc_after:.2f}% at predicted "
            f"{predicted:.3f} ms ({predicted / l0:.2f}x of {l0:.3f} ms)",
            result,
            "results were still written; try a looser --latency-budget, more --finetune-epochs or another --lr",
        )
    if missed and not opts.allow_budget_miss:
        raise PruneGateError(
            missed, result,
            "results were still written; a looser --latency-budget, a larger --profile-budget, or --allow-budget-miss",
        )
    return result


def _no_groups_message(name: str, notes: list[str], keep_layers: tuple[str, ...]) -> tuple[str, str]:
    """"Has no prunable channel groups" in one line that says why (each module left whole
    and its reason, from ``space.notes``), and a hint: a silent no-op would hide that the
    user's model was never pruned."""
    reasons = list(dict.fromkeys(" ".join(n.split()) for n in notes if n.strip()))  # one line each
    why = "; ".join(reasons[:4]) + (f" (and {len(reasons) - 4} more)" if len(reasons) > 4 else "")
    msg = f"{name} has no prunable channel groups" + (f": {why}" if why else
                                                      " (every conv / linear layer either produces the output or "
                                                      "is fixed by its couplings)")
    hint = ("fewer --keep-layer (kept: " + ", ".join(keep_layers) + ")" if keep_layers else
            "structured pruning needs conv / linear / LSTM / GRU layers whose output channels are not the model's "
            "output; see docs/pruning.md (Limits) for what is left whole and why")
    return msg, hint
