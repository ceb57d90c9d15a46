"""``prune_model``: the library function behind ``edgeprune prune`` and the pruning stage
of ``edgeprune compile``.

trace -> latency model of the target -> importance -> search under the budget -> cut ->
fine-tune (optionally distilled, optionally in gradual steps) -> accuracy gate.

The budget is either a fraction of the original model's latency on the target
(``budget=0.5``) or milliseconds (``latency_ms=2.0``); both are judged by the latency
model (a measured lookup table calibrated on the whole model), and the compile pipeline
then *measures* the pruned artifact. A budget the model cannot meet even with every
prunable group at its narrowest snapped width is refused before any work is done.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeprune.errors import ModelError, PruneError
from edgeprune.models.base import LoadedModel

if TYPE_CHECKING:
    from torch import nn

    from edgeprune.config.devices import Device
    from edgeprune.config.targets import Target
    from edgeprune.prune.graph import TracedSpace
    from edgeprune.prune.space import LatencyModel

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class PruneOptions:
    """What to prune for. Exactly one of ``budget`` (fraction of the original latency,
    0 < b <= 1) and ``latency_ms`` must be set.

    ``importance=None`` uses the strategy's default (taylor for knapsack, l1 otherwise).
    ``gradual_steps`` > 1 prunes in that many steps of geometrically shrinking budget,
    fine-tuning ``finetune_epochs / gradual_steps`` after each. ``search_eval_samples``
    caps the validation samples strategies score candidates on (the final accuracy is
    always on the whole validation split). ``strategy_options`` go to the strategy (e.g.
    ``{"generations": 4}`` for genetic, ``{"ratio": 0.5}`` for uniform).
    """

    budget: float | None = None
    latency_ms: float | None = None
    strategy: str = "knapsack"
    importance: str | None = None
    max_accuracy_drop: float | None = None
    keep_layers: tuple[str, ...] = ()
    finetune_epochs: float = 3.0
    distill: bool = False
    seed: int = 0
    gradual_steps: int = 1
    lr: float = 1e-3
    batch_size: int = 64
    shift: int = 0
    search_eval_samples: int | None = 512
    strategy_options: Mapping[str, Any] = field(default_factory=dict)
    backend: str | None = None  # whose latency table drives the search (default: the target's first)

    def validate(self) -> None:
        if (self.budget is None) == (self.latency_ms is None):
            raise PruneError("give exactly one latency budget: a fraction (--latency-budget) or milliseconds (--latency-ms)")
        if self.budget is not None and not 0 < self.budget <= 1:
            raise PruneError(f"--latency-budget must be a fraction in (0, 1], got {self.budget}")
        if self.latency_ms is not None and self.latency_ms <= 0:
            raise PruneError(f"--latency-ms must be positive, got {self.latency_ms}")
        if self.gradual_steps < 1:
            raise PruneError("gradual_steps must be at least 1")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise PruneError("--max-accuracy-drop must be >= 0 (accuracy points)")


@dataclass
class PruneResult:
    """A pruned model and the figures that describe it. ``widths`` are per group id;
    ``channels`` per layer: ``[original, kept]`` output channels (hidden units for RNNs)."""

    module: "nn.Module"
    space: "TracedSpace"
    widths: dict[str, int]
    channels: dict[str, list[int]]
    strategy: str
    importance: str
    budget_ms: float
    budget_fraction: float | None  # set when the budget was given as a fraction
    original_predicted_ms: float
    predicted_latency_ms: float
    accuracy_before: float | None
    accuracy_after: float | None
    accuracy_after_search: float | None
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    max_accuracy_drop: float | None = None
    seed: int = 0
    search_seconds: float = 0.0
    finetune_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    latency_model: str = ""

    @property
    def accuracy_drop(self) -> float | None:
        if self.accuracy_before is None or self.accuracy_after is None:
            return None
        return self.accuracy_before - self.accuracy_after

    @property
    def gate_passed(self) -> bool | None:
        if self.max_accuracy_drop is None or self.accuracy_drop is None:
            return None
        return self.accuracy_drop <= self.max_accuracy_drop + 1e-9

    def extra(self) -> dict[str, Any]:
        """The keys ``CompileSummary.pruned.extra`` carries (summary.json contract)."""
        return {
            "predicted_latency_ms": round(self.predicted_latency_ms, 4),
            "original_predicted_latency_ms": round(self.original_predicted_ms, 4),
            "budget_ms": round(self.budget_ms, 4),
            "strategy": self.strategy,
            "importance": self.importance,
            "channels": self.channels,
            "widths": self.widths,
            "accuracy_before_finetune": self.accuracy_after_search,
            "accuracy_gate": None if self.max_accuracy_drop is None else {
                "max_drop": self.max_accuracy_drop, "drop": self.accuracy_drop, "passed": self.gate_passed},
            "seed": self.seed,
            "search_seconds": round(self.search_seconds, 2),
            "finetune_seconds": round(self.finetune_seconds, 2),
            "latency_model": self.latency_model,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": {"original": self.params_before, "pruned": self.params_after},
            "macs": {"original": self.macs_before, "pruned": self.macs_after},
            "accuracy": {"original": self.accuracy_before, "pruned": self.accuracy_after},
            **self.extra(),
            "history": self.history,
            "notes": self.notes,
        }


class PruneGateError(PruneError):
    """The accuracy gate failed. ``result`` holds everything that was produced, so the
    caller can still write it out (nothing is lost)."""

    def __init__(self, message: str, result: PruneResult, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.result = result


def _torch_inputs(model: LoadedModel):
    import torch

    return [torch.from_numpy(np.ascontiguousarray(x)) for x in model.example_inputs]


def layer_channels(original: "nn.Module", pruned: "nn.Module") -> dict[str, list[int]]:
    """``{layer: [original, kept]}`` output channels of every conv / linear / RNN layer."""
    from torch import nn

    def width(m) -> int | None:
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return int(m.out_channels)
        if isinstance(m, nn.Linear):
            return int(m.out_features)
        if isinstance(m, (nn.LSTM, nn.GRU)):
            return int(m.hidden_size)
        return None

    after = {n: width(m) for n, m in pruned.named_modules()}
    out: dict[str, list[int]] = {}
    for n, m in original.named_modules():
        w = width(m)
        if w is not None and after.get(n) is not None:
            out[n] = [w, int(after[n])]
    return out


def _eval_batch(module: "nn.Module", model: LoadedModel) -> int:
    """Batch for PyTorch-side accuracy: 256 when the module accepts it (eval mode makes the
    result independent of the batch, and batch 1 is slow), else the deployment batch."""
    import torch

    if model.batch_size >= 256:
        return model.batch_size
    try:
        with torch.no_grad():
            module.eval()(*[torch.from_numpy(np.repeat(x[:1], 4, axis=0)) for x in model.example_inputs])
        return 256
    except Exception:
        return model.batch_size


def count_params(module: "nn.Module") -> int:
    return int(sum(p.numel() for p in module.parameters()))


def default_latency_model(
    model: LoadedModel, space: "TracedSpace", target: "Target", device: "Device", backend: str | None, log: Log
) -> "LatencyModel":
    """The measured latency table + predictor of ``target`` on ``device`` for ``space``
    with ``backend`` (default: the target's preferred one), profiled on first use and
    reused from the cache afterwards (:func:`edgeprune.latency.profiler.profile_model`)."""
    from edgeprune.latency.profiler import profile_model

    name = backend or (list(target.backends) or ["onnxruntime"])[0]
    result = profile_model(model, target, device, name, space=space, log=log)
    return result.predictor


def prune_model(
    model: LoadedModel,
    target: "Target | None" = None,
    device: "Device | None" = None,
    options: PruneOptions | None = None,
    *,
    latency_model: "LatencyModel | None" = None,
    log: Log = _stderr,
    progress: bool = True,
    **overrides: Any,
) -> PruneResult:
    """Prune ``model`` to a latency budget on ``target`` and fine-tune it.

    ``options`` (or keyword overrides of its fields, e.g. ``budget=0.5,
    strategy="knapsack"``) say what to do. ``latency_model`` defaults to the measured
    table of ``target`` on ``device``. Raises :class:`ModelError` for a model that
    cannot be pruned or traced, :class:`PruneError` for an unreachable budget, and
    :class:`PruneGateError` (carrying the result) when ``max_accuracy_drop`` is missed.
    """
    import torch

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
    if data is None and (strategy_cls.needs_data or importance_cls.needs_data or opts.distill):
        if opts.importance is None and importance_cls.needs_data and not strategy_cls.needs_data:
            importance_name, importance_cls = "l1", IMPORTANCE.get("l1")  # default falls back quietly
        else:
            need = [n for n, c in ((opts.strategy, strategy_cls), (importance_name, importance_cls)) if c.needs_data]
            raise PruneError(f"{' and '.join(need) or 'distillation'} needs training data and {model.name} has none",
                             "pass --data x.npz (x_train, y_train, x_val, y_val)")
    notes: list[str] = []
    if data is None:
        notes.append("no data: pruned without fine-tuning or accuracy checks")
        if opts.max_accuracy_drop is not None:
            raise PruneError("--max-accuracy-drop needs validation data", "pass --data")

    if isinstance(model.module, (torch.jit.ScriptModule, torch.fx.GraphModule)):
        kind = "TorchScript" if isinstance(model.module, torch.jit.ScriptModule) else "torch.export / FX"
        raise ModelError(
            f"{model.name} is a {kind} graph: its layers are not nn.Modules, so channels cannot be traced and cut",
            "give the model as Python code: module:factory (+ --weights state_dict) or zoo:NAME",
        )
    original = copy.deepcopy(model.module).eval()
    inputs = _torch_inputs(model)
    with torch_threads():
        space = build_space(original, inputs, opts.keep_layers)
    notes += space.notes
    if not space.prunable_groups():
        raise PruneError(f"{model.name} has no prunable channel groups", "; ".join(space.notes) or None)
    if latency_model is None:
        if target is None or device is None:
            raise PruneError("prune_model needs a target and device (or a latency_model)")
        latency_model = default_latency_model(model, space, target, device, opts.backend, log)

    full = space.full_widths()
    l0 = float(latency_model.predict(full))
    budget_ms = opts.latency_ms if opts.latency_ms is not None else opts.budget * l0  # type: ignore[operator]
    ctx0 = SearchContext(module=original, space=space, latency=latency_model, budget_ms=budget_ms, scores={})
    mins = ctx0.min_widths()
    l_min = ctx0.predict(mins)
    if l_min > budget_ms:
        fixed = [layer.name for layer in space.layers
                 if not (layer.in_group in mins or layer.out_group in mins)]
        raise PruneError(
            f"latency budget {budget_ms:.3f} ms is unreachable: the original is predicted at {l0:.3f} ms and even "
            f"the narrowest width of every prunable group is predicted at {l_min:.3f} ms",
            ("layers that pruning cannot shrink: " + ", ".join(fixed[:8]) + "; ") * bool(fixed)
            + f"use a budget of at least {l_min / l0:.2f} of the original" + (" or fewer --keep-layer" if opts.keep_layers else ""),
        )

    task = data.task if data is not None else "classification"
    eval_batch = _eval_batch(original, model)
    acc_before = float(evaluate(original, data.val, task, batch_size=eval_batch)) if data is not None else None
    eval_split = subset(data.val, opts.search_eval_samples, opts.seed) if data is not None else None
    importance = importance_cls() if importance_name != "taylor" else importance_cls(seed=opts.seed)
    teacher = original if opts.distill else None
    log(f"pruning {model.name}: predicted {l0:.3f} ms -> budget {budget_ms:.3f} ms "
        f"({budget_ms / l0:.2f}x) with {opts.strategy} / {importance_name}")

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
                    cfg = FinetuneConfig(epochs=epochs, lr=opts.lr, batch_size=opts.batch_size, distill=opts.distill,
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
        acc_after = float(evaluate(current, data.val, task, batch_size=eval_batch)) if data is not None else None
        final_space = space.rebuild(current)

    result = PruneResult(
        module=current, space=final_space, widths={g: int(w) for g, w in widths.items() if g in space.groups},
        channels=layer_channels(original, current), strategy=opts.strategy, importance=importance_name,
        budget_ms=float(budget_ms), budget_fraction=opts.budget, original_predicted_ms=l0, predicted_latency_ms=float(predicted),
        accuracy_before=acc_before, accuracy_after=acc_after, accuracy_after_search=acc_search,
        params_before=count_params(original), params_after=count_params(current),
        macs_before=int(space.macs()), macs_after=int(final_space.macs()),
        max_accuracy_drop=opts.max_accuracy_drop, seed=opts.seed, search_seconds=t_search, finetune_seconds=t_ft,
        history=history, notes=list(dict.fromkeys(notes)), latency_model=type(latency_model).__name__,
    )
    if acc_before is not None and acc_after is not None:
        log(f"pruned {model.name}: accuracy {acc_before:.2f}% -> {acc_after:.2f}%, predicted "
            f"{l0:.3f} -> {predicted:.3f} ms, params {result.params_before:,} -> {result.params_after:,}")
    if result.gate_passed is False:
        raise PruneGateError(
            f"accuracy gate failed: {acc_before:.2f}% -> {acc_after:.2f}% loses {result.accuracy_drop:.2f} points "
            f"(allowed {opts.max_accuracy_drop:g}); best trade-off found: {acc_after:.2f}% at predicted "
            f"{predicted:.3f} ms ({predicted / l0:.2f}x of {l0:.3f} ms)",
            result,
            "results were still written; try a looser --latency-budget, more --finetune-epochs or --distill",
        )
    return result


def pruned_loaded_model(model: LoadedModel, result: PruneResult) -> LoadedModel:
    """``model`` with its module replaced by the pruned one (same inputs, data, names)."""
    return dataclasses.replace(model, name=f"{model.name}-pruned", module=result.module,
                               notes=list(model.notes), meta={**model.meta, "pruned": True})
