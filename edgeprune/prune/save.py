"""Writing a pruned model: a loadable torch file, its ONNX export and a JSON record."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.errors import ModelError
from edgeprune.models.base import LoadedModel
from edgeprune.prune.options import PruneResult, pruned_loaded_model


@dataclass
class SavedPruned:
    model: Path  # TorchScript (.pt / .ts / .pth) or torch.export ExportedProgram (.pt2)
    onnx: Path
    record: Path  # prune result as JSON
    format: str

    def how_to_load(self) -> list[str]:
        if self.format == "torch.export":
            py = f"torch.export.load('{self.model}').module()"
            cli = f"edgeprune compile --model {self.model}"
        else:
            py = f"torch.jit.load('{self.model}')"
            cli = f"edgeprune compile --model {self.onnx}"
        return [f"Python: {py}", f"CLI:    {cli} --target <target>"]

    def to_dict(self) -> dict[str, Any]:
        return {"model": str(self.model), "onnx": str(self.onnx), "record": str(self.record), "format": self.format}


def save_pruned(model: LoadedModel, result: PruneResult, out: Path, onnx: bool = True) -> SavedPruned:
    """Write ``out`` (TorchScript, or an ExportedProgram when ``out`` ends in ``.pt2``),
    ``out`` with suffix ``.onnx`` (checked, parity-tested export) and ``.json`` (the
    prune result). The torch file is traced at the deployment batch and checked against
    the pruned module before it is kept."""
    import torch

    from edgeprune.compile.export import export_onnx

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    module = result.module.eval()
    args = tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in model.example_inputs)
    tmp = out.with_name(out.name + ".tmp")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if out.suffix == ".pt2":
                fmt = "torch.export"
                torch.export.save(torch.export.export(module, args), tmp)
                loaded = torch.export.load(tmp).module()
            else:
                fmt = "TorchScript"
                torch.jit.save(torch.jit.trace(module, args), str(tmp))
                loaded = torch.jit.load(str(tmp))
            ref, got = module(*args), loaded(*args)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"cannot save the pruned model as {out.suffix or 'TorchScript'}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}", "try --out pruned.pt2 (torch.export)") from exc
    if not torch.allclose(ref, got, atol=1e-5, rtol=1e-4):
        tmp.unlink(missing_ok=True)
        raise ModelError(f"the saved {fmt} model does not reproduce the pruned module", "try the other format (.pt / .pt2)")
    tmp.replace(out)
    onnx_path = out.with_suffix(".onnx")
    if onnx:
        export_onnx(pruned_loaded_model(model, result), onnx_path)
    record = out.with_suffix(".json")
    record.write_text(json.dumps({"model": model.spec, **result.to_dict()}, indent=2, default=str))
    return SavedPruned(model=out, onnx=onnx_path, record=record, format=fmt)
