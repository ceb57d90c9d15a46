"""Bidirectional and stacked LSTM / GRU hidden-unit pruning (issue 17, scope 4).

One group per RNN module (``hidden_size`` is shared by every layer and both
directions), gate blocks of every direction and layer cut together, the next layer's
input cut at both direction offsets; the cut equals the unpruned model with those units
zeroed, and the pruned model exports to ONNX and matches ONNX Runtime.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.compile.export import export_onnx
from edgeprune.models.base import LoadedModel
from edgeprune.prune.graph import apply_widths, build_space
from edgeprune.prune.importance import get_importance


class Tagger(nn.Module):
    """pre -> RNN -> head, read from the last time step (``out``) or from h_n."""

    def __init__(self, kind: type[nn.RNNBase], bidir: bool, layers: int, use_hn: bool = False) -> None:
        super().__init__()
        self.pre = nn.Linear(8, 12)
        self.rnn = kind(12, 10, num_layers=layers, batch_first=True, bidirectional=bidir)
        self.head = nn.Linear(10 * (2 if bidir else 1), 5)
        self.use_hn = use_hn

    def forward(self, x):
        out, h = self.rnn(torch.tanh(self.pre(x)))
        if self.use_hn:
            h = h[0] if isinstance(h, tuple) else h
            z = torch.cat([h[-2], h[-1]], -1) if self.rnn.bidirectional else h[-1]
            return self.head(z)
        return self.head(out[:, -1])


class TwoRNNs(nn.Module):
    """Two bidirectional modules in a row: the second reads both blocks of the first."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.GRU(8, 10, batch_first=True, bidirectional=True)
        self.b = nn.LSTM(20, 6, batch_first=True, bidirectional=True)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        return self.head(self.b(self.a(x)[0])[0].mean(1))


CASES = {
    "bilstm": lambda: Tagger(nn.LSTM, True, 1),
    "bigru": lambda: Tagger(nn.GRU, True, 1),
    "lstm2": lambda: Tagger(nn.LSTM, False, 2, use_hn=True),
    "bilstm2-hn": lambda: Tagger(nn.LSTM, True, 2, use_hn=True),
    "bigru2": lambda: Tagger(nn.GRU, True, 2),
}


def _model(name: str) -> tuple[nn.Module, list[torch.Tensor]]:
    torch.manual_seed(0)
    m = CASES[name]()
    for p in m.parameters():
        nn.init.normal_(p, 0, 0.3)
    return m.eval(), [torch.randn(3, 7, 8)]


def _zero_units(model: nn.Module, drop: list[int]) -> nn.Module:
    """The unpruned model with the dropped units' incoming weights and biases zeroed in
    every layer and direction: their gates see 0 so (LSTM) g = 0 and c, h stay 0, (GRU)
    n = 0 and h stays 0; a zero unit adds nothing to the layer above or the head."""
    m = copy.deepcopy(model)
    rnn = m.rnn
    h, g = rnn.hidden_size, (4 if isinstance(rnn, nn.LSTM) else 3)
    rows = [u + k * h for k in range(g) for u in drop]
    with torch.no_grad():
        for k in range(rnn.num_layers):
            for sfx in ("", "_reverse") if rnn.bidirectional else ("",):
                for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(rnn, f"{p}_l{k}{sfx}")[rows] = 0
    return m


