"""Depth pruning: removable residual blocks, exact drops, block-drop sensitivity, the
flow (alone and before width pruning), export, and the clear errors.

A small SmallResNet (8 channels, 16x16 inputs) and synthetic data keep this file fast;
the last test (``-m slow``: it profiles and waits for the host's device lock) measures
with real ONNX Runtime and times the depth-pruned model end to end beside the original.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.errors import PruneError
from edgeprune.models.archs import SmallResNet
from edgeprune.models.base import DataSplit, LoadedModel, ModelData
from edgeprune.prune.depth import block_sensitivity, drop_blocks, find_blocks, zero_branch
from edgeprune.prune.finetune import recalibrate_bn
from edgeprune.prune.graph import build_space


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread (restored afterwards): tiny convs on a shared host."""
    from edgeprune.models.train import torch_threads

    with torch_threads(1):
        yield


def _net(seed: int = 0, blocks=(2, 2, 1)) -> nn.Module:
    torch.manual_seed(seed)
    m = SmallResNet(width=8, blocks=blocks)
    for mod in m.modules():  # non-trivial BN: a zero-initialised residual branch would hide mistakes
        if isinstance(mod, nn.BatchNorm2d):
            with torch.no_grad():
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    with torch.no_grad():
        m.fc.weight.mul_(20)  # confident logits: a lost block shows in the loss
    return m.eval()


def _x(n: int = 1) -> list[torch.Tensor]:
    return [torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(1))]


def _data(model: nn.Module, n: int = 128) -> ModelData:
    """Inputs labelled by ``model`` itself: its own loss is low and losing a block that
    matters raises it (no accuracy is claimed)."""
    x = torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = model(x).argmax(1).numpy()
    split = DataSplit([x.numpy()], y)
    return ModelData(train=split, val=split, task="classification")


class LayerLatency:
    """Test stand-in for the table-based latency model: each layer costs a per-call
    overhead plus its MACs; ``predict_without`` leaves layers out. Never shipped."""

    def __init__(self, space, per_layer_ms: float = 0.05, ms_per_mmac: float = 1.0) -> None:
        self.space, self.c, self.k = space, per_layer_ms, ms_per_mmac / 1e6

    def _ms(self, widths, gone=()) -> float:
        w = {**self.space.full_widths(), **widths}
        return sum(self.c + self.k * l.macs(*l.dims(w)) for l in self.space.layers if l.name not in gone)

    def predict(self, widths) -> float:
        return self._ms(widths)

    def predict_without(self, layers, widths=None) -> float:
        return self._ms(widths or {}, set(layers))

    def candidates(self, group: str) -> list[int]:
        n = self.space.groups[group].size
        return sorted({min(n, s) for s in range(2, n + 2, 2)})


def _loaded(model: nn.Module, data: ModelData | None) -> LoadedModel:
    return LoadedModel(name="resnet8", spec="resnet8", input_names=["x"], example_inputs=[_x(1)[0].numpy()],
                       module=model, data=data)


def test_finds_the_identity_blocks_and_not_projection_stem_or_head():
    m = _net()
    x = _x()
    blocks, notes = find_blocks(m, x, build_space(m, x))
    assert [b.name for b in blocks] == ["layer1.0", "layer1.1", "layer2.1"]  # layer2.0 / layer3.0 project
    assert blocks[0].layers == ("layer1.0.conv1", "layer1.0.conv2") and not notes
    kept, _ = find_blocks(m, x, build_space(m, x), keep_layers=("layer1.1.conv2",))
    assert "layer1.1" not in [b.name for b in kept]


def test_a_plain_conv_stack_has_no_removable_block():
    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, 8, 3, padding=1)
            self.mid = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())  # same shape, not residual
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(self.mid(torch.relu(self.stem(x))).mean((2, 3)))

    m, x = Plain().eval(), _x()
    blocks, notes = find_blocks(m, x, build_space(m, x))
    assert blocks == [] and "no removable residual block" in notes[0]


def test_dropping_a_block_equals_zeroing_its_branch_exactly():
    m = _net()
    x = _x(4)
    for b in find_blocks(m, x, build_space(m, x))[0]:
        with torch.no_grad():
            dropped, zeroed, full = drop_blocks(m, [b.name])(*x), zero_branch(m, b.name)(*x), m(*x)
        assert torch.equal(dropped, zeroed), b.name
        assert not torch.allclose(dropped, full), b.name  # the block did something
    assert isinstance(drop_blocks(m, ["layer1.0"]).layer1[0], nn.Identity)
    assert isinstance(m.layer1[0], nn.Module) and not isinstance(m.layer1[0], nn.Identity)  # caller's model kept


def test_a_block_whose_branch_is_zeroed_ranks_lowest():
    m = zero_branch(_net(), "layer1.1")
    data = _data(m)
    recalibrate_bn(m, data)  # the same statistics the sensitivity's recalibration will find
    x = _x()
    blocks = find_blocks(m, x, build_space(m, x))[0]
    sens = block_sensitivity(m, blocks, data, data.val)
    assert min(sens, key=sens.get) == "layer1.1", sens
    assert abs(sens["layer1.1"]) < 1e-5
    assert all(v > 1e-3 for k, v in sens.items() if k != "layer1.1"), sens


def test_the_dropped_model_exports_and_runs_in_onnx_runtime(tmp_path):
    import onnxruntime as ort

    from edgeprune.compile.export import export_onnx

    d = drop_blocks(_net(), ["layer1.0", "layer2.1"])
    x = _x(1)[0]
    path = tmp_path / "dropped.onnx"
    export_onnx(_loaded(d, None), path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, d(x).numpy(), rtol=1e-4, atol=1e-5)


