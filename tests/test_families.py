"""The CNN families users ship (tests/families.py): traced, cut to random valid widths,
run, exported to ONNX and run in ONNX Runtime; where the cut is exact, the pruned model
equals the unpruned one with the cut channels zeroed; grouped convs keep whole conv
groups; what cannot be cut is left whole with a note that says why.

Exactness: a channel removed from a group contributes nothing to any layer that reads
it, so the reference zeroes, at the input of every layer that reads the group (the plan's
input cuts: convs and linears, after every BN / activation / SE gate / concat between),
the channels the cut removes. A group that passes through a norm over channels
(LayerNorm) is cut validly but changes the statistics of the channels kept, so it is
only checked to run and export.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.compile.export import export_onnx
from edgeprune.errors import PruneError
from edgeprune.models.base import LoadedModel
from edgeprune.prune.graph import apply_widths, build_space, keep_by_importance, named_module
from edgeprune.prune.strategies import SearchContext
from edgeprune.prune.strategies.uniform import uniform_widths
from families import CHANNEL_NORMS, FAMILIES, GROUP_WIDTH, build, example_input

SPACES: dict[str, object] = {}


def space_of(name: str):
    if name not in SPACES:
        SPACES[name] = (build(name), example_input(), build_space(build(name), [example_input()]))
    return SPACES[name]


def exact(model: nn.Module, space, gid: str) -> bool:
    """A group whose cut equals zeroing: it touches no norm over channels."""
    for cut in space.plans[gid]:
        owner = cut.target.rsplit(".", 1)[0] if cut.is_param else cut.target
        try:
            mod = named_module(model, owner)
            if isinstance(mod, CHANNEL_NORMS) and not (isinstance(mod, nn.GroupNorm) and mod.num_groups > 1):
                return False
        except AttributeError:
            return False
    return True


def random_widths(space, rng: np.random.Generator, gids) -> dict[str, int]:
    out = {}
    for gid in gids:
        g = space.groups[gid]
        units = list(range(max(g.min_size, g.unit), g.size + 1, g.unit))
        out[gid] = int(rng.choice(units[:-1] or units))  # always cut something
    return out


def zeroed_reference(model: nn.Module, space, keep: dict[str, list[int]], x: torch.Tensor) -> torch.Tensor:
    """The unpruned model's output with every removed channel zeroed where it is read."""
    zero: dict[str, set[int]] = {}
    for gid, kept in keep.items():
        drop = np.setdiff1d(np.arange(space.groups[gid].size), kept)
        for cut in space.plans[gid]:
            if cut.is_out or cut.is_param:
                continue
            sel = np.isin(cut.root_idxs, drop)
            zero.setdefault(cut.target, set()).update(int(i) for i in cut.idxs[sel])
    handles = []
    for target, idxs in zero.items():
        mod = named_module(model, target)
        dim = -1 if isinstance(mod, nn.Linear) else 1
        idx = torch.tensor(sorted(idxs), dtype=torch.long)

        def pre(m, args, idx=idx, dim=dim):
            t = args[0].clone()
            t.index_fill_(dim % t.dim(), idx, 0.0)
            return (t, *args[1:])

        handles.append(mod.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_prunes_runs_exports_and_is_exact(name, tmp_path):
    model, x, space = space_of(name)
    prunable = [g.id for g in space.prunable_groups()]
    assert len(prunable) >= 3, (name, space.notes)
    rng = np.random.default_rng(7)
    with torch.no_grad():
        full = model(x)
    exact_ids = [g for g in prunable if exact(model, space, g)]
    assert exact_ids, name
    for trial, gids in enumerate((exact_ids, prunable)):
        widths = random_widths(space, rng, gids)
        scores = {g.id: rng.random(g.size) for g in space.groups.values()}
        keep = keep_by_importance(space, scores, widths)
        assert all(len(keep[g]) == w for g, w in widths.items())
        pruned = apply_widths(model, space, {g: keep[g] for g in gids})
        with torch.no_grad():
            out = pruned(x)
        assert out.shape == full.shape
        assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
        if trial == 0:  # only exact groups cut: equal to the zeroed unpruned model
            ref = zeroed_reference(model, space, {g: keep[g] for g in gids}, x)
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
            assert not torch.allclose(out, full, atol=1e-3)  # the cut did change the function
        else:
            loaded = LoadedModel(name=name, spec=name, input_names=["input"], example_inputs=[x.numpy()],
                                 module=pruned)
            res = export_onnx(loaded, tmp_path / f"{name}.onnx")
            assert res.parity_ok, res


def test_grouped_convs_keep_whole_conv_groups():
    model, x, space = space_of("regnet")
    grouped = [g for g in space.prunable_groups() if g.unit > 1]
    assert grouped and all(g.unit == GROUP_WIDTH and g.min_size == GROUP_WIDTH for g in grouped)
    layers = {l.name: l for l in space.layers}
    b = layers["s2.1.b.0"]
    assert b.group_width == GROUP_WIDTH and b.groups == 6 and b.in_group == b.out_group == "s2.1.a.0"
    gid = "s2.1.a.0"
    g = space.groups[gid]
    keep = keep_by_importance(space, {gid: np.arange(g.size, dtype=float)}, {gid: 32})
    assert keep[gid] == list(range(16, 48))  # the four best whole conv groups (by summed score)
    pruned = apply_widths(model, space, {gid: keep[gid]})
    conv = named_module(pruned, "s2.1.b.0")
    assert (conv.in_channels, conv.out_channels, conv.groups) == (32, 32, 32 // GROUP_WIDTH)
    assert b.dims({gid: 32}) == (32, 32) and b.groups_at(32) == 4
    # a kept set that splits a conv group, or a width that is not whole groups, is refused
    with pytest.raises(PruneError, match="whole blocks of 8"):
        apply_widths(model, space, {gid: list(range(4, 48))})
    with pytest.raises(PruneError, match="not a multiple of its unit 8"):
        keep_by_importance(space, {gid: np.ones(g.size)}, {gid: 30})
    # the widths strategies see are whole conv groups
    ctx = SearchContext(module=model, space=space, latency=_NoSteps(), budget_ms=1.0, scores={})
    assert ctx.candidates(gid) == [8, 16, 24, 32, 40, 48]
    assert ctx.min_widths()[gid] == 8
    assert all(uniform_widths(ctx, r)[gid] % GROUP_WIDTH == 0 for r in (0.1, 0.33, 0.5, 0.77))


class _NoSteps:
    """A latency model whose snapped candidates ignore conv groups (odd widths only)."""

    def predict(self, widths):
        return 1.0

    def candidates(self, group):
        return [3, 5, 7]


def test_what_cannot_be_cut_is_left_whole_with_a_note():
    model, x, space = space_of("regnet")
    widen = [n for n in space.notes if "widen.0" in n]
    assert widen and all("left whole" in n and "groups=4" in n for n in widen)
    assert not space.groups["widen.0"].prunable
    with pytest.raises(PruneError, match="widen.0 is not prunable"):
        apply_widths(model, space, {"widen.0": list(range(48))})
    _, _, shuffle = space_of("shufflenetv2")
    frozen = [g for g in shuffle.groups.values() if not g.prunable and g.id != "fc"]
    assert frozen
    for g in frozen:
        note = next(n for n in shuffle.notes if n.startswith(f"group {g.id}:"))
        assert "channel shuffle in 'stage" in note and "\n" not in note
    # the branches' inner channels stay prunable
    assert shuffle.groups["stage3.1.branch2.0.0"].prunable


def test_layer_scale_and_bare_norm_parameters_are_cut():
    model, x, space = space_of("convnext")
    gid = "stem.0"  # the stage-1 residual stream: gamma and LayerNorm2d weights are bare parameters
    g = space.groups[gid]
    assert g.prunable
    pruned = apply_widths(model, space, {gid: list(range(0, g.size, 2))})
    assert named_module(pruned, "stage1.0").gamma.shape == (8,)
    assert named_module(pruned, "stem.1").weight.shape == (8,)
    assert named_module(pruned, "stage1.1.norm").normalized_shape == (8,)


def test_a_bare_matrix_parameter_is_left_whole():
    class Mixer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.w = nn.Parameter(torch.randn(8, 8, 1, 1))  # used as a per-position matrix
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            return self.fc((y * self.w.sum(1)).mean([2, 3]))

    space = build_space(Mixer().eval(), [torch.randn(1, 3, 8, 8)])
    assert not space.groups["conv"].prunable
    assert any("bare parameter 'w'" in n and "--keep-layer" in n for n in space.notes)


def test_group_norm_loses_whole_norm_groups_and_stays_exact():
    """GroupNorm(4, 16) is cut in whole norm groups (num_groups drops, the other groups'
    statistics are unchanged: exact); GroupNorm(1, c) normalises over every channel."""

    class GNNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.n1 = nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16)
            self.c2, self.n2 = nn.Conv2d(16, 12, 3, padding=1), nn.GroupNorm(1, 12)
            self.fc = nn.Linear(12, 5)

        def forward(self, x):
            x = torch.relu(self.n1(self.c1(x)))
            return self.fc(torch.relu(self.n2(self.c2(x))).mean([2, 3]))

    torch.manual_seed(0)
    model, x = GNNet().eval(), torch.randn(1, 3, 8, 8)
    space = build_space(model, [x])
    g1, g2 = space.groups["c1"], space.groups["c2"]
    assert (g1.unit, g1.prunable, g2.unit, g2.prunable) == (4, True, 1, True)
    keep = {"c1": [4, 5, 6, 7, 12, 13, 14, 15]}
    pruned = apply_widths(model, space, keep)
    assert (pruned.n1.num_channels, pruned.n1.num_groups) == (8, 2)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), zeroed_reference(model, space, keep, x), rtol=1e-4, atol=1e-4)
    with pytest.raises(PruneError, match="whole blocks of 4"):
        apply_widths(model, space, {"c1": list(range(2, 16))})
    assert apply_widths(model, space, {"c2": list(range(0, 12, 2))}).n2.num_channels == 6

