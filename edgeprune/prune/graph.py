"""Build the :class:`~edgeprune.prune.space.PruneSpace` of a torch model, and cut it.

Channel coupling comes from torch-pruning's ``DependencyGraph`` (conv / BN / linear,
residual adds, concatenation, flatten, depthwise convs). LSTM and GRU hidden units use
our own gate-aware pruner (:class:`RNNUnitPruner`): torch-pruning's LSTM pruner slices
the wrong axes and fails on single-layer LSTMs.

``build_space`` traces the model once and records, per group, a *cut plan*: for every
parameter-owning module the group touches, which of its indices belong to which root
channel. ``apply_widths`` replays that plan on a deep copy, so pruning many candidate
configurations (search strategies do that) never re-traces the model.

Rules:

* embeddings are never pruned (their groups are reported with ``prunable=False``);
* the layer(s) producing the model output keep their output width;
* ``keep_layers`` (module names or name prefixes) are left exactly as they are: their
  input and output channels are not cut;
* grouped convs with a fixed group width lose whole conv groups (the group's ``unit``);
  channel shuffles and bare parameters that are not per-channel vectors leave their
  channels whole (see :mod:`edgeprune.prune.quirks`); every group left whole gets a note;
* RNNs: one group of hidden units per LSTM/GRU module (every layer of the stack, both
  directions; see :mod:`edgeprune.prune.rnn`); LSTMs with ``proj_size`` are not pruned
  (noted in ``space.notes``: torch cannot export them to ONNX).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeprune.errors import ModelError, PruneError
from edgeprune.prune import quirks
from edgeprune.prune import attention
from edgeprune.prune.rnn import RNN_TYPES, RNNUnitPruner, rnn_layers, trace_forward
from edgeprune.prune.rnn import rewire_hook as _rnn_rewire_hook
from edgeprune.prune.space import PrunableLayer, PruneGroup, PruneSpace

__all__ = [
    "RNNUnitPruner",
    "TracedSpace",
    "apply_widths",
    "build_space",
    "keep_by_importance",
    "named_module",
]

@dataclass
class _Cut:
    """One slicing step of a group: ``handler(module, idxs)`` removes, from ``target``,
    the indices whose root channel is pruned."""

    target: str  # module name in the model (or parameter name if is_param)
    handler: Callable[..., Any]
    pruning_dim: int
    idxs: np.ndarray  # index in the target
    root_idxs: np.ndarray  # the group channel each index belongs to
    is_param: bool = False
    is_out: bool = True  # cuts the target's outputs (norm layers and depthwise convs count as outputs)


@dataclass
class TracedSpace(PruneSpace):
    """A :class:`PruneSpace` that also knows how to cut the model it was traced from."""

    plans: dict[str, list[_Cut]] = field(default_factory=dict, repr=False, compare=False)
    example_inputs: list[torch.Tensor] = field(default_factory=list, repr=False, compare=False)
    output_shapes: list[tuple[int, ...]] = field(default_factory=list, repr=False, compare=False)
    keep_layers: tuple[str, ...] = ()

    def rebuild(self, module: nn.Module) -> "TracedSpace":
        """The space of ``module`` (e.g. this model after a cut) with the same inputs and kept layers."""
        return build_space(module, self.example_inputs, self.keep_layers)  # type: ignore[return-value]


def named_module(root: nn.Module, name: str) -> nn.Module:
    mod = root
    for part in name.split("."):
        mod = getattr(mod, part)
    return mod


def _set_named_param(root: nn.Module, name: str, value: nn.Parameter) -> None:
    *path, leaf = name.split(".")
    owner = named_module(root, ".".join(path)) if path else root
    setattr(owner, leaf, value)


def _flat_outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in _flat_outputs(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flat_outputs(v)]
    return []


def _run(module: nn.Module, inputs: Sequence[torch.Tensor]) -> Any:
    return module(*inputs)


def _record_shapes(module: nn.Module) -> tuple[dict[str, dict[str, Any]], list[Any]]:
    shapes: dict[str, dict[str, Any]] = {}
    handles = []
    for name, m in module.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear, *RNN_TYPES)):
            def hook(mod, inp, out, name=name):
                x = inp[0] if isinstance(inp, tuple) and inp else inp
                if isinstance(x, torch.Tensor):
                    shapes[name] = {"shape": tuple(int(d) for d in x.shape)}
            handles.append(m.register_forward_hook(hook))
    return shapes, handles


def _matches(name: str, keep: Sequence[str]) -> bool:
    return any(name == k or name.startswith(k + ".") for k in keep)


@quirks.reshape_guard()  # torch-pruning re-maps reshapes in every get_pruning_group too
def build_space(
    module: nn.Module, example_inputs: list[torch.Tensor], keep_layers: Sequence[str] = ()
) -> PruneSpace:
    """Trace ``module`` on ``example_inputs`` (at the deployment batch) and return its
    prune space: coupled channel groups and the measured layers with their real shapes.

    Raises :class:`ModelError` if the model cannot be traced, and :class:`PruneError`
    if a ``keep_layers`` name matches no module.
    """
    import torch_pruning as tp

    attn_notes = attention.convert_mha(module)  # attention hook: MHA -> equivalent Attention, in place
    names = [n for n, _ in module.named_modules() if n]
    for k in keep_layers:
        if not any(_matches(n, [k]) for n in names):
            raise PruneError(
                f"--keep-layer '{k}' matches no layer of the model",
                "layers: " + ", ".join(n for n, m in module.named_modules() if n and not list(m.children()))[:600],
            )

    model = copy.deepcopy(module).eval()
    inputs = [t.detach().clone() for t in example_inputs]
    shapes, handles = _record_shapes(model)
    try:
        with torch.no_grad():
            ref_out = _run(model, inputs)
    except Exception as exc:
        raise ModelError(f"model does not run on its example inputs: {type(exc).__name__}: {exc}") from exc
    finally:
        for h in handles:
            h.remove()
    output_shapes = [tuple(t.shape) for t in _flat_outputs(ref_out)]

    rnn_pruner = RNNUnitPruner()
    rewires = [m.register_forward_hook(_rnn_rewire_hook) for m in model.modules() if isinstance(m, RNN_TYPES)]
    fixed = quirks.mark_fixed_groups(model)  # grouped convs cut by whole conv groups (see quirks)
    dg = tp.DependencyGraph()
    traced_out: list[Any] = []

    def keep_output(out: Any) -> Any:
        traced_out.append(out)
        return out

    try:
        with torch.enable_grad():
            dg.build_dependency(
                model,
                example_inputs=inputs,
                forward_fn=trace_forward,
                output_transform=keep_output,
                customized_pruners={nn.LSTM: rnn_pruner, nn.GRU: rnn_pruner, **quirks.customized(fixed)},
                verbose=False,
            )
    except Exception as exc:
        raise ModelError(
            f"cannot trace the model's channel dependencies: {type(exc).__name__}: {exc}",
            "structured pruning needs a model whose forward runs with autograd on its example inputs",
        ) from exc
    finally:
        for h in rewires:
            h.remove()
        quirks.unmark(fixed)

    mod2name = {m: n for n, m in model.named_modules()}
    out_fns = {t.grad_fn for t in _flat_outputs(traced_out[0]) if t.grad_fn is not None} if traced_out else set()
    output_modules = {m for m, node in dg.module2node.items() if node.grad_fn in out_fns}
    param2name = {p: n for n, p in model.named_parameters()}
    shuffles = quirks.shuffle_ops(dg, mod2name)
    notes: list[str] = []
    groups: dict[str, PruneGroup] = {}
    plans: dict[str, list[_Cut]] = {}
    out_owner: dict[str, str] = {}  # module name -> group id cutting its outputs
    in_owner: dict[str, tuple[str, int]] = {}  # module name -> (group id, number of input idxs)
    roots = (nn.Conv1d, nn.Conv2d, nn.Linear, *RNN_TYPES)
    visited: set[nn.Module] = set()
    order = [m for _, m in model.named_modules() if m in dg.module2node and isinstance(m, roots)]
    heads = attention.head_groups(model, dg, keep_layers, _Cut)  # attention hook: whole-head groups
    visited.update(named_module(model, p) for p in heads.skip)

    for root in order:
        if root in visited:
            continue
        pruner = dg.get_pruner_of_module(root)
        if pruner is None:
            continue
        n_out = int(pruner.get_out_channels(root))
        gid = mod2name[root]
        try:
            group = dg.get_pruning_group(root, pruner.prune_out_channels, list(range(n_out)))
        except Exception as exc:  # pragma: no cover - a torch-pruning corner case
            notes.append(f"{gid}: not prunable (dependency analysis failed: {exc})")
            visited.add(root)
            continue
        cuts: list[_Cut] = []
        touched: list[str] = []
        reasons: list[str] = []
        unit = 1
        shuffled: list[str] = []
        for item in group:
            dep, idxs = item.dep, item.idxs
            tgt = dep.target
            tmod = tgt.module
            is_out = dg.is_out_channel_pruning_fn(dep.handler)
            if tgt.type == tp.ops.OPTYPE.OUTPUT:
                reasons.append("feeds the model output")
                continue
            if tmod in shuffles:
                shuffled.append(shuffles[tmod])
                continue
            if isinstance(tmod, nn.Parameter):
                pname = param2name.get(tmod, "?")
                why = quirks.param_reason(tmod, pname)
                if why:
                    reasons.append(why)
                cuts.append(_Cut(pname, dep.handler, tgt.pruning_dim, np.asarray(idxs), np.asarray(item.root_idxs), True))
                continue
            if is_out and tmod in output_modules:
                reasons.append("feeds the model output")
            if tmod not in mod2name:  # concat / split / reshape / element-wise: nothing to cut
                continue
            tname = mod2name[tmod]
            if is_out:
                visited.add(tmod)
                out_owner.setdefault(tname, gid)
            elif isinstance(tmod, roots):
                in_owner[tname] = (gid, len(idxs))
            if tname not in touched:
                touched.append(tname)
            if isinstance(tmod, nn.Embedding):
                reasons.append(f"embedding '{tname}' is not pruned")
            if tmod is root and isinstance(tmod, RNN_TYPES) and getattr(tmod, "proj_size", 0):
                reasons.append(f"'{tname}' is an LSTM with proj_size (torch cannot export it to ONNX)")
            gw = fixed.get(tmod, 0) or quirks.norm_group_width(tmod)
            if gw:
                if quirks.unit_blocks_ok(np.asarray(idxs), np.asarray(item.root_idxs), gw * tmod.groups
                                         if tmod in fixed else tmod.num_channels):
                    unit = math.lcm(unit, gw)
                else:
                    reasons.append(f"grouped {'conv' if tmod in fixed else 'norm'} '{tname}' does not take this "
                                   "group's channels 1:1 (concat or split in between)")
            elif isinstance(tmod, (nn.Conv1d, nn.Conv2d)) and 1 < tmod.groups and not (
                tmod.groups == tmod.in_channels == tmod.out_channels
            ):
                reasons.append(f"grouped conv '{tname}' (groups={tmod.groups}, {tmod.in_channels} in / "
                               f"{tmod.out_channels} out: its conv groups cannot be removed whole)")
            if _matches(tname, keep_layers):
                reasons.append(f"'{tname}' is kept (--keep-layer)")
            cuts.append(_Cut(tname, dep.handler, tgt.pruning_dim, np.asarray(idxs), np.asarray(item.root_idxs),
                             is_out=bool(is_out)))
        if shuffled:
            reasons.append(f"passes through {', '.join(dict.fromkeys(shuffled))} (reshape-transpose-reshape: a "
                           "channel permutation the tracer cannot follow; the branches' inner channels are pruned)")
        if n_out % unit:
            reasons.append(f"its {n_out} channels are not whole groups of {unit} (grouped conv or GroupNorm)")
        prunable = not reasons and n_out > unit
        if reasons and not any("model output" in r or "embedding" in r for r in reasons):
            notes.append(f"group {gid}: left whole: {'; '.join(dict.fromkeys(reasons))}")
        groups[gid] = PruneGroup(id=gid, size=n_out, layers=tuple(touched), min_size=unit, prunable=prunable,
                                 unit=unit)
        plans[gid] = cuts

    groups.update(heads.groups)  # attention hook: the head groups' plans and owners
    plans.update(heads.plans)
    out_owner.update(heads.out_owner)
    in_owner.update(heads.in_owner)
    notes[:0] = attn_notes + heads.notes + attention.residual_notes(heads, groups, out_owner)
    space = TracedSpace(
        groups=groups, layers=[], notes=notes, plans=plans, example_inputs=inputs,
        output_shapes=output_shapes, keep_layers=tuple(keep_layers),
    )
    _check_plans(module, space)
    space.layers = _layers(model, space, shapes, out_owner, in_owner)
    space.layers = heads.layers(space.layers, shapes, space.groups)  # attention hook: cores, fused qkv
    return space


def _check_plans(module: nn.Module, space: TracedSpace) -> None:
    """Cut one channel of every prunable group at once and run the model; groups whose
    cut breaks the forward pass (an op the tracer misread) are frozen with a note."""
    probe = {g.id: list(range(g.unit, g.size)) for g in space.prunable_groups()}  # one whole unit
    if not probe:
        return
    try:
        apply_widths(module, space, probe)
        return
    except PruneError:
        pass
    for gid in list(probe):
        try:
            apply_widths(module, space, {gid: probe[gid]})
        except PruneError as exc:
            g = space.groups[gid]
            space.groups[gid] = dataclasses.replace(g, prunable=False)
            space.notes.append(f"group {gid}: left whole: cutting it breaks the forward pass ({exc}); "
                               "an op the tracer misread")


def _layers(
    model: nn.Module,
    space: TracedSpace,
    shapes: Mapping[str, Mapping[str, Any]],
    out_owner: Mapping[str, str],
    in_owner: Mapping[str, tuple[str, int]],
) -> list[PrunableLayer]:
    def live(gid: str | None) -> str | None:
        return gid if gid is not None and space.groups[gid].prunable else None

    layers: list[PrunableLayer] = []
    for name, m in model.named_modules():
        if name not in shapes or not isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear, *RNN_TYPES)):
            continue
        shape = shapes[name]["shape"]
        out_g = live(out_owner.get(name))
        in_g, n_in_idxs = in_owner.get(name, (None, 0))
        in_g = live(in_g)
        n_in = m.in_channels if isinstance(m, (nn.Conv1d, nn.Conv2d)) else (
            m.in_features if isinstance(m, nn.Linear) else m.input_size)
        if in_g is not None and (n_in_idxs != n_in or space.groups[in_g].size != n_in):
            space.notes.append(
                f"{name}: its {n_in} inputs are not one group's channels 1:1 (concat or flatten); "
                "its latency is predicted at full input width"
            )
            in_g = None
        if isinstance(m, nn.Conv2d) or isinstance(m, nn.Conv1d):
            two = (lambda v: (1, int(v[0]))) if isinstance(m, nn.Conv1d) else (lambda v: (int(v[0]), int(v[1])))
            hw = (1, shape[-1]) if isinstance(m, nn.Conv1d) else (shape[-2], shape[-1])
            dw = m.groups > 1 and m.groups == m.in_channels == m.out_channels
            gw = quirks.fixed_group_width(m) if out_g is not None else 0  # in and out follow one group
            layers.append(PrunableLayer(
                name=name, kind="conv", in_channels=m.in_channels, out_channels=m.out_channels,
                in_group=out_g if dw or gw else in_g, out_group=out_g, group_width=gw,
                kernel=two(m.kernel_size), stride=two(m.stride),
                padding=two(m.padding) if not isinstance(m.padding, str) else (0, 0),
                dilation=two(m.dilation), depthwise=dw, input_hw=(int(hw[0]), int(hw[1])),
                rows=int(shape[0]), bias=m.bias is not None, groups=1 if dw else int(m.groups),
            ))
        elif isinstance(m, nn.Linear):
            layers.append(PrunableLayer(
                name=name, kind="linear", in_channels=m.in_features, out_channels=m.out_features,
                in_group=in_g, out_group=out_g, rows=int(math.prod(shape[:-1])), bias=m.bias is not None,
            ))
        else:
            layers += rnn_layers(name, m, shape, in_g, out_g, space.notes)
    return layers


def _as_index_list(gid: str, size: int, idx: Sequence[int] | np.ndarray | torch.Tensor) -> list[int]:
    arr = np.asarray(idx.detach().cpu() if isinstance(idx, torch.Tensor) else idx, dtype=np.int64).ravel()
    out = sorted(set(int(i) for i in arr))
    if len(out) != len(arr):
        raise PruneError(f"group {gid}: keep indices contain duplicates")
    if out and (out[0] < 0 or out[-1] >= size):
        raise PruneError(f"group {gid}: keep indices must lie in [0, {size})")
    return out


def apply_widths(module: nn.Module, space: PruneSpace, keep: Mapping[str, Sequence[int]]) -> nn.Module:
    """A pruned deep copy of ``module``: group ``g`` keeps channels ``keep[g]`` (root
    indices, any order); groups not in ``keep`` stay whole. The original is untouched.

    Raises :class:`PruneError` for a non-prunable or unknown group, an index out of
    range, fewer channels than ``min_size``, or a pruned model that fails to run.
    """
    if not isinstance(space, TracedSpace):
        raise PruneError("this prune space has no cut plan", "build it with edgeprune.prune.graph.build_space")
    pruned = copy.deepcopy(module)
    attention.convert_mha(pruned)  # attention hook: a no-op once build_space converted ``module``
    # every cut is in the original coordinates (concat offsets included), so the indices
    # of all groups are merged per (module, handler) and each handler runs once
    todo: dict[tuple[str, int, bool], tuple[_Cut, set[int]]] = {}
    for gid, idx in keep.items():
        if gid not in space.groups:
            raise PruneError(f"unknown group '{gid}'. Groups: {', '.join(space.groups)}")
        g = space.groups[gid]
        kept = _as_index_list(gid, g.size, idx)
        if len(kept) == g.size:
            continue
        if not g.prunable:
            raise PruneError(f"group {gid} is not prunable")
        if len(kept) < max(1, g.min_size):
            raise PruneError(f"group {gid}: keeping {len(kept)} < minimum {max(1, g.min_size)} channels")
        if g.unit > 1 and not quirks.whole_units(kept, g.unit):
            raise PruneError(f"group {gid}: channels come in whole blocks of {g.unit} (a conv group or a head); "
                             f"keeping {len(kept)} channels is not whole blocks",
                             f"keep a multiple of {g.unit}, block by block (keep_by_importance does)")
        drop = np.setdiff1d(np.arange(g.size), np.asarray(kept, dtype=np.int64))
        for cut in space.plans[gid]:
            sel = np.isin(cut.root_idxs, drop)
            if not sel.any():
                continue
            key = (cut.target, id(cut.handler), cut.is_param)
            entry = todo.setdefault(key, (cut, set()))
            entry[1].update(int(i) for i in cut.idxs[sel])
    for cut, idx_set in todo.values():
        idxs = sorted(idx_set)
        if cut.is_param:
            old = named_module_param(pruned, cut.target)
            keep_t = torch.tensor([i for i in range(old.shape[cut.pruning_dim]) if i not in idx_set])
            _set_named_param(pruned, cut.target, nn.Parameter(torch.index_select(old.data, cut.pruning_dim, keep_t)))
            continue
        owner = getattr(cut.handler, "__self__", None)
        if owner is not None and hasattr(owner, "pruning_dim"):
            owner.pruning_dim = cut.pruning_dim
        cut.handler(named_module(pruned, cut.target), idxs)
    pruned.eval()
    if space.example_inputs:
        try:
            with torch.no_grad():
                out = _run(pruned, space.example_inputs)
        except Exception as exc:
            raise PruneError(f"pruned model fails to run: {type(exc).__name__}: {exc}") from exc
        shapes = [tuple(t.shape) for t in _flat_outputs(out)]
        if space.output_shapes and shapes != space.output_shapes:
            raise PruneError(f"pruned model changed its output shapes: {shapes} != {space.output_shapes}")
    return pruned


def named_module_param(root: nn.Module, name: str) -> torch.Tensor:
    *path, leaf = name.split(".")
    owner = named_module(root, ".".join(path)) if path else root
    return getattr(owner, leaf)


def keep_by_importance(
    space: PruneSpace, scores: Mapping[str, Sequence[float] | np.ndarray | torch.Tensor], widths: Mapping[str, int]
) -> dict[str, list[int]]:
    """The ``widths[g]`` highest-scoring channels of each group (ascending indices).
    Groups without a width (or without scores) keep every channel; ties keep the lower index.
    A group with ``unit > 1`` keeps whole blocks of ``unit`` channels, ranked by the sum of
    their channels' scores (a conv group or a head is only as useful as all of it);
    a width that is not a multiple of ``unit`` is an error, never rounded silently."""
    keep: dict[str, list[int]] = {}
    for gid, g in space.groups.items():
        w = int(widths.get(gid, g.size))
        if w >= g.size or not g.prunable:
            keep[gid] = list(range(g.size))
            continue
        w = max(w, max(1, g.min_size))
        s = scores.get(gid)
        if s is None:
            raise PruneError(f"no importance scores for group {gid}")
        arr = np.asarray(s.detach().cpu() if isinstance(s, torch.Tensor) else s, dtype=np.float64).ravel()
        if arr.shape[0] != g.size:
            raise PruneError(f"group {gid}: {arr.shape[0]} scores for {g.size} channels")
        arr = np.nan_to_num(arr, nan=-np.inf)
        if g.unit > 1:
            if w % g.unit:
                raise PruneError(f"group {gid}: width {w} is not a multiple of its unit {g.unit}",
                                 "widths of a grouped conv's or a head's group are whole blocks")
            blocks = arr.reshape(-1, g.unit).sum(axis=1)
            border = np.lexsort((np.arange(blocks.size), -blocks))[: w // g.unit]
            keep[gid] = sorted(int(b) * g.unit + j for b in border for j in range(g.unit))
            continue
        order = np.lexsort((np.arange(g.size), -arr))  # by score desc, then index asc
        keep[gid] = sorted(int(i) for i in order[:w])
    return keep
