"""Attention-head and FFN pruning of ViT- and BERT-like encoders (issue 17, scope 2).

Heads come out whole and consistently (q, k, v rows, the output projection's columns and
the module's head count); the pruned model equals the unpruned one with those heads'
outputs and those FFN units zeroed, keeps its output shape, and exports to ONNX that ONNX
Runtime runs to the same numbers. ``nn.MultiheadAttention`` is replaced by an exact
equivalent first. Tiny untrained models: the cut is exact, so no training is needed.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.errors import PruneError
from edgeprune.models.base import LoadedModel
from edgeprune.prune.attention import Attention, convert_mha
from edgeprune.prune.graph import apply_widths, build_space, named_module
from edgeprune.prune.importance import get_importance

from transformer_models import TinyBert, TinyViT

HEADS, DIM, MLP, BATCH = 4, 32, 64, 2
D = DIM // HEADS


def _model(kind: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if kind == "bert":
        return TinyBert(dim=DIM, heads=HEADS, ffn=MLP).eval(), torch.randint(0, 50, (BATCH, 8))
    return TinyViT(kind, dim=DIM, heads=HEADS, mlp=MLP).eval(), torch.randn(BATCH, 3, 16, 16)


def _head_groups(space):
    return {gid: g for gid, g in space.groups.items() if g.unit > 1}


def _ffn_groups(space):
    return [gid for gid in space.groups if gid.endswith(("fc1", "intermediate"))]


def _keep(space, heads=(0, 2), units=None):
    """Heads ``heads`` of every head group, the even units of every FFN group."""
    keep = {gid: [h * D + j for h in heads for j in range(D)] for gid in _head_groups(space)}
    keep.update({gid: list(range(0, MLP, 2)) if units is None else units for gid in _ffn_groups(space)})
    return keep


def _zeroed_reference(model: nn.Module, space, keep) -> nn.Module:
    """``model`` with the dropped heads' outputs (the output projection's input columns)
    and the dropped FFN units (fc2's input columns) set to zero."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for gid, kept in keep.items():
            g = space.groups[gid]
            drop = sorted(set(range(g.size)) - set(kept))
            reader = g.layers[-2] if g.unit > 1 else g.layers[1]  # out projection / fc2 (MHA: its out_proj)
            named_module(ref, reader).weight[:, drop] = 0.0
    return ref


@pytest.mark.parametrize("kind", ["mha", "qkv", "sep", "bert"])
def test_heads_and_ffn_cut_consistently_and_exactly(kind, tmp_path):
    model, x = _model(kind)
    original = copy.deepcopy(model)  # nn.MultiheadAttention still in it for "mha"
    space = build_space(model, [x])
    heads = _head_groups(space)
    assert len(heads) == 2 and len(_ffn_groups(space)) == 2
    for gid, g in heads.items():
        assert (g.size, g.unit, g.min_size, g.prunable) == (DIM, D, D, True)
        core = next(l for l in space.layers if l.kind == "attention" and l.name == gid)
        tokens = 17 if kind != "bert" else 8
        assert (core.in_group, core.out_group, core.head_dim, core.rows, core.seq_len) == (gid, gid, D, BATCH, tokens)
        assert core.in_channels == core.out_channels == DIM
        q, *_, out, _mod = g.layers
        lq = next(l for l in space.layers if l.name == q)
        lo = next(l for l in space.layers if l.name == out)
        assert (lq.kind, lq.out_group, lq.rows) == ("linear", gid, BATCH * tokens)
        assert (lo.in_group, lo.rows) == (gid, BATCH * tokens)
        names = [l.name for l in space.layers]
        projs = [q, q + ".k", q + ".v"] if kind == "qkv" else list(g.layers[:3])  # fused qkv: three Linear
        i = names.index(projs[0])
        assert names[i:i + 4] == [*projs, gid]  # the core right after its projections
        assert all(space.layers[i + j].out_channels == DIM and space.layers[i + j].out_group == gid for j in range(3))

    keep = _keep(space)
    pruned = apply_widths(model, space, keep)
    for gid, g in heads.items():
        att = named_module(pruned, gid)
        assert getattr(att, "num_heads", getattr(att, "num_attention_heads", None)) == 2
        *projs, out, _ = g.layers
        widths = {named_module(pruned, p).out_features for p in projs}
        assert widths == ({3 * 2 * D} if kind == "qkv" else {2 * D})
        assert named_module(pruned, out).in_features == 2 * D
        if kind == "bert":
            assert att.all_head_size == 2 * D
    for gid in _ffn_groups(space):
        assert named_module(pruned, gid).out_features == MLP // 2

    ref = _zeroed_reference(original, space, keep)
    with torch.no_grad():
        got, want = pruned(x), ref(x)
    assert got.shape == original(x).shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)

    lm = LoadedModel(name=kind, spec=kind, input_names=["input"], example_inputs=[x.numpy()], module=pruned)
    from edgeprune.compile.export import export_onnx

    res = export_onnx(lm, tmp_path / "pruned.onnx")
    assert res.parity_ok, res
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "pruned.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = sess.run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(onnx_out, want.numpy(), atol=1e-4, rtol=1e-3)