@pytest.mark.parametrize("name", list(CASES))
def test_rnn_cut_equals_the_zeroed_model_and_matches_onnx_runtime(name, tmp_path):
    model, x = _model(name)
    space = build_space(model, x)
    group = space.groups["rnn"]
    assert group.prunable and group.size == 10, space.notes
    drop = [0, 3, 4, 9]
    keep = [u for u in range(10) if u not in drop]
    pruned = apply_widths(model, space, {"rnn": keep})
    rnn = pruned.rnn
    assert rnn.hidden_size == 6 and rnn.bidirectional == model.rnn.bidirectional
    dirs = 2 if rnn.bidirectional else 1
    assert pruned.head.in_features == 6 * dirs  # both direction blocks of the head's input are cut
    for k in range(rnn.num_layers):
        for sfx in ("", "_reverse") if rnn.bidirectional else ("",):
            assert getattr(rnn, f"weight_ih_l{k}{sfx}").shape[1] == (12 if k == 0 else 6 * dirs)
            assert getattr(rnn, f"weight_hh_l{k}{sfx}").shape[1] == 6
    reference = _zero_units(model, drop)
    with torch.no_grad():
        got = pruned(*x)
        assert got.shape == model(*x).shape
        np.testing.assert_allclose(got.numpy(), reference(*x).numpy(), rtol=1e-5, atol=1e-5)
        out_p, _ = rnn(torch.tanh(pruned.pre(x[0])))
        out_r, _ = reference.rnn(torch.tanh(reference.pre(x[0])))
        cols = keep + ([u + 10 for u in keep] if dirs == 2 else [])
        np.testing.assert_allclose(out_p.numpy(), out_r[..., cols].numpy(), rtol=1e-5, atol=1e-5)
    lm = LoadedModel(name=name, spec=name, input_names=["x"], example_inputs=[x[0].numpy()], module=pruned)
    res = export_onnx(lm, tmp_path / f"{name}.onnx")
    assert res.parity_ok, res.parity_max_abs_diff


def test_bidirectional_latency_layers_are_one_per_direction():
    model, x = _model("bigru2")
    space = build_space(model, x)
    rnn = [(l.name, l.kind, l.in_channels, l.out_channels, l.in_group, l.out_group)
           for l in space.layers if l.kind == "gru"]
    assert rnn == [
        ("rnn.l0", "gru", 12, 10, "pre", "rnn"), ("rnn.l0.reverse", "gru", 12, 10, "pre", "rnn"),
        ("rnn.l1", "gru", 20, 10, None, "rnn"), ("rnn.l1.reverse", "gru", 20, 10, None, "rnn"),
    ]
    assert all(l.rows == 3 and l.seq_len == 7 for l in space.layers if l.kind == "gru")
    assert any("both directions" in n for n in space.notes)
    # the stacked unidirectional case keeps its tied hidden -> hidden layer
    space2 = build_space(*_model("lstm2"))
    assert [(l.name, l.in_group, l.out_group) for l in space2.layers if l.kind == "lstm"] == [
        ("rnn.l0", "pre", "rnn"), ("rnn.l1", "rnn", "rnn")]


def test_two_bidirectional_modules_in_a_row():
    torch.manual_seed(1)
    model, x = TwoRNNs().eval(), [torch.randn(2, 5, 8)]
    space = build_space(model, x)
    assert space.groups["a"].prunable and space.groups["b"].prunable
    pruned = apply_widths(model, space, {"a": [1, 2, 5, 7], "b": [0, 2, 3]})
    assert pruned.a.hidden_size == 4 and pruned.b.input_size == 8 and pruned.b.hidden_size == 3
    assert pruned.head.in_features == 6 and pruned(*x).shape == (2, 3)


def test_importance_reads_both_directions():
    """Scores of a bidirectional group see the reverse direction: a unit that is dead in
    the forward direction but alive in reverse is not scored as dead."""
    model, x = _model("bilstm")
    h = model.rnn.hidden_size
    with torch.no_grad():
        for p in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(model.rnn, p)[[2 + k * h for k in range(4)]] = 0
        model.rnn.weight_hh_l0[:, 2] = 0
        model.head.weight[:, [2, 2 + h]] = 0  # read forward-only, unit 2 would score 0
    space = build_space(model, x)
    scores = get_importance("l1").channel_scores(model, space, None)["rnn"]
    assert scores[2] > 0.2 * float(np.median(scores))


def test_projected_lstm_is_left_whole_with_a_reason():
    class Proj(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pre = nn.Linear(8, 12)
            self.rnn = nn.LSTM(12, 16, proj_size=4, batch_first=True)
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            return self.head(self.rnn(self.pre(x))[0][:, -1])

    torch.manual_seed(0)
    model, x = Proj().eval(), [torch.randn(2, 5, 8)]
    space = build_space(model, x)
    assert not space.groups["rnn"].prunable
    assert any("proj_size" in n and "ONNX" in n for n in space.notes)
    assert space.groups["pre"].prunable  # its input can still be cut
    pruned = apply_widths(model, space, {"pre": list(range(6))})
    assert pruned.rnn.input_size == 6 and pruned(*x).shape == (2, 3)
