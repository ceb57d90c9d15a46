"""Whole models as jobs: the model's prune space, pruned variants of it, and random widths.

The profiler times the model end to end at full width and at a few pruned calibration
widths (the predictor's remainder), and validation times random pruned variants; both
need the same three things, kept here.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeprune.errors import ModelError
from edgeprune.latency.layer_bundle import Job
from edgeprune.prune.space import PruneSpace

if TYPE_CHECKING:
    from edgeprune.models.base import LoadedModel


def space_of(model: "LoadedModel", keep_layers: tuple[str, ...] = ()) -> PruneSpace:
    """The prune space of a torch model (an ONNX-only model cannot be pruned)."""
    if model.module is None:
        raise ModelError(
            f"{model.spec} is an ONNX model: its layers cannot be re-built at other widths",
            "profile needs a torch model: zoo:NAME, module:factory + --weights, TorchScript or torch.export",
        )
    import torch

    from edgeprune.prune.graph import build_space

    return build_space(model.module, [torch.from_numpy(np.ascontiguousarray(x)) for x in model.example_inputs],
                       keep_layers=keep_layers)


def model_fingerprint(model: "LoadedModel", space: PruneSpace) -> str:
    """Architecture identity: prune space, input shapes and the module structure (the key
    of the model's end-to-end measurements in a table file)."""
    d = {"space": space.to_dict(), "inputs": [list(s) for s in model.input_shapes],
         "arch": repr(model.module) if model.module is not None else model.spec}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _keep_first(space: PruneSpace, widths: Mapping[str, int]) -> dict[str, list[int]]:
    return {g: list(range(int(w))) for g, w in widths.items() if g in space.groups and int(w) < space.groups[g].size}


def variant_job(model: "LoadedModel", space: PruneSpace, widths: Mapping[str, int] | None, key: str) -> Job:
    """A job timing ``model`` pruned to ``widths`` (None = the full model), end to end."""
    from edgeprune.compile.export import export_onnx
    from edgeprune.models.base import LoadedModel as LM

    def write(path: Path) -> None:
        module = model.module
        if widths:
            from edgeprune.prune.graph import apply_widths

            module = apply_widths(model.module, space, _keep_first(space, widths))
        lm = LM(name=f"{model.name}-variant", spec=model.spec, input_names=model.input_names,
                example_inputs=model.example_inputs, output_names=model.output_names, module=module)
        export_onnx(lm, path)

    macs = space.macs(widths or space.full_widths())
    return Job(key=key, write_onnx=write, inputs=lambda: list(model.example_inputs), input_key="model", macs=macs)


def random_widths(space: PruneSpace, rng: random.Random, candidates: Callable[[str], list[int]] | None,
                  low: float = 0.3) -> dict[str, int]:
    """A random pruned configuration: a global keep ratio in [low, 1], jittered per group;
    snapped to a multiple of the group's ``unit`` (whole heads / conv groups), and to the
    group's candidates when given (what a latency-aware pruner produces)."""
    from edgeprune.latency.grid import snap

    base = rng.uniform(low, 1.0)
    out: dict[str, int] = {}
    for g in space.prunable_groups():
        r = min(1.0, max(0.05, base * rng.uniform(0.75, 1.25)))
        w = max(max(1, g.min_size), min(g.size, int(round(r * g.size))))
        if g.unit > 1:
            w = snap(w, g.unit, max(g.min_size, g.unit), g.size)
        if candidates is not None:
            cands = candidates(g.id)
            w = min(cands, key=lambda c: (abs(c - w), -c))
        out[g.id] = int(w)
    return out
