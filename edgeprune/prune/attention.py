"""Attention-head pruning: whole heads out of q, k, v and the output projection at once.

Why our own plans and not the tracer's: torch-pruning's ``DependencyGraph`` reads the
matmuls of an attention core as element-wise ops, so it couples q, k, v and the output
projection but cuts single channels, which breaks the ``(B, T, H, d)`` reshape (and its
``MultiheadAttentionPruner`` shrinks ``embed_dim``, i.e. every head's ``head_dim`` and the
residual stream, never a head). :func:`head_groups` recognises an attention module, makes
one :class:`~edgeprune.prune.space.PruneGroup` per module with ``unit = head_dim`` (width
= heads kept x head_dim) and a cut plan that removes the same heads from the q, k and v
outputs (the three row blocks of a fused qkv Linear), from the output projection's
inputs, and lowers the module's head-count attribute. ``build_space`` calls it (the
lines marked ``attention hook`` in ``graph.py``) and skips the tracer's groups rooted at
those projections; :meth:`HeadGroups.layers` adds the attention cores to the measured
layers.

Recognised (attributes and child names as the common model zoos spell them):

* a head count ``num_heads`` / ``num_attention_heads`` / ``n_heads`` / ``n_head`` / ``heads``;
* a fused ``qkv`` / ``in_proj`` / ``c_attn`` Linear (out = 3 x inner, as timm's ViT), or
  separate ``q``/``k``/``v``, ``q_proj``/``k_proj``/``v_proj``, ``query``/``key``/``value``,
  ``to_q``/``to_k``/``to_v`` or ``wq``/``wk``/``wv`` Linear layers of equal width;
* the output projection: the one Linear the tracer finds reading the inner channels
  (a child such as timm's ``proj`` or a sibling such as BERT's ``attention.output.dense``).

A forward that reshapes with the *input* width (``reshape(B, N, C)``) instead of
``-1`` / the head count cannot run with fewer heads: ``build_space``'s probe cut then
freezes the group with a note. Attributes equal to the inner width (``all_head_size``,
``inner_dim``) are lowered with the head count.

``nn.MultiheadAttention`` cannot hold an inner width other than ``embed_dim``, so
:func:`convert_mha` replaces it, in place and exactly (same outputs, masks, dropout and
return values), by :class:`Attention`: separate q/k/v/out Linear layers. A pruned model
then holds :class:`Attention` modules; TorchScript, ``torch.export`` and ONNX files of it
are self-contained, a pickled ``nn.Module`` needs edgeprune importable to load.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from edgeprune.errors import PruneError
from edgeprune.prune.space import PrunableLayer, PruneGroup

HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head", "heads")
INNER_ATTRS = ("all_head_size", "inner_dim")
FUSED = ("qkv", "in_proj", "c_attn")
SEPARATE = (("q", "k", "v"), ("q_proj", "k_proj", "v_proj"), ("query", "key", "value"),
            ("to_q", "to_k", "to_v"), ("wq", "wk", "wv"))


class Attention(nn.Module):
    """``nn.MultiheadAttention`` with separate q/k/v/out Linear layers and an inner width
    (``num_heads * head_dim``) free of ``embed_dim``: the form whose heads can be pruned.

    Same call and results as ``nn.MultiheadAttention`` (``batch_first`` or not, unbatched
    inputs, ``key_padding_mask`` / ``attn_mask`` bool or float, ``is_causal``, dropout on the
    attention weights, ``need_weights`` / ``average_attn_weights``). ``in_proj_bias`` is
    None so ``nn.TransformerEncoderLayer`` takes its ordinary (non-fused) path.
    """

    in_proj_weight = None
    in_proj_bias = None
    _qkv_same_embed_dim = False

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, kdim: int | None = None,
                 vdim: int | None = None, bias: bool = True, dropout: float = 0.0, batch_first: bool = False) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.inner_dim = num_heads * head_dim
        self.dropout, self.batch_first = dropout, batch_first
        self.q_proj = nn.Linear(embed_dim, self.inner_dim, bias=bias)
        self.k_proj = nn.Linear(kdim or embed_dim, self.inner_dim, bias=bias)
        self.v_proj = nn.Linear(vdim or embed_dim, self.inner_dim, bias=bias)
        self.out_proj = nn.Linear(self.inner_dim, embed_dim, bias=bias)

    @property
    def embed_dim(self) -> int:
        """The residual width (follows a cut of the residual stream, which the tracer does)."""
        return self.out_proj.out_features

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> "Attention":
        """The exact equivalent of ``mha`` (weights copied, same device, dtype and mode)."""
        e, h = mha.embed_dim, mha.num_heads
        bias = mha.in_proj_bias is not None
        new = cls(e, h, e // h, mha.kdim, mha.vdim, bias, mha.dropout, mha.batch_first)
        ref = mha.out_proj.weight
        new.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                ws = mha.in_proj_weight.chunk(3, 0)
            else:
                ws = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
            bs = mha.in_proj_bias.chunk(3, 0) if bias else (None, None, None)
            for lin, w, b in zip((new.q_proj, new.k_proj, new.v_proj), ws, bs):
                lin.weight.copy_(w)
                if b is not None:
                    lin.bias.copy_(b)
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if bias:
                new.out_proj.bias.copy_(mha.out_proj.bias)
        return new.train(mha.training)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        # (T, B, E) from here on, as nn.MultiheadAttention computes
        t, b, _ = query.shape
        s = key.shape[0]
        h, d = self.num_heads, self.head_dim

        def heads(x: torch.Tensor, n: int) -> torch.Tensor:  # (n, B, H*d) -> (B, H, n, d)
            return x.reshape(n, b, h, d).permute(1, 2, 0, 3)

        q = heads(self.q_proj(query), t) * (1.0 / math.sqrt(d))
        k, v = heads(self.k_proj(key), s), heads(self.v_proj(value), s)
        scores = q @ k.transpose(-2, -1)
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(t, s, dtype=torch.bool, device=query.device).triu(1)
        for mask, shape in ((attn_mask, None), (key_padding_mask, (b, 1, 1, s))):
            if mask is None:
                continue
            if shape is None:
                shape = (1, 1, t, s) if mask.dim() == 2 else (b, h, t, s)
            mask = mask.reshape(shape)
            if mask.dtype == torch.bool:
                scores = scores.masked_fill(mask, float("-inf"))
            else:
                scores = scores + mask.to(scores.dtype)
        w = torch.softmax(scores, dim=-1)
        if self.training and self.dropout > 0:
            w = F.dropout(w, p=self.dropout)
        out = self.out_proj((w @ v).permute(2, 0, 1, 3).reshape(t, b, h * d))
        if unbatched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        if average_attn_weights:
            w = w.mean(dim=1)
        return out, (w.squeeze(0) if unbatched else w)


def convert_mha(model: nn.Module) -> list[str]:
    """Replace, in place, every ``nn.MultiheadAttention`` of ``model`` that
    :class:`Attention` expresses exactly by one; the notes say which and what was left."""
    notes: list[str] = []
    for name, mod in list(model.named_modules()):
        if type(mod) is not nn.MultiheadAttention:
            continue
        if mod.bias_k is not None or mod.add_zero_attn:
            notes.append(f"{name}: nn.MultiheadAttention with add_bias_kv / add_zero_attn: heads not pruned")
            continue
        *path, leaf = name.split(".")
        parent = model.get_submodule(".".join(path)) if path else model
        setattr(parent, leaf, Attention.from_mha(mod))
        notes.append(f"{name}: nn.MultiheadAttention replaced by the equivalent edgeprune Attention "
                     "(separate q/k/v/out Linear) so whole heads can be pruned")
    return notes


class HeadCut:
    """The cut-plan handler that lowers an attention module's head count (and the
    attributes equal to its inner width) by the heads whose channels are dropped; the
    Linear cuts of the same plan remove their weights."""

    def __init__(self, head_dim: int, heads_attr: str, inner_attrs: Sequence[str]) -> None:
        self.head_dim, self.heads_attr, self.inner_attrs = head_dim, heads_attr, tuple(inner_attrs)

    def __call__(self, module: nn.Module, idxs: Sequence[int]) -> nn.Module:
        d = self.head_dim
        drop = np.sort(np.asarray(idxs, dtype=np.int64))
        if drop.size % d or not (drop.reshape(-1, d) == drop.reshape(-1, d)[:, :1] + np.arange(d)).all() \
                or (drop.reshape(-1, d)[:, 0] % d).any():
            raise PruneError(f"attention heads are cut whole: {drop.size} channels are not whole heads of {d}")
        setattr(module, self.heads_attr, int(getattr(module, self.heads_attr)) - drop.size // d)
        for a in self.inner_attrs:
            setattr(module, a, int(getattr(module, a)) - int(drop.size))
        return module


@dataclass
class _Found:
    name: str  # the attention module
    heads_attr: str
    heads: int
    head_dim: int
    projs: tuple[str, ...]  # q, k, v (or the fused qkv) module names
    fused: bool


@dataclass
class HeadGroups:
    """What :func:`head_groups` adds to a traced space (see ``build_space``)."""

    groups: dict[str, PruneGroup] = field(default_factory=dict)
    plans: dict[str, list[Any]] = field(default_factory=dict)
    out_owner: dict[str, str] = field(default_factory=dict)  # q/k/v module -> head group
    in_owner: dict[str, tuple[str, int]] = field(default_factory=dict)  # out projection -> (head group, inner)
    skip: set[str] = field(default_factory=set)  # projections the tracer must not root a group at
    notes: list[str] = field(default_factory=list)
    cores: list[tuple[_Found, str]] = field(default_factory=list)  # (attention, its first projection)
    converted: set[str] = field(default_factory=set)  # attention modules that are edgeprune Attention

    def layers(self, layers: Sequence[PrunableLayer], shapes: Mapping[str, Mapping[str, Any]],
               groups: Mapping[str, PruneGroup]) -> list[PrunableLayer]:
        """``layers`` (the traced space's) with one ``kind="attention"`` layer per core
        after its projections (``rows`` = batch, ``seq_len`` = query tokens, read off the
        first projection's recorded input), and each fused qkv Linear as three Linear
        layers of ``inner`` outputs (``qkv``, ``qkv.k``, ``qkv.v``): a layer's width
        follows one group 1:1, and the head group counts ``inner`` channels, not
        ``3 x inner`` (same MACs; the table times three GEMMs where the model runs one)."""
        cores: dict[str, PrunableLayer] = {}
        fused: dict[str, int] = {}
        for f, first in self.cores:
            inner = f.heads * f.head_dim
            if f.fused:
                fused[first] = inner
            shape = shapes.get(first, {}).get("shape")
            if not shape or len(shape) < 2:
                continue
            if f.name in self.converted:  # Attention projects (T, B, E)
                tokens, batch = int(shape[0]), int(math.prod(shape[1:-1]))
            else:
                tokens, batch = int(shape[-2]), int(math.prod(shape[:-2]))
            gid = f.name if f.name in groups and groups[f.name].prunable else None
            cores[f.projs[-1]] = PrunableLayer(
                name=f.name, kind="attention", in_channels=inner, out_channels=inner, in_group=gid, out_group=gid,
                head_dim=f.head_dim, rows=max(1, batch), seq_len=tokens, bias=False)
        out: list[PrunableLayer] = []
        for layer in layers:
            if layer.name in fused:
                inner = fused[layer.name]
                out += [replace(layer, name=layer.name + sfx, out_channels=inner) for sfx in ("", ".k", ".v")]
            else:
                out.append(layer)
            if layer.name in cores:
                out.append(cores.pop(layer.name))
        return out + list(cores.values())


def _matches(name: str, keep: Sequence[str]) -> bool:
    return any(name == k or name.startswith(k + ".") for k in keep)


def _find(model: nn.Module) -> tuple[list[_Found], list[str]]:
    found, notes = [], []
    for name, mod in model.named_modules():
        heads_attr = next((a for a in HEAD_ATTRS if isinstance(getattr(mod, a, None), int)
                           and not isinstance(getattr(mod, a), bool)), None)
        if heads_attr is None:
            continue
        kids = dict(mod.named_children())
        lin = {k: m for k, m in kids.items() if isinstance(m, nn.Linear)}
        heads = int(getattr(mod, heads_attr))
        pre = name + "." if name else ""
        fused = next((k for k in FUSED if k in lin and lin[k].out_features % 3 == 0), None)
        sep = next((t for t in SEPARATE if all(k in lin for k in t)), None)
        if fused is None and sep is None:
            continue
        inner = lin[fused].out_features // 3 if fused else lin[sep[0]].out_features
        if sep and len({lin[k].out_features for k in sep}) != 1:
            notes.append(f"{name}: q, k and v differ in width (grouped-query attention): heads not pruned")
            continue
        if heads < 1 or inner % heads:
            notes.append(f"{name}: {inner} channels do not split into {heads} heads: heads not pruned")
            continue
        projs = (pre + fused,) if fused else tuple(pre + k for k in sep)  # type: ignore[union-attr]
        found.append(_Found(name, heads_attr, heads, inner // heads, projs, fused is not None))
    return found, notes


def head_groups(model: nn.Module, dg: Any, keep_layers: Sequence[str], make_cut: Any) -> HeadGroups:
    """The head groups of ``model`` (as traced by torch-pruning's ``dg``): per attention
    module one group of ``heads * head_dim`` channels with ``unit = head_dim`` and its cut
    plan (``make_cut`` builds a plan step: graph's ``_Cut``). Modules it cannot handle are
    left to the tracer, with a note."""
    import torch_pruning as tp

    hg = HeadGroups()
    found, hg.notes = _find(model)
    name2mod = dict(model.named_modules())
    mod2name = {m: n for n, m in name2mod.items()}
    for f in found:
        projs = [name2mod[p] for p in f.projs]
        inner = f.heads * f.head_dim
        try:
            grp = dg.get_pruning_group(projs[0], tp.prune_linear_out_channels, list(range(projs[0].out_features)))
        except Exception as exc:  # pragma: no cover - a tracer corner case
            hg.notes.append(f"{f.name}: heads not pruned (dependency analysis failed: {exc})")
            continue
        readers = {item.dep.target.module for item in grp
                   if isinstance(item.dep.target.module, nn.Linear) and item.dep.target.module not in projs
                   and not dg.is_out_channel_pruning_fn(item.dep.handler)}
        readers = [m for m in readers if m.in_features == inner]
        if len(readers) != 1:
            hg.notes.append(f"{f.name}: no single output projection reads its {inner} inner channels: heads not pruned")
            continue
        out_name = mod2name[readers[0]]
        mod = name2mod[f.name]
        inner_attrs = [a for a in INNER_ATTRS if getattr(mod, a, None) == inner]
        ch = np.arange(inner)
        cuts = [make_cut(p, tp.prune_linear_out_channels, 0,
                         np.concatenate([ch, ch + inner, ch + 2 * inner]) if f.fused else ch,
                         np.tile(ch, 3) if f.fused else ch) for p in f.projs]
        cuts.append(make_cut(out_name, tp.prune_linear_in_channels, 1, ch, ch, is_out=False))
        cuts.append(make_cut(f.name, HeadCut(f.head_dim, f.heads_attr, inner_attrs), 0, ch, ch))
        touched = (*f.projs, out_name, f.name)
        kept = [t for t in touched if _matches(t, keep_layers)]
        prunable = f.heads > 1 and not kept
        if kept:
            hg.notes.append(f"group {f.name}: not prunable: '{kept[0]}' is kept (--keep-layer)")
        hg.groups[f.name] = PruneGroup(id=f.name, size=inner, layers=touched, min_size=f.head_dim,
                                       prunable=prunable, unit=f.head_dim)
        hg.plans[f.name] = cuts
        hg.out_owner.update({p: f.name for p in f.projs})
        hg.in_owner[out_name] = (f.name, inner)
        hg.skip.update(f.projs)
        hg.cores.append((f, f.projs[0]))
        if isinstance(mod, Attention):
            hg.converted.add(f.name)
    return hg


def residual_notes(hg: HeadGroups, groups: Mapping[str, PruneGroup], out_owner: Mapping[str, str]) -> list[str]:
    """Say when the residual stream the attention blocks write to stays whole (it reaches
    an embedding, a bare cls-token / position parameter or the output), so a user knows
    only heads and FFN units shrink there."""
    seen: dict[str, int] = {}
    for gid, g in hg.groups.items():
        res = out_owner.get(g.layers[-2])  # the output projection's outputs: the residual stream
        if res in groups and not groups[res].prunable:
            seen[res] = seen.get(res, 0) + 1
    return [f"residual stream '{r}' ({groups[r].size} channels, written by {n} attention block(s)) is left whole: "
            "it reaches an embedding, a bare parameter (cls token, position embedding) or the model output; "
            "heads and FFN units are pruned" for r, n in seen.items()]
