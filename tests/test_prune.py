"""Structured pruning: the prune space, cutting, importance, strategies, the API.

Small models and synthetic data keep this file fast; the latency-budget test at the end
uses the real latency table and measures the compiled artifacts with ONNX Runtime.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.errors import ModelError, PruneError
from edgeprune.models.base import DataSplit, LoadedModel, ModelData
from edgeprune.prune.graph import apply_widths, build_space, keep_by_importance
from edgeprune.prune.importance import IMPORTANCE, get_importance
from edgeprune.prune.strategies import STRATEGIES, SearchContext


# ---------------------------------------------------------------------------- models


class DWBlock(nn.Module):
    """conv -> BN -> depthwise conv -> BN -> 1x1 conv -> BN, added to the block input."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(c)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.b2 = nn.BatchNorm2d(c)
        self.c2 = nn.Conv2d(c, c, 1, bias=False)
        self.b3 = nn.BatchNorm2d(c)

    def forward(self, x):
        y = torch.relu(self.b1(self.c1(x)))
        y = torch.relu(self.b2(self.dw(y)))
        return torch.relu(x + self.b3(self.c2(y)))


class ResDWNet(nn.Module):
    """Residual add, depthwise conv, concatenation, flatten -> linear: every coupling."""

    def __init__(self, c: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.block = DWBlock(c)
        self.left = nn.Conv2d(c, c // 2, 1)
        self.right = nn.Conv2d(c, c // 2, 3, padding=1)
        self.head = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(2 * c * 4 * 4, 32)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        x = self.block(torch.relu(self.bn(self.stem(x))))
        x = torch.cat([self.left(x), self.right(x)], 1)
        x = torch.relu(self.head(x))
        return self.fc(torch.relu(self.fc1(x.flatten(1))))


class RecMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.user = nn.Embedding(50, 8)
        self.item = nn.Embedding(40, 8)
        self.mlp = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())
        self.out = nn.Linear(32, 1)

    def forward(self, u, i):
        return self.out(self.mlp(torch.cat([self.user(u), self.item(i)], -1)))


class RNNNet(nn.Module):
    def __init__(self, kind: type[nn.RNNBase], hidden: int = 24, layers: int = 1, use_hn: bool = False) -> None:
        super().__init__()
        self.pre = nn.Linear(8, 12)
        self.rnn = kind(12, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, 5)
        self.use_hn = use_hn

    def forward(self, x):
        out, h = self.rnn(torch.tanh(self.pre(x)))
        if self.use_hn:
            h = h[0] if isinstance(h, tuple) else h
            return self.head(h[-1])
        return self.head(out[:, -1])


def _seeded(m: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for p in m.parameters():
        nn.init.normal_(p, 0, 0.3)
    for mod in m.modules():  # BN statistics that are not trivially 0/1, and no dead ReLUs
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
            with torch.no_grad():
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(0.5, 1.0)
    return m.eval()


CASES = {
    "resdw": (lambda: ResDWNet(), lambda: [torch.randn(2, 1, 8, 8)]),
    "recsys": (lambda: RecMLP(), lambda: [torch.randint(0, 50, (16,)), torch.randint(0, 40, (16,))]),
    "lstm": (lambda: RNNNet(nn.LSTM), lambda: [torch.randn(3, 7, 8)]),
    "gru": (lambda: RNNNet(nn.GRU), lambda: [torch.randn(3, 7, 8)]),
    "lstm2-hn": (lambda: RNNNet(nn.LSTM, layers=2, use_hn=True), lambda: [torch.randn(3, 7, 8)]),
    "gru2-hn": (lambda: RNNNet(nn.GRU, layers=2, use_hn=True), lambda: [torch.randn(3, 7, 8)]),
}


def _case(name: str):
    make, inputs = CASES[name]
    torch.manual_seed(1)
    return _seeded(make()), inputs()


# ----------------------------------------------------------------- space and cutting


def test_space_groups_follow_the_couplings():
    model, x = _case("resdw")
    space = build_space(model, x)
    g = space.groups
    # the residual add ties the stem, the block's last conv and both branch inputs
    assert {"stem", "bn", "block.c2", "block.b3", "left", "right", "block.c1"} <= set(g["stem"].layers)
    # the depthwise conv follows the conv before it
    assert {"block.c1", "block.dw", "block.b2", "block.c2"} <= set(g["block.c1"].layers)
    # concatenated branches are separate groups that both cut head's input
    assert "head" in g["left"].layers and "head" in g["right"].layers
    assert not g["fc"].prunable  # the model output keeps its width
    layers = {layer.name: layer for layer in space.layers}
    dw = layers["block.dw"]
    assert dw.depthwise and dw.in_group == dw.out_group == "block.c1"
    assert layers["stem"].input_hw == (8, 8) and layers["head"].input_hw == (8, 8)
    assert layers["fc1"].rows == 2 and layers["fc1"].in_group is None  # flatten: not 1:1
    assert any("fc1" in n for n in space.notes)


def test_space_of_recsys_and_rnn_have_real_shapes():
    model, x = _case("recsys")
    space = build_space(model, x)
    assert [g.id for g in space.prunable_groups()] == ["mlp.0", "mlp.2"]
    assert not any("user" in g.layers or "item" in g.layers for g in space.prunable_groups())
    assert {layer.name: layer.rows for layer in space.layers}["mlp.0"] == 16

    model, x = _case("lstm2-hn")
    space = build_space(model, x)
    rnn = [layer for layer in space.layers if layer.kind == "lstm"]
    assert [layer.name for layer in rnn] == ["rnn.l0", "rnn.l1"]
    assert rnn[0].rows == 3 and rnn[0].seq_len == 7
    assert rnn[0].in_group == "pre" and rnn[1].in_group == rnn[1].out_group == "rnn"
    assert set(space.groups["rnn"].layers) >= {"rnn", "head"}


@pytest.mark.parametrize("name", list(CASES))
def test_pruned_models_run_and_keep_output_shapes(name):
    model, x = _case(name)
    space = build_space(model, x)
    rng = np.random.default_rng(0)
    scores = {g.id: rng.random(g.size) for g in space.groups.values()}
    widths = {g.id: max(1, g.size // 2 - 1) for g in space.prunable_groups()}
    pruned = apply_widths(model, space, keep_by_importance(space, scores, widths))
    with torch.no_grad():
        assert pruned(*x).shape == model(*x).shape
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    # the original is untouched, and the pruned model's own space has the new widths
    assert build_space(model, x).full_widths() == space.full_widths()
    after = build_space(pruned, x).full_widths()
    assert all(after[g] == w for g, w in widths.items())
    # and it exports to ONNX (what the pipeline needs next)
    import io

    torch.onnx.export(pruned, tuple(x), io.BytesIO(), opset_version=17, dynamo=False)


def _zero_units(model: nn.Module, drop: list[int]) -> nn.Module:
    """The unpruned RNN with the dropped units' incoming weights and biases zeroed: their
    gates see 0, so (LSTM) g = 0 and c, h stay 0; (GRU) n = 0 and h stays 0."""
    import copy

    m = copy.deepcopy(model)
    rnn = m.rnn
    h = rnn.hidden_size
    gates = 4 if isinstance(rnn, nn.LSTM) else 3
    rows = [u + k * h for k in range(gates) for u in drop]
    with torch.no_grad():
        for k in range(rnn.num_layers):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(rnn, f"{name}_l{k}")[rows] = 0
    return m


@pytest.mark.parametrize("name", ["lstm", "gru", "lstm2-hn", "gru2-hn"])
def test_rnn_gate_blocks_are_cut_consistently(name):
    model, x = _case(name)
    space = build_space(model, x)
    h = space.groups["rnn"].size
    drop = [0, 5, 6, 11, h - 1]
    keep = [u for u in range(h) if u not in drop]
    pruned = apply_widths(model, space, {"rnn": keep})
    assert pruned.rnn.hidden_size == len(keep)
    reference = _zero_units(model, drop)
    with torch.no_grad():
        np.testing.assert_allclose(pruned(*x).numpy(), reference(*x).numpy(), rtol=1e-5, atol=1e-6)
        # the kept units' hidden states are the reference's, unit for unit
        out_p, _ = pruned.rnn(torch.tanh(pruned.pre(x[0])))
        out_r, _ = reference.rnn(torch.tanh(reference.pre(x[0])))
        np.testing.assert_allclose(out_p.numpy(), out_r[..., keep].numpy(), rtol=1e-5, atol=1e-6)
        assert float(out_r[..., drop].abs().max()) == 0.0


def test_cutting_the_input_group_of_an_rnn():
    model, x = _case("gru")
    space = build_space(model, x)
    pruned = apply_widths(model, space, {"pre": list(range(0, 12, 2))})
    assert pruned.rnn.input_size == 6 and pruned.pre.out_features == 6
    assert pruned(*x).shape == model(*x).shape


def test_apply_widths_rejects_bad_requests():
    model, x = _case("resdw")
    space = build_space(model, x)
    with pytest.raises(PruneError, match="not prunable"):
        apply_widths(model, space, {"fc": [0, 1]})
    with pytest.raises(PruneError, match="unknown group"):
        apply_widths(model, space, {"nope": [0]})
    with pytest.raises(PruneError, match="must lie in"):
        apply_widths(model, space, {"stem": [0, 99]})


def test_keep_layer_is_honoured():
    model, x = _case("resdw")
    space = build_space(model, x, keep_layers=["block.dw"])
    assert not space.groups["block.c1"].prunable
    assert space.groups["stem"].prunable
    with pytest.raises(PruneError, match="matches no layer"):
        build_space(model, x, keep_layers=["no.such.layer"])


def test_untraceable_model_is_a_model_error():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x).reshape(3, -1)  # 2x4 elements cannot be 3 rows

    with pytest.raises(ModelError):
        build_space(Broken(), [torch.randn(2, 4)])


# -------------------------------------------------------------------------- importance


def _plant(model: nn.Module, space, gid: str, j: int) -> None:
    """Make channel j of group gid useless: every tensor slice it owns becomes zero."""
    from edgeprune.prune.graph import named_module
    from edgeprune.prune.importance import _slices

    with torch.no_grad():
        for cut in space.plans[gid]:
            mod = named_module(model, cut.target)
            idx = [int(i) for i, r in zip(cut.idxs, cut.root_idxs) if r == j]
            for sl in _slices(mod, cut.is_out):
                h = sl.param.shape[sl.dim] // sl.gates
                rows = [i + k * h for k in range(sl.gates) for i in idx]
                sl.param.index_fill_(sl.dim, torch.tensor(rows), 0.0)


def _tiny_data(model: nn.Module, x: list[torch.Tensor], n: int = 96, classes: int = 10) -> ModelData:
    rng = np.random.default_rng(0)
    reps = -(-n // x[0].shape[0])
    inputs = [torch.cat([t] * reps)[:n] for t in x]
    inputs = [t + 0.3 * torch.randn_like(t) if t.is_floating_point() else t for t in inputs]
    arrays = [t.numpy() for t in inputs]
    labels = rng.integers(0, classes, n)
    split = DataSplit(arrays, labels)
    return ModelData(train=split, val=split, task="classification" if classes > 1 else "binary")


@pytest.mark.parametrize("criterion", sorted(IMPORTANCE.names()))
@pytest.mark.parametrize("name,gid,j", [("resdw", "block.c1", 3), ("resdw", "stem", 7), ("lstm", "rnn", 4),
                                        ("recsys", "mlp.0", 9)])
def test_a_planted_useless_channel_is_ranked_last(criterion, name, gid, j):
    model, x = _case(name)
    space = build_space(model, x)
    _plant(model, space, gid, j)
    classes = 1 if name == "recsys" else (5 if "lstm" in name else 10)
    data = _tiny_data(model, x, classes=classes)
    scores = get_importance(criterion)(model, space, data)
    assert set(scores) == {g.id for g in space.prunable_groups()}
    s = scores[gid]
    assert s.shape == (space.groups[gid].size,)
    assert int(np.argmin(s)) == j, (criterion, s)
    assert s[j] < np.partition(s, 1)[1]  # strictly last, not tied


# -------------------------------------------------------------------------- strategies


class MacLatency:
    """Test stand-in for the measured table: latency proportional to MACs, with channel
    counts padded to multiples of ``step`` (a SIMD staircase). Never shipped."""

    def __init__(self, space, ms_per_mmac: float = 1.0, overhead_ms: float = 0.0, step: int = 4) -> None:
        self.space, self.k, self.c, self.step = space, ms_per_mmac / 1e6, overhead_ms, step

    def _pad(self, n: int) -> int:
        return int(math.ceil(n / self.step) * self.step)

    def predict(self, widths) -> float:
        return self.c + self.k * sum(layer.macs(*map(self._pad, layer.dims(widths))) for layer in self.space.layers)

    def candidates(self, group: str) -> list[int]:
        n = self.space.groups[group].size
        return sorted({min(n, s) for s in range(self.step, n + self.step, self.step)})


def _ctx(name: str, budget: float, **kw) -> SearchContext:
    model, x = _case(name)
    space = build_space(model, x)
    lat = MacLatency(space)
    scores = get_importance("l1")(model, space)
    return SearchContext(module=model, space=space, latency=lat, budget_ms=budget * lat.predict(space.full_widths()),
                         scores=scores, progress=False, log=lambda m: None, **kw)


@pytest.mark.parametrize("name", ["resdw", "lstm", "recsys"])
def test_knapsack_meets_the_budget_on_snapped_widths(name):
    ctx = _ctx(name, 0.5)
    res = STRATEGIES.get("knapsack")().search(ctx)
    assert res.predicted_ms <= ctx.budget_ms
    for gid, w in res.widths.items():
        assert w in ctx.candidates(gid)
    # it does not waste budget: no single snapped step up would still fit
    for gid, w in res.widths.items():
        up = [c for c in ctx.candidates(gid) if c > w]
        if up:
            assert ctx.predict({**res.widths, gid: up[0]}) > ctx.budget_ms


def test_knapsack_keeps_more_importance_than_uniform_at_the_same_budget():
    from edgeprune.prune.strategies.base import kept_value

    ctx = _ctx("resdw", 0.45)
    k = STRATEGIES.get("knapsack")().search(ctx)
    u = STRATEGIES.get("uniform")().search(ctx)
    assert u.predicted_ms <= ctx.budget_ms
    value = lambda w: sum(kept_value(ctx.scores[g])[w[g]] for g in w)  # noqa: E731
    assert value(k.widths) >= value(u.widths) - 1e-9


def test_uniform_uses_one_ratio():
    ctx = _ctx("resdw", 0.5)
    res = STRATEGIES.get("uniform")().search(ctx)
    ratios = [res.widths[g.id] / g.size for g in ctx.space.prunable_groups()]
    assert max(ratios) - min(ratios) <= 1.0 / 8 + 1e-9  # rounding of the smallest group only


def test_genetic_is_seeded_and_feasible():
    model, x = _case("recsys")
    data = _tiny_data(model, x, classes=1)
    res = []
    for _ in range(2):
        ctx = _ctx("recsys", 0.5, data=data, eval_split=data.val, eval_batch=16, seed=3,
                   options={"population": 5, "generations": 2, "recovery_steps": 1})
        res.append(STRATEGIES.get("genetic")().search(ctx))
    assert res[0].widths == res[1].widths
    assert res[0].predicted_ms <= ctx.budget_ms


def test_greedy_meets_the_budget_with_short_finetunes():
    model, x = _case("recsys")
    data = _tiny_data(model, x, classes=1)
    ctx = _ctx("recsys", 0.5, data=data, eval_split=data.val, eval_batch=16,
               options={"iterations": 2, "proposal_steps": 1, "step_finetune": 1})
    ctx.rescore = lambda m, sp: get_importance("l1")(m, sp)
    res = STRATEGIES.get("greedy")().search(ctx)
    assert res.predicted_ms <= ctx.budget_ms and res.module is not None
    assert res.module(*x).shape == model(*x).shape


# -------------------------------------------------------------------------------- API


def _loaded(name: str) -> LoadedModel:
    model, x = _case(name)
    data = _tiny_data(model, x, classes=1 if name == "recsys" else 10)
    return LoadedModel(name=name, spec=name, input_names=[f"in{i}" for i in range(len(x))],
                       example_inputs=[t.numpy() for t in x], module=model, data=data)


def test_prune_model_reports_everything():
    from edgeprune.flows.prune import prune_model

    lm = _loaded("resdw")
    space = build_space(lm.module, [torch.from_numpy(a) for a in lm.example_inputs])
    res = prune_model(lm, latency_model=MacLatency(space), budget=0.5, strategy="knapsack", importance="l2",
                      finetune_epochs=1, batch_size=16, progress=False, log=lambda m: None)
    assert res.predicted_latency_ms <= res.budget_ms <= 0.5 * res.original_predicted_ms + 1e-9
    assert res.params_after < res.params_before and res.macs_after < res.macs_before
    assert res.channels["fc"] == [10, 10] and res.channels["stem"][1] == res.widths["stem"]
    assert res.accuracy_before is not None and res.accuracy_after is not None
    extra = res.extra()
    for key in ("predicted_latency_ms", "strategy", "importance", "channels"):
        assert key in extra
    assert lm.module.stem.out_channels == 16  # the caller's model is untouched


def test_unreachable_budget_is_a_clear_error():
    from edgeprune.flows.prune import prune_model

    lm = _loaded("resdw")
    space = build_space(lm.module, [torch.from_numpy(a) for a in lm.example_inputs])
    with pytest.raises(PruneError, match="unreachable"):
        prune_model(lm, latency_model=MacLatency(space, overhead_ms=10.0), budget=0.2, progress=False,
                    log=lambda m: None)


def test_accuracy_gate_keeps_the_result():
    from edgeprune.flows.prune import prune_model
    from edgeprune.prune.options import PruneGateError

    lm = _loaded("recsys")
    space = build_space(lm.module, [torch.from_numpy(a) for a in lm.example_inputs])
    with pytest.raises(PruneGateError) as info:
        prune_model(lm, latency_model=MacLatency(space), budget=0.3, importance="l1", finetune_epochs=0,
                    max_accuracy_drop=0.0, progress=False, log=lambda m: None)
    res = info.value.result
    assert res.module is not None and res.gate_passed is False
    assert "best trade-off" in str(info.value)


# ---------------------------------------------------------------- the real latency table


class ConvNet(nn.Module):
    """Small but compute-bound at batch 1: three 3x3 convs at 32x32 dominate its latency."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 64, 3, padding=1)
        self.c2 = nn.Conv2d(64, 64, 3, padding=1)
        self.c3 = nn.Conv2d(64, 64, 3, padding=1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.c3(torch.relu(self.c2(torch.relu(self.c1(x))))))
        return self.fc(x.mean((2, 3)))


def _time_interleaved(paths, x, rounds=5, min_time=0.15) -> dict[str, float]:
    import time

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    sessions = {k: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    name = next(iter(sessions.values())).get_inputs()[0].name
    med: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            ts, end = [], time.perf_counter() + min_time
            while len(ts) < 10 or time.perf_counter() < end:
                t0 = time.perf_counter()
                s.run(None, {name: x})
                ts.append(time.perf_counter() - t0)
            med[k].append(float(np.median(ts)))
    return {k: float(np.median(v)) * 1e3 for k, v in med.items()}


def test_budget_is_met_by_the_measured_artifact(tmp_path, host_target):
    """Profile a small CNN's latency table with ONNX Runtime (coarse grid), prune it to
    half its latency, and time original and pruned side by side."""
    from edgeprune.compile.export import export_onnx
    from edgeprune.config.devices import LOCAL
    from edgeprune.flows.profile import profile_model
    from edgeprune.latency.grid import GridSettings
    from edgeprune.latency.settings import ProfileSettings
    from edgeprune.latency.store import LUTStore
    from edgeprune.flows.prune import prune_model
    from edgeprune.prune.options import pruned_loaded_model

    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    lm = LoadedModel(name="convnet", spec="convnet", input_names=["x"], example_inputs=[x], module=ConvNet().eval())
    settings = ProfileSettings(grid=GridSettings(density="coarse"), rounds=2, calibration_variants=3,
                               model_rounds=3, chunk_s=20.0)
    prof = profile_model(lm, host_target, LOCAL, "onnxruntime", settings, LUTStore(tmp_path / "lut"),
                         log=lambda m: None)
    res = prune_model(lm, latency_model=prof.predictor, budget=0.5, importance="l1", progress=False,
                      log=lambda m: None)
    assert res.predicted_latency_ms <= res.budget_ms
    paths = {"original": tmp_path / "original.onnx", "pruned": tmp_path / "pruned.onnx"}
    export_onnx(lm, paths["original"])
    export_onnx(pruned_loaded_model(lm, res), paths["pruned"])
    ms = _time_interleaved(paths, x)
    ratio = ms["pruned"] / ms["original"]
    assert ratio <= 0.5 * 1.25, (ms, res.widths)  # within 25 % of the budget on a shared, noisy host
    assert ratio >= 0.2, (ms, res.widths)  # and the budget was not wasted


# --------------------------------------------------------------------------------- CLI


def _cli(*args: str):
    from click.testing import CliRunner

    from edgeprune.cli import cli

    return CliRunner().invoke(cli, list(args))


def test_cli_prune_needs_exactly_one_budget():
    res = _cli("prune", "--model", "zoo:digits-cnn")
    assert res.exit_code == 2 and "--latency-budget" in res.output
    res = _cli("prune", "--model", "zoo:digits-cnn", "--latency-budget", "0.5", "--latency-ms", "1")
    assert res.exit_code == 2 and "not both" in res.output
    res = _cli("prune", "--model", "zoo:digits-cnn", "--latency-budget", "1.5")
    assert res.exit_code == 2
    res = _cli("prune", "--model", "zoo:digits-cnn", "--latency-budget", "0.5", "--out", "pruned.onnx")
    assert res.exit_code == 2 and ".pt2" in res.output


def test_cli_compile_pruning_options_need_a_budget():
    res = _cli("compile", "--model", "zoo:digits-cnn", "--lr", "0.01")
    assert res.exit_code == 2 and "only apply when pruning" in res.output


def test_cli_choices_come_from_the_registries():
    res = _cli("prune", "--help")
    for name in list(STRATEGIES) + list(IMPORTANCE):
        assert name in res.output


@pytest.mark.slow
def test_cli_compile_prunes_and_measures_both_side_by_side(tmp_path):
    """The headline command, end to end (profiles the latency table on first use)."""
    import json

    out = tmp_path / "run"
    res = _cli("compile", "--model", "zoo:digits-cnn", "--target", "host", "--backend", "onnxruntime",
               "--latency-budget", "0.5", "--finetune-epochs", "1", "--out", str(out),
               "--min-runs", "20", "--min-time", "0.3", "--warmup", "3", "--db", "none")
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    o, p = s["original"], s["pruned"]
    for fig in (o, p):
        assert fig["params"] > 0 and fig["macs"] > 0 and fig["accuracy"] is not None
        assert fig["latency_ms"]["median"] > 0 and "p90" in fig["latency_ms"]
    for key in ("predicted_latency_ms", "strategy", "importance", "channels", "measured_ratio", "budget_met"):
        assert key in p, key
    assert p["macs"] < o["macs"] and p["latency_ms"]["median"] < o["latency_ms"]["median"]
    assert (out / "original.onnx").exists() and (out / "pruned.pt").exists()
    loaded = torch.jit.load(str(out / "pruned.pt"))
    assert loaded(torch.zeros(1, 1, 32, 32)).shape == (1, 10)


def test_a_torchscript_model_cannot_be_pruned_and_says_why():
    from edgeprune.flows.prune import prune_model

    lm = _loaded("resdw")
    lm.module = torch.jit.trace(lm.module, tuple(torch.from_numpy(a) for a in lm.example_inputs))
    with pytest.raises(ModelError, match="TorchScript"):
        prune_model(lm, latency_model=None, budget=0.5, progress=False, log=lambda m: None)