def test_heads_are_cut_whole_only():
    model, x = _model("qkv")
    space = build_space(model, [x])
    gid = next(iter(_head_groups(space)))
    with pytest.raises(PruneError):
        apply_widths(model, space, {gid: list(range(1, DIM))})  # one channel of head 0
    pruned = apply_widths(model, space, {gid: list(range(D, DIM))})  # head 0 whole
    assert named_module(pruned, gid).num_heads == HEADS - 1


def test_keep_layer_freezes_the_heads():
    model, x = _model("sep")
    space = build_space(model, [x], keep_layers=["blocks.0.attn.proj"])
    assert not space.groups["blocks.0.attn"].prunable and space.groups["blocks.1.attn"].prunable
    assert any("blocks.0.attn" in n and "--keep-layer" in n for n in space.notes)


def test_importance_scores_every_head_channel():
    model, x = _model("bert")
    space = build_space(model, [x])
    scores = get_importance("l1")(model, space, None)
    for gid in _head_groups(space):
        s = np.asarray(scores[gid])
        assert s.shape == (DIM,) and np.all(s > 0)


def test_mha_conversion_is_exact():
    """Attention reproduces nn.MultiheadAttention: layouts, masks, weights, dropout off."""
    torch.manual_seed(1)
    for batch_first in (True, False):
        mha = nn.MultiheadAttention(DIM, HEADS, batch_first=batch_first).eval()
        att = Attention.from_mha(mha).eval()
        q = torch.randn(BATCH, 5, DIM) if batch_first else torch.randn(5, BATCH, DIM)
        kv = torch.randn(BATCH, 7, DIM) if batch_first else torch.randn(7, BATCH, DIM)
        pad = torch.zeros(BATCH, 7, dtype=torch.bool)
        pad[0, -2:] = True
        mask = torch.randn(5, 7)
        for kwargs in ({}, {"key_padding_mask": pad, "attn_mask": mask > 1.0}, {"attn_mask": mask}, {"average_attn_weights": False},
                       {"need_weights": False, "attn_mask": mask > 1.0}):
            want, want_w = mha(q, kv, kv, **kwargs)
            got, got_w = att(q, kv, kv, **kwargs)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
            if want_w is None:
                assert got_w is None
            else:
                torch.testing.assert_close(got_w, want_w, atol=1e-5, rtol=1e-4)
    # nn.TransformerEncoderLayer takes its ordinary path with the stand-in
    layer = nn.TransformerEncoderLayer(DIM, HEADS, MLP, dropout=0.0, batch_first=True).eval()
    x = torch.randn(BATCH, 6, DIM)
    want = layer(x)
    notes = convert_mha(layer)
    assert isinstance(layer.self_attn, Attention) and len(notes) == 1
    torch.testing.assert_close(layer(x), want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["mha", "bert"])
