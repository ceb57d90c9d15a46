"""Defaults that never silently ruin a model (issue 17, item 7; BatchNorm momentum, item 1).

* the default accuracy gate: with validation data and no ``--max-accuracy-drop``, a drop
  beyond :data:`DEFAULT_MAX_ACCURACY_DROP` fails with the result kept; ``none`` turns it off;
* BatchNorm with a tiny momentum (0.01, as torchvision's MobileNetV3 sets it): the
  statistics are re-estimated after fine-tuning, else eval accuracy collapses;
* a sliver cut (a group left at a few channels) is weighed against its measured accuracy.

Tiny CNNs trained for a few seconds on the real digits at 8x8 keep this file fast; the
latency model is MACs (latency does not matter here, the choice under a budget does).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.errors import PruneError
from edgeprune.models.base import LoadedModel
from edgeprune.models.data import digits_images
from edgeprune.models.train import TrainConfig, evaluate, train
from edgeprune.prune.finetune import FinetuneConfig, finetune, recalibrate_bn
from edgeprune.prune.graph import apply_widths, build_space, keep_by_importance
from edgeprune.prune.options import DEFAULT_MAX_ACCURACY_DROP, PruneGateError, PruneOptions
from edgeprune.prune.strategies import STRATEGIES, SearchContext


class TinyCNN(nn.Module):
    """conv -> BN -> hardswish -> conv -> BN -> hardswish -> pool -> linear (8x8 digits)."""

    def __init__(self, momentum: float = 0.1, c1: int = 16, c2: int = 32) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, c1, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(c1, momentum=momentum)
        self.c2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(c2, momentum=momentum)
        self.fc = nn.Linear(c2, 10)

    def forward(self, x):
        x = nn.functional.hardswish(self.b1(self.c1(x)))
        x = nn.functional.hardswish(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


class MacLatency:
    """Latency proportional to MACs, every width a candidate: a stand-in for a latency
    table where only the choice under a budget matters. Never shipped."""

    def __init__(self, space, step: int = 1) -> None:
        self.space, self.step = space, step

    def predict(self, widths) -> float:
        return 1e-6 * sum(layer.macs(*layer.dims(widths)) for layer in self.space.layers)

    def candidates(self, group: str) -> list[int]:
        return list(range(self.step, self.space.groups[group].size + 1, self.step))


@pytest.fixture(scope="module")
def digits():
    return digits_images(8)


@pytest.fixture(scope="module")
def trained(digits):
    """A TinyCNN trained on digits, statistics calibrated, then given momentum 0.01: what a
    user's well-trained MobileNetV3 looks like to the pruner."""
    torch.manual_seed(0)
    m = TinyCNN()
    train(m, digits, TrainConfig(epochs=6, lr=1e-2, batch_size=64, seed=0), progress=False, log=lambda s: None)
    recalibrate_bn(m, digits)
    for bn in (m.b1, m.b2):
        bn.momentum = 0.01
    assert evaluate(m, digits.val, digits.task) > 90
    return m


def _loaded(module: nn.Module, data) -> LoadedModel:
    return LoadedModel(name="tiny", spec="tiny", input_names=["x"], example_inputs=[np.zeros((1, 1, 8, 8), np.float32)],
                       module=module, data=data)


def _space(module: nn.Module):
    return build_space(module, [torch.zeros(1, 1, 8, 8)])


# ---------------------------------------------------------------- the default accuracy gate
def test_the_default_limit_applies_only_with_validation_data_and_can_be_turned_off():
    opts = PruneOptions(budget=0.5)
    assert opts.accuracy_limit(True) == DEFAULT_MAX_ACCURACY_DROP == 2.0
    assert opts.accuracy_limit(False) is None  # nothing to measure: no gate, no error
    assert PruneOptions(budget=0.5, max_accuracy_drop=0.5).accuracy_limit(True) == 0.5
    assert PruneOptions(budget=0.5, accuracy_gate=False).accuracy_limit(True) is None
    with pytest.raises(PruneError, match="contradict"):
        PruneOptions(budget=0.5, max_accuracy_drop=1.0, accuracy_gate=False).validate()