def test_depth_without_data_is_a_clear_error():
    from edgeprune.flows.prune import prune_model

    m = _net()
    lm = _loaded(m, None)
    with pytest.raises(PruneError, match="no data") as info:
        prune_model(lm, latency_model=LayerLatency(build_space(m, _x(1))), budget=0.7, depth="only",
                    progress=False, log=lambda s: None)
    assert "--data" in (info.value.hint or "") and info.value.exit_code == PruneError.exit_code
    with pytest.raises(PruneError, match="--depth"):
        prune_model(lm, latency_model=LayerLatency(build_space(m, _x(1))), budget=0.7, depth="deep")


def test_depth_only_meets_the_budget_by_dropping_blocks():
    from edgeprune.flows.prune import prune_model

    m = _net()
    lm = _loaded(m, _data(m))
    lat = LayerLatency(build_space(m, _x(1)))
    res = prune_model(lm, latency_model=lat, budget=0.85, depth="only", finetune_epochs=0, progress=False,
                      log=lambda s: None, accuracy_gate=False)
    step = res.history[0]
    assert step["step"] == "depth" and step["dropped"] and set(step["dropped"]) <= set(step["candidates"])
    assert res.predicted_latency_ms <= res.budget_ms + 1e-9
    assert res.predicted_latency_ms == pytest.approx(
        lat.predict_without({l for b in step["dropped"] for l in (f"{b}.conv1", f"{b}.conv2")}))
    assert any(n.startswith("depth (only): dropped") for n in res.notes)
    for b in step["dropped"]:  # vanished layers are not in the channel table, and nothing crashed on them
        assert f"{b}.conv1" not in res.channels
    assert res.channels["conv1"] == [8, 8] and res.macs_after < res.macs_before
    assert res.module(_x(1)[0]).shape == (1, 10)
    with pytest.raises(PruneError, match="unreachable by depth alone"):
        prune_model(lm, latency_model=lat, budget=0.3, depth="only", progress=False, log=lambda s: None)


def test_depth_auto_then_width_finishes_the_budget():
    from edgeprune.flows.depth import prune_depth
    from edgeprune.flows.prune import default_latency_model, prune_model
    from edgeprune.prune.options import PruneOptions

    m = zero_branch(_net(), "layer1.1")  # a useless block: cheaper than any channel
    data = _data(m)
    recalibrate_bn(m, data)
    lm = _loaded(m, data)
    lat = LayerLatency(build_space(m, _x(1)))
    opts = PruneOptions(budget=0.35, depth="auto", finetune_epochs=0, importance="l1", accuracy_gate=False)
    res = prune_depth(lm, None, None, opts, width_stage=prune_model, latency_of=default_latency_model,
                      latency_model=lat, progress=False, log=lambda s: None,
                      latency_for=lambda d: LayerLatency(build_space(d.module, [torch.from_numpy(d.example_inputs[0])])))
    depth = res.history[0]
    assert depth["step"] == "depth" and depth["width_loss_per_ms"] is not None and math.isfinite(
        depth["width_loss_per_ms"])
    for d in depth["drops"]:  # every block dropped was cheaper than channels
        assert d["loss_per_ms"] <= depth["width_loss_per_ms"] + 1e-12
    assert "layer1.1" in depth["dropped"] and isinstance(res.module.layer1[1], nn.Identity)
    assert len(res.history) >= 2 and res.strategy == opts.strategy  # width pruning ran on what remained
    assert res.widths and res.macs_after < res.macs_before
    assert res.predicted_latency_ms <= res.budget_ms * 1.001
    assert res.module(_x(1)[0]).shape == (1, 10)


@pytest.mark.slow  # profiles a table and times whole models: it waits for the host's device lock
def test_depth_only_is_measured_end_to_end_with_onnx_runtime(tmp_path, host_target):
    """The real latency model (device model off: a small measured table) predicts the
    saving; the depth-pruned model is timed end to end beside the original."""
    from edgeprune.config.devices import LOCAL
    from edgeprune.flows.prune import prune_model
    from edgeprune.latency.grid import GridSettings
    from edgeprune.latency.settings import ProfileSettings
    from edgeprune.latency.store import LUTStore

    m = _net()
    lm = _loaded(m, _data(m, 64))
    settings = ProfileSettings(grid=GridSettings(lanes=host_target.fp32_lanes(), density="coarse"), rounds=1,
                               warmup=1, min_runs=3, min_time_s=0.003, model_rounds=2, model_min_runs=3,
                               model_min_time_s=0.02, calibration_variants=2, gate=False)
    res = prune_model(lm, host_target, LOCAL, budget=0.9, depth="only", finetune_epochs=0, tables="full",
                      profile=settings, store=LUTStore(tmp_path / "lut"), progress=False, log=lambda s: None,
                      accuracy_gate=False, allow_budget_miss=True)
    check = res.budget_check
    assert check is not None and check["depth"]["attempts"], res.notes  # measured, not only predicted
    assert 0 < check["measured_fraction"] < 1.5
    assert res.history[0]["dropped"] and res.latency_model == "AdaptiveLatency"


def test_cli_depth_without_data_fails_before_any_work(tmp_path):
    from click.testing import CliRunner

    from edgeprune.cli import cli

    res = CliRunner().invoke(cli, ["prune", "--model", "tests.lut_models:tiny_cnn", "--latency-budget", "0.5",
                                   "--depth", "only", "--out", str(tmp_path / "p.pt")])
    assert res.exit_code == PruneError.exit_code, res.output
    assert "no data" in res.output and "--data" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["compile", "--model", "tests.lut_models:tiny_cnn", "--depth", "auto"])
    assert res.exit_code == 2 and "--depth" in res.output
