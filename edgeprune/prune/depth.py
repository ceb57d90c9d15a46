"""Depth pruning: remove whole residual blocks, not only channels.

Why: on small models and edge CPUs a block's latency is not only its MACs; every op
pays a call overhead and every block writes activations that adds and activations read
again. Narrowing a block keeps all of that, removing it saves all of it, and a residual
network is trained to survive a missing block (the identity path carries the signal).

What is removable (:func:`find_blocks`): a module, called once, that takes one tensor and
returns one of the same shape, computes ``x + f(x)`` (with every parameter of the module
zeroed it returns its input unchanged: the residual branch vanishes and the identity
path remains), and can be replaced by ``nn.Identity`` with the model still running and
keeping its output shapes. A block with a projection shortcut or a stride changes shape
or returns zeros when zeroed, so it is never a candidate; neither are the stem and the
head (the first and last conv / linear the model runs), nor a block holding a
``--keep-layer``. Only the innermost such modules are candidates (a stage of removable
blocks is itself removable; greedy dropping of its blocks reaches the same point in
finer steps).

How much a block matters (:func:`block_sensitivity`): the validation loss on the search
split with the block replaced by identity, after BatchNorm recalibration (the blocks
after it see different statistics), minus the loss of the model as it is.

Which blocks go (:func:`greedy_drop`): repeatedly the block with the least sensitivity
per millisecond the latency model says its removal saves, until the predicted latency
is within the target or the cheapest block costs more than ``max_price`` (the price
width pruning would pay, see :mod:`edgeprune.flows.depth`). Sensitivities are scored
again after every drop, because blocks compensate for each other.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from edgeprune.models.base import DataSplit, ModelData
    from edgeprune.prune.space import PruneSpace

Log = Callable[[str], None]
_COMPUTE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class Block:
    """A removable block: its module path, the prune-space layers inside it (what its
    removal takes out of the latency model) and the activation shape it preserves."""

    name: str
    layers: tuple[str, ...]
    shape: tuple[int, ...]


@dataclass
class DepthPlan:
    """What :func:`greedy_drop` chose: the blocks in drop order, the model without
    them, the predicted latency, and one record per drop (for history / notes)."""

    dropped: list[str]
    module: nn.Module
    predicted_ms: float
    steps: list[dict[str, Any]] = field(default_factory=list)
    stopped: str = ""  # why dropping stopped


def _inside(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _zeroed(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every parameter and BN running mean zeroed: a residual
    block's branch then contributes nothing (its last conv / BN / scale writes zeros)."""
    m = copy.deepcopy(module)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        for name, b in m.named_buffers():
            if name.rsplit(".", 1)[-1] == "running_mean":
                b.zero_()
    return m


def zero_branch(module: nn.Module, block: str) -> nn.Module:
    """A copy of ``module`` with the residual branch of ``block`` zeroed (its parameters
    set to 0): what dropping the block must equal, exactly."""
    out = copy.deepcopy(module)
    out.set_submodule(block, _zeroed(out.get_submodule(block)))
    return out


def drop_blocks(module: nn.Module, blocks: Collection[str]) -> nn.Module:
    """A copy of ``module`` with each named block replaced by ``nn.Identity``."""
    out = copy.deepcopy(module)
    for name in blocks:
        out.set_submodule(name, nn.Identity())
    return out.eval()


def _record(module: nn.Module, inputs: Sequence[torch.Tensor]) -> tuple[dict[str, list], list[str]]:
    """Each submodule's calls (single-tensor input, output) and the compute layers in
    the order they ran."""
    calls: dict[str, list] = {}
    order: list[str] = []
    handles = []

    def hook(name: str):
        def fn(mod, args, kwargs, out):
            x = args[0] if len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor) else None
            y = out if isinstance(out, torch.Tensor) else None
            calls.setdefault(name, []).append((None if x is None else x.detach().clone(),
                                               None if y is None else y.detach().clone()))
            if isinstance(mod, _COMPUTE):
                order.append(name)
        return fn

    for name, mod in module.named_modules():
        if name:
            handles.append(mod.register_forward_hook(hook(name), with_kwargs=True))
    try:
        with torch.no_grad():
            module.eval()(*inputs)
    finally:
        for h in handles:
            h.remove()
    return calls, order


def _outputs(module: nn.Module, inputs: Sequence[torch.Tensor]) -> list[tuple[int, ...]]:
    with torch.no_grad():
        out = module(*inputs)
    outs = out if isinstance(out, (tuple, list)) else [out]
    return [tuple(o.shape) for o in outs if isinstance(o, torch.Tensor)]