def test_a_collapse_under_the_default_limit_fails_and_keeps_the_result(trained, digits):
    from edgeprune.flows.prune import prune_model

    lm = _loaded(trained, digits)
    lat = MacLatency(_space(trained))
    kw = dict(latency_model=lat, budget=0.08, importance="l1", finetune_epochs=0, progress=False,
              log=lambda m: None)
    with pytest.raises(PruneGateError) as info:
        prune_model(lm, **kw)
    res = info.value.result
    assert res.module is not None and res.gate_passed is False and res.accuracy_limit_default
    assert res.accuracy_drop > DEFAULT_MAX_ACCURACY_DROP
    gate = res.extra()["accuracy_gate"]
    assert gate["max_drop"] == DEFAULT_MAX_ACCURACY_DROP and gate["default"] is True and gate["passed"] is False
    assert "default limit of 2" in str(info.value) and "none for no limit" in str(info.value)
    # the user's own limit replaces the default; "none" turns the gate off
    assert prune_model(lm, max_accuracy_drop=100.0, **kw).gate_passed is True
    off = prune_model(lm, accuracy_gate=False, **kw)
    assert off.gate_passed is None and off.extra()["accuracy_gate"] is None


def test_cli_reads_none_as_no_gate_and_states_the_default_in_help():
    from click.testing import CliRunner

    from edgeprune.cli import cli
    from edgeprune.cli.common import NONE, FiniteFloatOrNone
    from edgeprune.cli.prune_cmd import PRUNE_KEYS, _prune_settings, prune_cmd

    t = FiniteFloatOrNone(0)
    assert t.convert("none", None, None) == NONE and t.convert("None", None, None) == NONE
    assert t.convert("1.5", None, None) == 1.5

    def parsed(*args: str):
        ctx = prune_cmd.make_context("prune", ["-m", "zoo:digits-cnn", "--latency-budget", "0.5", *args])
        return _prune_settings({k: ctx.params[k] for k in PRUNE_KEYS}, None, True)

    off = parsed("--max-accuracy-drop", "none")
    assert off.accuracy_gate is False and off.max_accuracy_drop is None and off.accuracy_limit(True) is None
    unset = parsed()
    assert unset.accuracy_gate is True and unset.accuracy_limit(True) == DEFAULT_MAX_ACCURACY_DROP
    assert parsed("--max-accuracy-drop", "0.5").accuracy_limit(True) == 0.5
    for verb in ("prune", "compile"):
        out = CliRunner().invoke(cli, [verb, "--help"], terminal_width=200).output
        assert f"Default: {DEFAULT_MAX_ACCURACY_DROP:g} when the model has validation data" in " ".join(out.split())


def test_compile_fails_on_the_default_gate_after_writing_the_summary():
    """compile keeps going on a gate failure (the pruned model is built and measured) and
    exits 8 at the end: ``_finish_prune`` reads the gate from summary.json's pruned extra."""
    from types import SimpleNamespace

    from edgeprune.cli.compile_cmd import _finish_prune

    gate = {"max_drop": 2.0, "drop": 20.0, "passed": False, "default": True}
    summary = SimpleNamespace(pruned=SimpleNamespace(extra={"accuracy_gate": gate}), out_dir="out/x")
    with pytest.raises(PruneError) as info:
        _finish_prune(summary, False)
    assert info.value.exit_code == 8 and "default" in str(info.value) and "none" in (info.value.hint or "")


# ---------------------------------------------------------------- BatchNorm with tiny momentum
def test_statistics_are_recalibrated_after_fine_tuning_with_tiny_momentum(trained, digits):
    """Cut, recalibrate (as the flow does), fine-tune briefly at a high learning rate: the
    weights move, momentum-0.01 statistics do not follow, and eval accuracy falls; with
    the post-fine-tune recalibration it does not."""
    space = _space(trained)
    keep = keep_by_importance(space, {g.id: np.arange(g.size, dtype=float) for g in space.prunable_groups()},
                              {"c1": 8, "c2": 16})
    cut = apply_widths(trained, space, keep)
    recalibrate_bn(cut, digits)
    acc = {}
    for recal in (False, True):
        m = copy.deepcopy(cut)
        cfg = FinetuneConfig(epochs=1, lr=1e-2, batch_size=32, seed=0, recalibrate_bn=recal)
        acc[recal] = finetune(m, digits, cfg, progress=False, log=lambda s: None)
        assert [b.momentum for b in (m.b1, m.b2)] == [0.01, 0.01]  # the model's own momentum is back
        assert acc[recal] == pytest.approx(evaluate(m, digits.val, digits.task))
    assert acc[True] > 70, acc  # measured: 80.6 % with it, 53.3 % without
    assert acc[True] - acc[False] > 10, acc


