"""Channel importance criteria: one small class each, in a registry keyed by name.

A criterion maps a model and its prune space to one score per channel of every group
(``{group_id: np.ndarray[size]}``); higher = more important = kept longer. A channel of a
group owns slices of several tensors (a conv's filter, the BN scale after it, the next
layer's input columns, an LSTM unit's rows in all four gate blocks); criteria aggregate
over all of them, so the score is the group's, not one layer's.

Search strategies compare scores *across* groups (the knapsack keeps the most total
importance per millisecond), so criteria whose raw values depend on a layer's scale
(magnitudes, BN scales, distances) are divided by their group's mean: a channel of
average importance scores 1 in every group. ``taylor`` estimates the loss change of
removing a channel and is comparable as it is; it is only rescaled globally.

Add a criterion with::

    @IMPORTANCE.register("mine")
    class Mine(Importance):
        def channel_scores(self, module, space, data): ...
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from edgeprune.errors import PruneError
from edgeprune.registry import Registry

if TYPE_CHECKING:  # torch is imported lazily: the CLI lists criteria without paying for it
    import torch
    from torch import nn

    from edgeprune.models.base import ModelData
    from edgeprune.prune.graph import TracedSpace, _Cut

Scores = dict[str, np.ndarray]

IMPORTANCE: Registry[type["Importance"]] = Registry("importance criterion", PruneError)



def _norm_types() -> tuple[type, ...]:
    from torch import nn

    return (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm2d)


def _is_norm(mod: "nn.Module") -> bool:
    return isinstance(mod, _norm_types())


def named_module(root: "nn.Module", name: str) -> "nn.Module":
    from edgeprune.prune.graph import named_module as _nm

    return _nm(root, name)


@dataclass(frozen=True)
class _Slice:
    """``param`` indexed by the cut's indices along ``dim``; ``gates`` > 1 means index u
    owns rows u, u+H, ..., u+(gates-1)H (RNN gate blocks)."""

    param: "torch.Tensor"
    dim: int
    gates: int = 1


def _slices(mod: "nn.Module", is_out: bool) -> list[_Slice]:
    """The parameter slices a cut of ``mod`` removes, along which dimension."""
    import torch
    from torch import nn

    if isinstance(mod, (nn.LSTM, nn.GRU)):
        g = 4 if isinstance(mod, nn.LSTM) else 3
        sfxs, dirs = (("", "_reverse"), 2) if mod.bidirectional else (("",), 1)
        if not is_out:
            return [_Slice(getattr(mod, f"weight_ih_l0{sfx}"), 1) for sfx in sfxs]
        out = []
        for k in range(mod.num_layers):
            for sfx in sfxs:  # unit u of every direction (layers above: inputs u and H + u)
                w_ih, w_hh = getattr(mod, f"weight_ih_l{k}{sfx}"), getattr(mod, f"weight_hh_l{k}{sfx}")
                out += [_Slice(w_ih, 0, g), _Slice(w_hh, 0, g), _Slice(w_hh, 1)]
                if k > 0:
                    out.append(_Slice(w_ih, 1, dirs))
                if mod.bias:
                    out += [_Slice(getattr(mod, f"bias_ih_l{k}{sfx}"), 0, g),
                            _Slice(getattr(mod, f"bias_hh_l{k}{sfx}"), 0, g)]
        return out
    if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
        if is_out:
            return [_Slice(mod.weight, 0)] + ([_Slice(mod.bias, 0)] if mod.bias is not None else [])
        return [_Slice(mod.weight, 1)]
    if _is_norm(mod) or isinstance(mod, nn.PReLU):
        ps = [getattr(mod, n, None) for n in ("weight", "bias")]
        return [_Slice(p, 0) for p in ps if isinstance(p, torch.Tensor) and p.dim() == 1 and p.numel() > 1]
    return []


def _per_index(values: "torch.Tensor", s: _Slice, reduce: str) -> "torch.Tensor":
    """Reduce ``values`` (shaped like the parameter) to one number per cut index."""
    v = values.detach().float()
    if reduce == "l1":
        v = v.abs()
    elif reduce == "l2":
        v = v * v
    v = v.movedim(s.dim, 0).reshape(v.shape[s.dim], -1).sum(1)
    if s.gates > 1:
        v = v.reshape(s.gates, -1).sum(0)
    return v


def _group_cuts(space: "TracedSpace", gid: str) -> Iterator["_Cut"]:
    for cut in space.plans.get(gid, []):
        if not cut.is_param:
            yield cut


def _scatter(size: int, cut: "_Cut", per_index: "torch.Tensor") -> np.ndarray:
    out = np.zeros(size, dtype=np.float64)
    vals = per_index.cpu().numpy().astype(np.float64)
    np.add.at(out, cut.root_idxs, vals[cut.idxs])
    return out


def _normalise(s: np.ndarray) -> np.ndarray:
    m = float(np.mean(s)) if s.size else 0.0
    return s / m if m > 0 else s


class Importance(ABC):
    """Scores every channel of every prunable group of a space."""

    name: ClassVar[str] = ""
    needs_data: ClassVar[bool] = False
    comparable: ClassVar[bool] = False  # scores already comparable across groups
    description: ClassVar[str] = ""

    def __call__(self, module: "nn.Module", space: "TracedSpace", data: "ModelData | None" = None) -> Scores:
        from edgeprune.prune.graph import TracedSpace

        if not isinstance(space, TracedSpace):
            raise PruneError("importance needs a space from edgeprune.prune.graph.build_space")
        if self.needs_data and data is None:
            raise PruneError(f"importance '{self.name}' needs training data", "pass --data or use l1 / l2 / bn-scale")
        raw = self.channel_scores(module, space, data)
        if self.comparable:
            allv = np.concatenate([v for v in raw.values()]) if raw else np.zeros(0)
            scale = float(np.mean(allv)) if allv.size and np.mean(allv) > 0 else 1.0
            return {g: v / scale for g, v in raw.items()}
        return {g: _normalise(v) for g, v in raw.items()}

    @abstractmethod
    def channel_scores(self, module: "nn.Module", space: "TracedSpace", data: "ModelData | None") -> Scores:
        """Raw scores ``{group_id: [size]}`` for the prunable groups."""


class _Magnitude(Importance):
    reduce: ClassVar[str] = "l1"

    def channel_scores(self, module, space, data):
        scores: Scores = {}
        for g in space.prunable_groups():
            s = np.zeros(g.size)
            for cut in _group_cuts(space, g.id):
                mod = named_module(module, cut.target)
                if _is_norm(mod):  # scales are bn-scale's business, not a weight norm
                    continue
                for sl in _slices(mod, cut.is_out):
                    s += _scatter(g.size, cut, _per_index(sl.param, sl, self.reduce))
            scores[g.id] = np.sqrt(s) if self.reduce == "l2" else s
        return scores


@IMPORTANCE.register("l1")
class L1(_Magnitude):
    """Sum of |w| over every weight a channel owns (its filter and the next layer's inputs)."""

    name = "l1"
    reduce = "l1"
    description = "weight magnitude, L1 norm over the channel's filter and its consumers' inputs"


@IMPORTANCE.register("l2")
class L2(_Magnitude):
    """Euclidean norm of every weight a channel owns."""

    name = "l2"
    reduce = "l2"
    description = "weight magnitude, L2 norm"


@IMPORTANCE.register("bn-scale")
class BNScale(Importance):
    """|gamma| of the normalisation layers in the group (Network Slimming). Groups with no
    norm layer (MLPs, RNNs) fall back to the L1 magnitude."""

    name = "bn-scale"
    description = "|BatchNorm scale| (falls back to L1 where a group has no norm layer)"

    def channel_scores(self, module, space, data):
        fallback = L1().channel_scores(module, space, data)
        scores: Scores = {}
        for g in space.prunable_groups():
            s = np.zeros(g.size)
            found = False
            for cut in _group_cuts(space, g.id):
                mod = named_module(module, cut.target)
                if _is_norm(mod) and getattr(mod, "weight", None) is not None:
                    found = True
                    s += _scatter(g.size, cut, mod.weight.detach().abs().float())
            scores[g.id] = s if found else fallback[g.id]
        return scores


@IMPORTANCE.register("taylor")
class Taylor(Importance):
    """First-order Taylor estimate of the loss change when a channel is removed
    (Molchanov et al., 2019): per batch, |sum over the channel's parameters of w * dL/dw|,
    accumulated over ``batches`` real training batches."""

    name = "taylor"
    needs_data = True
    comparable = True
    description = "|w * dL/dw| per channel, accumulated over real training batches"

    def __init__(self, batches: int = 8, batch_size: int = 64, seed: int = 0) -> None:
        self.batches = batches
        self.batch_size = batch_size
        self.seed = seed

    def channel_scores(self, module, space, data):
        import torch

        from edgeprune.prune.finetune import task_loss

        split = data.train
        n = len(split)
        rng = np.random.default_rng(self.seed)
        groups = space.prunable_groups()
        scores = {g.id: np.zeros(g.size) for g in groups}
        plan = [(g, cut, named_module(module, cut.target)) for g in groups for cut in _group_cuts(space, g.id)]
        was_training = module.training
        module.eval()  # BN statistics must not move; gradients flow through eval-mode BN fine
        try:
            for _ in range(self.batches):
                idx = rng.choice(n, size=min(self.batch_size, n), replace=False)
                xs = [torch.from_numpy(np.ascontiguousarray(x[idx])) for x in split.inputs]
                y = torch.from_numpy(np.ascontiguousarray(split.labels[idx]).astype(np.int64))
                module.zero_grad(set_to_none=True)
                out = module(*xs)
                out = out[0] if isinstance(out, (tuple, list)) else out
                task_loss(out, y, data.task).backward()
                batch = {g.id: np.zeros(g.size) for g in groups}
                for g, cut, mod in plan:
                    for sl in _slices(mod, cut.is_out):
                        if sl.param.grad is None:
                            continue
                        batch[g.id] += _scatter(g.size, cut, _per_index(sl.param * sl.param.grad, sl, "sum"))
                for gid in batch:
                    scores[gid] += np.abs(batch[gid])
        finally:
            module.zero_grad(set_to_none=True)
            module.train(was_training)
        return scores


@IMPORTANCE.register("redundancy")
class Redundancy(Importance):
    """Geometric-median redundancy (FPGM, He et al., 2019): a channel whose weights are
    close to all the others' (near the group's geometric median) is replaceable by
    them. Score = mean Euclidean distance of the channel's output weights to every other
    channel's, so duplicated or empty channels score lowest."""

    name = "redundancy"
    description = "distance of a channel's filter to the others' (geometric median / FPGM)"

    def channel_scores(self, module, space, data):
        import torch

        scores: Scores = {}
        for g in space.prunable_groups():
            parts = []
            for cut in _group_cuts(space, g.id):
                mod = named_module(module, cut.target)
                if not cut.is_out or _is_norm(mod):
                    continue
                for sl in _slices(mod, True):
                    if sl.param.dim() < 1:
                        continue
                    p = sl.param.detach().float().movedim(sl.dim, 0)
                    if sl.gates > 1:  # [G*H, ...] -> [H, G*...]
                        p = p.reshape(sl.gates, -1, *p.shape[1:]).movedim(0, 1)
                    p = p.reshape(p.shape[0], -1)
                    m = torch.zeros(g.size, p.shape[1])
                    root = torch.as_tensor(cut.root_idxs, dtype=torch.long)
                    m.index_add_(0, root, p[torch.as_tensor(cut.idxs, dtype=torch.long)])
                    parts.append(m / (p.norm() / max(1, p.shape[0]) ** 0.5 + 1e-12))  # equal weight per tensor
            if not parts:
                scores[g.id] = np.ones(g.size)
                continue
            feats = torch.cat(parts, 1)
            d = torch.cdist(feats, feats)
            scores[g.id] = (d.sum(1) / max(1, g.size - 1)).numpy().astype(np.float64)
        return scores


def get_importance(name: str, **kwargs) -> Importance:
    return IMPORTANCE.get(name)(**kwargs)
