"""CNN quirks the tracer needs help with: grouped convs with a fixed group width, channel
shuffles, bare per-channel parameters.

Why this module exists: torch-pruning 1.6.1's ``DependencyGraph`` treats a grouped conv
(``1 < groups < channels``) as a dense conv: cutting its outputs leaves ``groups`` as it
was (``out_channels`` may then not divide by ``groups``) and cutting its inputs keeps
``keep_idxs[:len // groups]``, which only means something when every conv group loses
the same channels (its ``MetaPruner`` prunes that way: ``groups`` stays, the group width
shrinks). RegNet and ResNeXt fix the *group width* instead, and a grouped conv's input
channel block ``k`` feeds only output block ``k``; so the right cut removes whole conv
groups (input and output block together) and lowers ``groups``. That is a depthwise conv
with blocks of ``group_width`` channels instead of one: :class:`_GroupConvPruner` couples
inputs to outputs the way torch-pruning's depthwise pruner does (``prune_in_channels is
prune_out_channels``), and the tracer is shown such convs as a marker subclass so it
picks that pruner for them alone.

A channel shuffle (``view(n, g, c/g, h, w)``, ``transpose(1, 2)``, ``view(n, c, h, w)``:
ShuffleNetV2) permutes channels; torch-pruning's index mapping reads both reshapes as
identities and would cut the wrong channels downstream, silently. The channels that pass
through one are left whole (the branches' inner channels stay prunable). Chained
shuffles (several stride-1 units in a row, as in every real ShuffleNetV2 stage) also
make torch-pruning's reshape mapping infer 0 channels for a reshape and divide by it
(``ZeroDivisionError`` in ``update_reshape_index_mapping``): :func:`reshape_guard`
leaves such a reshape's mapping as it is, which is harmless because those channels are
frozen anyway.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeprune.errors import PruneError

__all__ = ["customized", "fixed_group_width", "group_conv_pruner", "group_norm_pruner", "mark_fixed_groups",
           "norm_group_width", "param_reason", "reshape_guard", "shuffle_ops", "unit_blocks_ok", "unmark", "whole_units"]


class _FixedGroupConv1d(nn.Conv1d):
    """Marker class (never instantiated): tells the tracer to use :class:`_GroupConvPruner`."""


class _FixedGroupConv2d(nn.Conv2d):
    """Marker class (never instantiated): tells the tracer to use :class:`_GroupConvPruner`."""


_MARKERS: dict[type[nn.Module], type[nn.Module]] = {nn.Conv1d: _FixedGroupConv1d, nn.Conv2d: _FixedGroupConv2d}


def fixed_group_width(m: nn.Module) -> int:
    """The group width of a grouped conv whose conv groups can be removed whole (input
    block k feeds only output block k: ``in_channels == out_channels``), else 0."""
    if type(m) not in (nn.Conv1d, nn.Conv2d, _FixedGroupConv1d, _FixedGroupConv2d):
        return 0
    g = int(m.groups)
    if g <= 1 or g == m.in_channels or m.in_channels != m.out_channels or m.in_channels % g:
        return 0
    return m.in_channels // g


def mark_fixed_groups(model: nn.Module) -> dict[nn.Module, int]:
    """Swap the class of every fixed-group-width conv of ``model`` (a tracing copy) for its
    marker subclass; returns {module: group width}. The subclasses add no behaviour."""
    marked: dict[nn.Module, int] = {}
    for m in model.modules():
        gw = fixed_group_width(m)
        if gw:
            m.__class__ = _MARKERS[type(m)]
            marked[m] = gw
    return marked


def unmark(marked: dict[nn.Module, int]) -> None:
    for m in marked:
        m.__class__ = next(base for base, mark in _MARKERS.items() if isinstance(m, mark))


@functools.lru_cache(maxsize=1)
def group_conv_pruner() -> Any:
    """One shared pruner instance (plans hold its bound method, as torch-pruning's own)."""
    from torch_pruning.pruner.function import ConvPruner

    class _GroupConvPruner(ConvPruner):
        def prune_out_channels(self, layer: nn.Module, idxs: Any) -> nn.Module:
            gw = layer.in_channels // layer.groups
            drop = sorted(set(int(i) for i in idxs))
            blocks = {i // gw for i in drop}
            if len(drop) != len(blocks) * gw:
                raise PruneError(
                    f"grouped conv with group width {gw}: can only remove whole conv groups "
                    f"(got {len(drop)} channels over {len(blocks)} groups)")
            keep = [i for i in range(layer.out_channels) if i not in set(drop)]
            layer.weight = nn.Parameter(layer.weight.data[keep].clone())  # dim 1 (gw inputs) is unchanged
            if layer.bias is not None:
                layer.bias = nn.Parameter(layer.bias.data[keep].clone())
            layer.out_channels = layer.in_channels = len(keep)
            layer.groups = len(keep) // gw
            return layer

        prune_in_channels = prune_out_channels

        def get_in_channel_groups(self, layer: nn.Module) -> int:
            return 1

        get_out_channel_groups = get_in_channel_groups

    return _GroupConvPruner()


@functools.lru_cache(maxsize=1)
def group_norm_pruner() -> Any:
    """GroupNorm with ``num_groups > 1`` loses whole norm groups and ``num_groups`` drops.
    torch-pruning's own pruner keeps ``num_groups`` and so silently moves channels into
    other norm groups (their statistics change) unless every group loses the same count."""
    from torch_pruning.pruner.function import GroupNormPruner

    class _GroupNormPruner(GroupNormPruner):
        def prune_out_channels(self, layer: nn.Module, idxs: Any) -> nn.Module:
            gw = layer.num_channels // layer.num_groups
            drop = set(int(i) for i in idxs)
            if layer.num_groups > 1 and not whole_units(drop, gw):
                raise PruneError(f"GroupNorm with {layer.num_groups} groups: can only remove whole norm groups")
            keep = [i for i in range(layer.num_channels) if i not in drop]
            if layer.affine:
                layer.weight = nn.Parameter(layer.weight.data[keep].clone())
                layer.bias = nn.Parameter(layer.bias.data[keep].clone())
            layer.num_channels = len(keep)
            layer.num_groups = len(keep) // gw if layer.num_groups > 1 else 1
            return layer

        prune_in_channels = prune_out_channels

    return _GroupNormPruner()


def norm_group_width(m: nn.Module) -> int:
    """Channels per norm group of a GroupNorm with several groups (cut in whole groups), else 0."""
    if isinstance(m, nn.GroupNorm) and m.num_groups > 1:
        return m.num_channels // m.num_groups
    return 0


def customized(marked: dict[nn.Module, int]) -> dict[type[nn.Module], Any]:
    types = {type(m) for m in marked}
    return {nn.GroupNorm: group_norm_pruner(), **{t: group_conv_pruner() for t in types}}


def param_reason(param: torch.Tensor, name: str) -> str | None:
    """Why a bare ``nn.Parameter`` (layer scale, a hand-written norm's weight) cannot be
    cut with its channels, or None if it can: only a per-channel vector (one dimension
    above 1, broadcast against the channels) is cut; a matrix may be a weight of a matmul
    the tracer reads as element-wise."""
    dims = [int(d) for d in param.shape if d > 1]
    if len(dims) == 1:
        return None
    return (f"bare parameter '{name}' {tuple(param.shape)} is not a per-channel vector "
            "(wrap it in a module, or --keep-layer its owner)")


def _sizes(grad_fn: Any) -> tuple[int, ...] | None:
    for attr in ("_saved_self_sym_sizes", "_saved_self_sizes"):
        s = getattr(grad_fn, attr, None)
        if s is not None:
            try:
                return tuple(int(d) for d in s)
            except (TypeError, ValueError):
                return None
    return None


def shuffle_ops(dg: Any, mod2name: dict[nn.Module, str]) -> dict[Any, str]:
    """The tracer's op nodes of every channel shuffle: a reshape of a rank-5 tensor that
    comes (through ``contiguous`` copies) from a transpose or permute, i.e. a channel
    dimension split in two, swapped, and merged again. Returns {op: description}."""
    found: dict[Any, str] = {}
    for op, node in dg.module2node.items():
        name = node.grad_fn.name() if hasattr(node.grad_fn, "name") else ""
        if "view" not in name.lower() and "reshape" not in name.lower():
            continue
        sizes = _sizes(node.grad_fn)
        if sizes is None or len(sizes) != 5:
            continue
        chain, seen, stack = [node], set(), list(node.inputs)
        mixer = None
        while stack and mixer is None:
            n = stack.pop()
            if n in seen or len(seen) > 8:
                continue
            seen.add(n)
            nm = n.grad_fn.name().lower() if hasattr(n.grad_fn, "name") else ""
            if "transpose" in nm or "permute" in nm:
                mixer = n
            elif "clone" in nm or "view" in nm or "reshape" in nm:
                chain.append(n)
                stack.extend(n.inputs)
        if mixer is None:
            continue
        chain.append(mixer)
        before = _nearest_named(mixer, mod2name)
        desc = f"the channel shuffle in '{before}'" if before else "a channel shuffle"
        for n in chain:
            found[n.module] = desc
        for n in mixer.inputs:  # the first reshape (n, c, h, w) -> (n, g, c/g, h, w)
            found.setdefault(n.module, desc)
    return found


def _nearest_named(node: Any, mod2name: dict[nn.Module, str]) -> str | None:
    """The longest common name prefix of the nearest named modules upstream of ``node``
    (the block holding the shuffle)."""
    names: list[str] = []
    stack, seen = [node], set()
    while stack and len(seen) < 64:
        n = stack.pop(0)
        if n in seen:
            continue
        seen.add(n)
        if n.module in mod2name:
            names.append(mod2name[n.module])
            continue
        stack.extend(n.inputs)
    if not names:
        return None
    parts = [p.split(".") for p in names]
    common = []
    for bits in zip(*parts):
        if len(set(bits)) != 1:
            break
        common.append(bits[0])
    return ".".join(common) or names[0]


def unit_blocks_ok(idxs: np.ndarray, root_idxs: np.ndarray, size: int) -> bool:
    """A grouped conv's cut takes the group's channels 1:1 (index i of the conv is root
    channel i), so removing whole units of the group removes whole conv groups."""
    return len(idxs) == size and np.array_equal(np.asarray(idxs), np.asarray(root_idxs))


def whole_units(kept: Any, unit: int) -> bool:
    """Every block of ``unit`` consecutive channels is kept whole or dropped whole."""
    blocks: dict[int, int] = {}
    for i in kept:
        blocks[int(i) // unit] = blocks.get(int(i) // unit, 0) + 1
    return all(n == unit for n in blocks.values())


@contextlib.contextmanager
def reshape_guard() -> Iterator[None]:
    """While tracing and grouping (torch-pruning re-maps every reshape in each
    ``get_pruning_group``, so ``build_space`` is decorated with it whole): the reshape
    index mapping skips a reshape whose channel count it infers as 0 instead of dividing
    by it (module docstring). Restored after."""
    from torch_pruning.dependency import index_mapping

    original = index_mapping.update_reshape_index_mapping

    @functools.wraps(original)
    def guarded(graph: Any, node: Any) -> None:
        try:
            original(graph, node)
        except ZeroDivisionError:
            return

    index_mapping.update_reshape_index_mapping = guarded
    try:
        yield
    finally:
        index_mapping.update_reshape_index_mapping = original