def test_recalibration_restores_momentum_even_when_the_forward_fails(digits):
    class Broken(TinyCNN):
        def forward(self, x):
            super().forward(x)
            raise RuntimeError("boom")

    m = Broken(momentum=3e-4)
    with pytest.raises(RuntimeError):
        recalibrate_bn(m, digits)
    assert m.b1.momentum == m.b2.momentum == 3e-4 and not m.training


# ---------------------------------------------------------------- slivers
def _sliver_ctx(trained, digits, slivers: float | None, step: int = 1, budget: float = 0.12):
    """Scores that lie: c1's channels look worthless, so the knapsack cuts c1 to a sliver
    (it is the input of every later layer: on a trained net that is costly)."""
    from edgeprune.prune.finetune import subset

    space = _space(trained)
    scores = {"c1": np.r_[np.full(4, 2e-3), np.full(12, 1e-3)], "c2": np.linspace(1.0, 2.0, 32)}
    lat = MacLatency(space, step)
    opts = {} if slivers is None else {"slivers": slivers}
    return SearchContext(module=trained, space=space, latency=lat, budget_ms=budget * lat.predict(space.full_widths()),
                         scores=scores, data=digits, eval_split=subset(digits.val, 256), progress=False,
                         log=lambda m: None, options=opts)


def test_a_costly_sliver_is_given_width_back(trained, digits):
    blind = STRATEGIES.get("knapsack")().search(_sliver_ctx(trained, digits, slivers=0))
    assert blind.widths["c1"] < 0.25 * 16  # the importance alone leaves a sliver
    ctx = _sliver_ctx(trained, digits, slivers=None)
    res = STRATEGIES.get("knapsack")().search(ctx)
    assert res.widths["c1"] >= math.ceil(0.25 * 16)
    assert res.predicted_ms <= ctx.budget_ms  # paid for elsewhere
    assert any("c1" in n and "cost accuracy" in n for n in res.notes)
    acc = {}
    for name, w in (("blind", blind.widths), ("weighed", res.widths)):
        m = ctx.cut(w)
        recalibrate_bn(m, digits)
        acc[name] = evaluate(m, digits.val, digits.task)
    assert acc["weighed"] > acc["blind"] + 1, acc


def test_a_sliver_that_costs_nothing_stays(digits):
    """The rule is a measurement, not a floor: c1's last 12 channels are dead (zero
    filters), so cutting c1 to 4 loses nothing and is kept."""
    torch.manual_seed(1)
    m = TinyCNN(c1=16)
    with torch.no_grad():
        m.c1.weight[4:] = 0
    hook = m.c1.weight.register_hook(lambda g: torch.cat([g[:4], torch.zeros_like(g[4:])]))
    train(m, digits, TrainConfig(epochs=6, lr=1e-2, batch_size=64, seed=0, weight_decay=0.0), progress=False,
          log=lambda s: None)
    hook.remove()
    recalibrate_bn(m, digits)
    assert float(m.c1.weight[4:].detach().abs().sum()) == 0.0
    ctx = _sliver_ctx(m, digits, slivers=0.5, step=4, budget=0.3)  # 4/16 is a sliver at 0.5; 8 is the trial
    res = STRATEGIES.get("knapsack")().search(ctx)
    assert res.evaluations >= 2  # the sliver was measured ...
    assert res.widths["c1"] == 4 and not any("cost accuracy" in n for n in res.notes)  # ... and kept


# ---------------------------------------------------------------- nothing to prune
@pytest.mark.parametrize("module,keep,why", [
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), (), "produces the output"),
    (nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 10)), ("0",), "--keep-layer"),
], ids=["only-the-output-layer", "kept"])
def test_no_prunable_groups_says_why_in_one_line_and_a_hint(module, keep, why):
    from edgeprune.flows.prune import prune_model

    lm = LoadedModel(name="m", spec="m", input_names=["x"], example_inputs=[np.zeros((1, 1, 8, 8), np.float32)],
                     module=module)
    with pytest.raises(PruneError) as info:
        prune_model(lm, latency_model=MacLatency(_space(module)), budget=0.5, keep_layers=keep, progress=False,
                    log=lambda m: None)
    err = info.value
    assert "has no prunable channel groups" in err.message and why in err.message and "\n" not in err.message
    assert err.hint and err.exit_code == 8
    if keep:
        assert "'0'" in err.message and "fewer --keep-layer" in err.hint
