"""The user-style networks of benchmarks/time_to_first_prune.py (benchmarks/user_models.py)
load the way a user's model does (``module:factory``), export to ONNX with output parity,
and trace into a pruning space that can be cut.

What the tracer can prune today is recorded, not asserted beyond "something is": the
squeeze-excitation blocks of the MobileNetV3-like net are prunable (the gate ties the
expanded channels), RegNet's grouped convs lose whole conv groups (their groups' ``unit``
is the group width, 16; issue 17). The test prints that split, so a change of it shows in
the log.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # ``benchmarks`` is a folder of scripts next to the package, not installed
    sys.path.insert(0, str(REPO))

from benchmarks.user_models import USER_MODELS  # noqa: E402
from edgeprune.compile.export import export_onnx  # noqa: E402
from edgeprune.models.spec import load_model  # noqa: E402
from edgeprune.prune.graph import apply_widths, build_space, keep_by_importance  # noqa: E402


@pytest.mark.parametrize("name", list(USER_MODELS))
def test_user_model_loads_exports_and_traces(name, tmp_path):
    spec, shape = USER_MODELS[name]
    model = load_model(spec, input_shape=[shape], log=lambda m: None)
    assert model.module is not None and model.input_shapes[0] == shape
    x = [torch.from_numpy(a) for a in model.example_inputs]
    with torch.no_grad():
        y = model.module(*x)
    assert y.shape == (1, 100) and torch.isfinite(y).all()
    assert float(y.std()) > 1e-3  # BN calibrated: the activations did not vanish

    res = export_onnx(model, tmp_path / f"{name}.onnx")
    assert res.parity_ok, f"ONNX Runtime differs from torch by {res.parity_max_abs_diff}"

    space = build_space(model.module, x)
    prunable = [g.id for g in space.prunable_groups()]
    whole = [g.id for g in space.groups.values() if not g.prunable]
    print(f"\n{name}: {len(prunable)} prunable groups, {len(whole)} left whole; notes: {space.notes[:3]}")
    assert prunable
    convs = {n for n, m in model.module.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert convs <= {layer.name for layer in space.layers}  # every conv is a layer the latency model sees
    if name == "mobilenetv3-like":  # SE reduce convs and the expanded channels they gate are prunable
        assert any(g.endswith(".fc1") for g in prunable)
        gated = [g for g in space.prunable_groups() if any(m.endswith(".fc2") for m in g.layers)]
        assert gated
    if name == "regnet-like":  # the grouped convs' groups are prunable in whole conv groups
        assert any(g.unit == 16 for g in space.prunable_groups())

    # cut every prunable group to about half: the net still runs and keeps its output shape
    rng = np.random.default_rng(0)
    scores = {g.id: rng.random(g.size) for g in space.groups.values()}
    widths = {g.id: max(1, g.size // 2) for g in space.prunable_groups()}
    pruned = apply_widths(model.module, space, keep_by_importance(space, scores, widths))
    with torch.no_grad():
        assert pruned(*x).shape == y.shape
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.module.parameters())