def find_blocks(module: nn.Module, inputs: Sequence[torch.Tensor], space: "PruneSpace",
                keep_layers: Collection[str] = ()) -> tuple[list[Block], list[str]]:
    """The removable residual blocks of ``module`` (module docstring), in execution
    order, and notes on what was left and why."""
    calls, order = _record(module, inputs)
    if not order:
        return [], ["depth: the model runs no conv or linear layer: nothing to remove"]
    ends = {order[0], order[-1]}  # the stem and the head stay
    expected = _outputs(module, inputs)
    found: list[tuple[str, tuple[int, ...]]] = []
    for name, mod in module.named_modules():
        got = calls.get(name)
        if not name or not got or len(got) != 1 or got[0][0] is None or got[0][1] is None:
            continue
        x, y = got[0]
        if x.shape != y.shape or not x.is_floating_point() or not bool(x.abs().max() > 0):
            continue  # an all-zero input (after a dead branch) would make any layer look residual
        inner = [n for n, m in mod.named_modules(prefix=name) if isinstance(m, _COMPUTE)]
        if not inner or ends & set(inner) or any(_inside(k, name) or _inside(name, k) for k in keep_layers):
            continue
        try:
            with torch.no_grad():
                y0 = _zeroed(mod).eval()(x)
        except Exception:  # noqa: BLE001 - a module that cannot run alone is not a block
            continue
        if not isinstance(y0, torch.Tensor) or y0.shape != x.shape or not torch.allclose(y0, x, rtol=1e-4, atol=1e-5):
            continue
        try:
            if _outputs(drop_blocks(module, [name]), inputs) != expected:
                continue
        except Exception:  # noqa: BLE001 - the model does not run without it
            continue
        found.append((name, tuple(x.shape)))
    names = [n for n, _ in found]
    minimal = [(n, s) for n, s in found if not any(o != n and _inside(o, n) for o in names)]
    first = {n: i for i, n in enumerate(order)}
    blocks = []
    for n, s in minimal:
        layers = tuple(layer.name for layer in space.layers if _inside(layer.name, n))
        blocks.append(Block(n, layers, s))
    blocks.sort(key=lambda b: min((first.get(l, 1 << 30) for l in b.layers), default=1 << 30))
    notes = [] if blocks else ["depth: no removable residual block (a block must return x + f(x) at the "
                               "shape of its input; projection / strided blocks, the stem and the head stay)"]
    return blocks, notes


def val_loss(module: nn.Module, split: "DataSplit", task: str, batch_size: int = 256) -> float:
    """Mean validation loss (cross entropy, or binary cross entropy on one logit)."""
    import numpy as np
    import torch.nn.functional as F

    from edgeprune.models.train import predict

    out = torch.from_numpy(np.asarray(predict(module, split, batch_size)))
    labels = torch.from_numpy(np.asarray(split.labels))
    if task == "binary":
        return float(F.binary_cross_entropy_with_logits(out.reshape(len(labels), -1)[:, 0], labels.float()))
    return float(F.cross_entropy(out.reshape(len(labels), -1), labels.long()))


def block_sensitivity(module: nn.Module, blocks: Sequence[Block], data: "ModelData", split: "DataSplit",
                      batch_size: int = 256, seed: int = 0) -> dict[str, float]:
    """``{block: loss without it - loss now}`` on ``split``, each after BN recalibration
    on the training data."""
    from edgeprune.prune.finetune import recalibrate_bn

    base = val_loss(module, split, data.task, batch_size)
    out: dict[str, float] = {}
    for b in blocks:
        m = drop_blocks(module, [b.name])
        recalibrate_bn(m, data, seed=seed)
        out[b.name] = val_loss(m.eval(), split, data.task, batch_size) - base
    return out


def layers_of(blocks: Sequence[Block], names: Collection[str]) -> set[str]:
    """The prune-space layers of the named blocks."""
    return {l for b in blocks if b.name in names for l in b.layers}


def greedy_drop(module: nn.Module, blocks: Sequence[Block], predict_without: Callable[[set[str]], float],
                score: Callable[[nn.Module, list[Block]], dict[str, float]], target_ms: float,
                max_price: float = math.inf, dropped: Sequence[str] = (), log: Log = lambda m: None) -> DepthPlan:
    """Drop blocks of ``module`` (the *original* model: ``predict_without`` predicts it
    without a set of its layers) one at a time, the least sensitivity per ms saved
    first, until the prediction is within ``target_ms``, no block is left, or the
    cheapest costs more than ``max_price`` (loss per ms). ``dropped``: blocks already
    gone (a second pass after a measurement corrected the target)."""
    gone = list(dropped)
    current = drop_blocks(module, gone)
    ms = predict_without(layers_of(blocks, gone))
    plan = DepthPlan(gone, current, ms)
    while True:
        if ms <= target_ms:
            plan.stopped = f"predicted {ms:.3f} ms is within {target_ms:.3f} ms"
            break
        left = [b for b in blocks if b.name not in gone]
        if not left:
            plan.stopped = "every removable block is dropped"
            break
        sens = score(current, left)
        priced = []
        for b in left:
            after = predict_without(layers_of(blocks, gone) | set(b.layers))
            saving = ms - after
            price = max(sens[b.name], 0.0) / saving if saving > 0 else math.inf
            priced.append((price, b, saving, after))
        price, best, saving, after = min(priced, key=lambda t: (t[0], -t[2]))
        if price > max_price or not math.isfinite(price):
            plan.stopped = (f"the cheapest block ({best.name}) costs {price:.4g} loss/ms, more than width "
                            f"pruning's {max_price:.4g}" if math.isfinite(price) else "no block saves latency")
            break
        gone.append(best.name)
        current = drop_blocks(module, gone)
        plan.steps.append({"block": best.name, "sensitivity": round(sens[best.name], 5),
                           "saving_ms": round(saving, 4), "loss_per_ms": round(price, 5),
                           "predicted_ms": round(after, 4)})
        log(f"depth: dropping {best.name} (loss +{sens[best.name]:.4f}, saves {saving:.3f} ms predicted)")
        ms = after
    plan.dropped, plan.module, plan.predicted_ms = gone, current, ms
    return plan

