"""The DLRM-like recommender (issue 17, scope 5): its prune space, cut, export and zoo entry.

The embeddings and the bottom MLP's last layer stay whole (their width is the embedding
dim the pairwise interaction is taken over); the bottom's hidden layers and the top MLP
are prunable. Both bag flavours (``nn.Embedding`` + sum, ``nn.EmbeddingBag``) trace,
prune, export to ONNX and match ONNX Runtime.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.compile.export import export_onnx
from edgeprune.models import zoo
from edgeprune.models.archs import DLRM
from edgeprune.models.base import LoadedModel
from edgeprune.models.data import dlrm_synthetic
from edgeprune.prune.graph import apply_widths, build_space


def _small(embedding_bag: bool) -> tuple[DLRM, list[torch.Tensor]]:
    torch.manual_seed(0)
    m = DLRM(n_dense=5, vocab_sizes=[30, 20, 40], emb_dim=8, bottom=[16], top=[24, 12], embedding_bag=embedding_bag)
    x = [torch.randn(6, 5), torch.randint(0, 20, (6, 3, 2))]
    return m.eval(), x


@pytest.mark.parametrize("embedding_bag", [False, True])
def test_dlrm_prune_space_keeps_the_interaction_width(embedding_bag):
    model, x = _small(embedding_bag)
    space = build_space(model, x)
    g = space.groups
    assert g["bottom.0"].prunable and g["top.0"].prunable and g["top.2"].prunable
    assert not g["bottom.2"].prunable  # = emb_dim: the dot products are taken over it
    assert not g["top.4"].prunable  # the logit
    assert not any(name.startswith("emb") for grp in space.prunable_groups() for name in grp.layers)
    layers = {l.name: l for l in space.layers}
    assert layers["top.0"].in_group is None and layers["top.0"].in_channels == 8 + 6  # D + F(F-1)/2, F = 4
    assert layers["top.2"].in_group == "top.0" and layers["bottom.2"].in_group == "bottom.0"
    assert all(l.rows == 6 for l in space.layers)


@pytest.mark.parametrize("embedding_bag", [False, True])
def test_pruned_dlrm_equals_the_zeroed_model_and_matches_onnx_runtime(embedding_bag, tmp_path):
    model, x = _small(embedding_bag)
    space = build_space(model, x)
    keep = {"bottom.0": [0, 2, 5, 7, 11, 15], "top.0": list(range(0, 24, 3)), "top.2": [1, 4, 5, 9]}
    pruned = apply_widths(model, space, keep)
    assert pruned.bottom[0].out_features == 6 and pruned.bottom[2].in_features == 6
    assert pruned.top[0].out_features == 8 and pruned.top[2].in_features == 8 and pruned.top[2].out_features == 4
    assert pruned.top[4].in_features == 4 and pruned.bottom[2].out_features == 8  # emb dim unchanged
    # a dropped unit of a Linear -> ReLU layer with its row and bias zeroed outputs exactly 0
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for gid, kept in keep.items():
            lin = dict(ref.named_modules())[gid]
            drop = [i for i in range(lin.out_features) if i not in kept]
            lin.weight[drop] = 0
            lin.bias[drop] = 0
        got = pruned(*x)
        assert got.shape == (6, 1)
        np.testing.assert_allclose(got.numpy(), ref(*x).numpy(), rtol=1e-5, atol=1e-6)
    lm = LoadedModel(name="dlrm", spec="dlrm", input_names=["dense", "sparse"],
                     example_inputs=[t.numpy() for t in x], module=pruned)
    res = export_onnx(lm, tmp_path / "dlrm.onnx")
    assert res.parity_ok, res.parity_max_abs_diff


def test_embedding_bag_and_embedding_sum_compute_the_same_model():
    a, x = _small(False)
    b, _ = _small(True)
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        np.testing.assert_allclose(a(*x).numpy(), b(*x).numpy(), rtol=1e-6, atol=1e-6)


def test_dlrm_synthetic_data_is_flagged_and_balanced():
    d = dlrm_synthetic(n_dense=4, vocab_sizes=[50, 7], bag=3, n_samples=6000, seed=1)
    assert d.synthetic and d.task == "binary" and "SYNTHETIC" in d.description
    dense, sparse = d.train.inputs
    assert dense.dtype == np.float32 and dense.shape[1:] == (4,)
    assert sparse.dtype == np.int64 and sparse.shape[1:] == (2, 3)
    assert sparse[:, 0].max() < 50 and sparse[:, 1].max() < 7 and sparse.min() >= 0
    assert len(d.val.labels) % 256 == 0
    assert 0.45 < d.train.labels.mean() < 0.55
    again = dlrm_synthetic(n_dense=4, vocab_sizes=[50, 7], bag=3, n_samples=6000, seed=1)
    np.testing.assert_array_equal(again.val.inputs[1], d.val.inputs[1])


def test_dlrm_zoo_entry_serves_batches_and_says_what_stays_whole():
    m = zoo.load_zoo("dlrm-recsys", trained=False)
    assert m.input_names == ["dense", "sparse"] and m.input_shapes == [(256, 13), (256, 8, 2)]
    assert m.data is not None and m.data.synthetic
    assert any("SYNTHETIC" in n for n in m.notes) and any("bottom.4" in n for n in m.notes)
    space = build_space(m.module, [torch.from_numpy(t) for t in m.example_inputs])
    assert not space.groups["bottom.4"].prunable
    assert 30e6 < space.macs() < 80e6  # compute-bound per batch of 256 requests, like mlp-recsys
    assert {"bottom.0", "bottom.2", "top.0", "top.2"} <= {g.id for g in space.prunable_groups()}
    assert isinstance(m.module.emb[0], nn.Embedding)