def test_knapsack_prunes_whole_heads_to_a_budget(kind):
    from edgeprune.prune.strategies import STRATEGIES, SearchContext
    from test_prune import MacLatency

    model, x = _model(kind)
    space = build_space(model, [x])
    lat = MacLatency(space)
    ctx = SearchContext(module=model, space=space, latency=lat, budget_ms=0.6 * lat.predict(space.full_widths()),
                        scores=get_importance("l1")(model, space), progress=False, log=lambda m: None)
    res = STRATEGIES.get("knapsack")().search(ctx)
    assert res.predicted_ms <= ctx.budget_ms
    heads = _head_groups(space)
    assert any(res.widths.get(g, DIM) < DIM for g in heads) or all(
        res.widths.get(g, MLP) < MLP for g in _ffn_groups(space))
    pruned = ctx.cut(res.widths)
    for gid in heads:
        w = res.widths.get(gid, DIM)
        assert w % D == 0
        att = named_module(pruned, gid)
        assert getattr(att, "num_heads", getattr(att, "num_attention_heads", None)) == w // D
    with torch.no_grad():
        assert pruned(x).shape == model(x).shape
        # what save_pruned writes: a TorchScript trace and an ExportedProgram of the stand-in
        torch.testing.assert_close(torch.jit.trace(pruned, (x,))(x), pruned(x))
        torch.testing.assert_close(torch.export.export(pruned, (x,)).module()(x), pruned(x))


def test_a_forward_tied_to_the_input_width_leaves_its_heads_whole_with_a_note():
    """Old timm merges heads with ``reshape(B, N, C)`` (C = the input width): fewer heads
    cannot run, so the group is frozen and said so, never cut into a broken model."""
    from transformer_models import FusedQKVAttention

    class WidthTied(FusedQKVAttention):
        def forward(self, x):
            b, t, c = x.shape
            q, k, v = self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            y = (q @ k.transpose(-2, -1) * self.scale).softmax(-1) @ v
            return self.proj(y.transpose(1, 2).reshape(b, t, c))

    model, x = _model("qkv")
    model.blocks[0].attn = WidthTied(DIM, HEADS).eval()
    space = build_space(model, [x])
    assert not space.groups["blocks.0.attn"].prunable and space.groups["blocks.1.attn"].prunable
    assert any(n.startswith("group blocks.0.attn:") and "fails to run" in n for n in space.notes)
    assert any(n.startswith("residual stream 'patch_embed'") for n in space.notes)
    with pytest.raises(PruneError):
        apply_widths(model, space, {"blocks.0.attn": list(range(D, DIM))})


def test_transformer_encoder_prunes_heads_ffn_and_its_residual_stream():
    """With no cls token / position parameter / embedding on it (a Linear stem), the
    residual stream is one ordinary group: cut with LayerNorms and every projection."""

    class Enc(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Linear(5, DIM)
            layer = nn.TransformerEncoderLayer(DIM, HEADS, MLP, dropout=0.0, batch_first=True)
            self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(DIM, 3)

        def forward(self, x):
            return self.head(self.enc(self.stem(x))[:, 0])

    torch.manual_seed(0)
    model, x = Enc().eval(), torch.randn(BATCH, 6, 5)
    want = model(x)
    space = build_space(model, [x])
    torch.testing.assert_close(model(x), want, atol=1e-5, rtol=1e-4)  # converted in place, same function
    assert space.groups["stem"].prunable and len(_head_groups(space)) == 2
    keep = {gid: list(range(D, DIM)) for gid in _head_groups(space)}
    keep["stem"] = list(range(0, DIM, 2))
    pruned = apply_widths(model, space, keep)
    att = pruned.enc.layers[0].self_attn
    assert (att.num_heads, att.embed_dim, tuple(att.q_proj.weight.shape)) == (HEADS - 1, DIM // 2, (DIM - D, DIM // 2))
    assert pruned.enc.layers[0].norm1.normalized_shape == (DIM // 2,)
    with torch.no_grad():
        assert pruned(x).shape == want.shape
