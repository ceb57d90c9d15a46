"""The pruning stage of ``edgeprune compile``.

``compile_model`` calls :meth:`PruneStage.run` before exporting: the model is pruned
(and fine-tuned) against the target's latency table, and the rest of the pipeline
exports, builds, benchmarks and verifies the *pruned* model. The original model is
exported and built with the same backends into ``bundle/original/`` and its jobs go
into the same bundle run (interleaved with the pruned ones), so both are measured side
by side on the device, with the same runner, threads and settings.

An accuracy-gate failure does not stop the pipeline: the pruned model is still built
and measured, the summary records the failure, and the CLI exits non-zero afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeprune.models.base import LoadedModel
from edgeprune.prune.api import PruneGateError, PruneOptions, PruneResult, prune_model, pruned_loaded_model

if TYPE_CHECKING:
    from edgeprune.bench.bundle import BenchJob, JobResult
    from edgeprune.compile.summary import ModelFigures
    from edgeprune.config.devices import Device
    from edgeprune.config.targets import Target

Log = Callable[[str], None]
ORIGINAL_PREFIX = "original:"


@dataclass
class PruneStage:
    original: LoadedModel
    pruned: LoadedModel
    result: PruneResult
    original_onnx: Path
    original_params: int
    original_macs: int
    original_accuracy: float | None
    gate_error: str | None = None
    saved: dict[str, str] = field(default_factory=dict)
    build_errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def run(cls, model: LoadedModel, target: "Target", device: "Device", out_dir: Path, options: PruneOptions,
            log: Log) -> "PruneStage":
        """Export the original (``original.onnx``), prune, and save ``pruned.pt`` (TorchScript)."""
        from edgeprune.compile.analysis import graph_cost
        from edgeprune.compile.export import export_onnx
        from edgeprune.compile.pipeline import reference_accuracy
        from edgeprune.prune.save import save_pruned

        log(f"exporting the original {model.name} to ONNX ...")
        exp = export_onnx(model, out_dir / "original.onnx")
        cost = graph_cost(exp.path)
        gate_error = None
        try:
            result = prune_model(model, target, device, options, log=log)
        except PruneGateError as exc:
            result, gate_error = exc.result, str(exc)
            log(f"warning: {exc} — building and measuring it anyway")
        pruned = pruned_loaded_model(model, result)
        stage = cls(original=model, pruned=pruned, result=result, original_onnx=exp.path,
                    original_params=cost.params, original_macs=cost.macs, original_accuracy=reference_accuracy(model),
                    gate_error=gate_error)
        try:
            stage.saved = save_pruned(model, result, out_dir / "pruned.pt", onnx=False).to_dict()
        except Exception as exc:  # the ONNX path below is what gets deployed; a torch file is a bonus
            log(f"note: could not save pruned.pt: {exc}")
        return stage

    def original_jobs(self, bundle_dir: Path, target: "Target", names: list[str], threads: int, template: Mapping,
                      parity_atol: float, parity_rtol: float, log: Log) -> list["BenchJob"]:
        """Build the original model with every backend into ``bundle/original/`` and
        return its jobs (ids ``original:<backend>``), with the pruned jobs' settings."""
        from edgeprune.bench.bundle import BenchJob
        from edgeprune.bench.io import save_arrays
        from edgeprune.compile.pipeline import _PREPARE_LOCK, build_artifacts, reference_outputs

        with _PREPARE_LOCK:
            arts, self.build_errors = build_artifacts(self.original_onnx, target, names, bundle_dir / "original",
                                                      threads, log)
        expected = reference_outputs(self.original, self.original_onnx)
        save_arrays(bundle_dir / "data" / "expected-original.npz", "out", expected)
        scale = max(float(np.max(np.abs(e))) if e.size else 0.0 for e in expected)
        jobs = []
        for name, art in arts.items():
            jobs.append(BenchJob(**{**template, "id": ORIGINAL_PREFIX + name, "backend": name,
                                    "artifact": str(art.path.relative_to(bundle_dir)),
                                    "expected": "data/expected-original.npz",
                                    "tolerance": parity_atol + parity_rtol * scale, "options": art.options}))
        return jobs

    @staticmethod
    def interleave(pruned_jobs: list["BenchJob"], original_jobs: list["BenchJob"]) -> list["BenchJob"]:
        """original:X right before X, so each pair is measured close together in time."""
        by_backend = {j.backend: j for j in original_jobs}
        out: list = []
        for j in pruned_jobs:
            if j.backend in by_backend:
                out.append(by_backend.pop(j.backend))
            out.append(j)
        return out + list(by_backend.values())

    def figures(self, deployed: "ModelFigures", results: Mapping[str, "JobResult"], chosen: str | None
                ) -> tuple["ModelFigures", "ModelFigures", list[str]]:
        """(original, pruned, notes) for the summary. ``deployed`` holds the figures the
        pipeline computed for the model it built (the pruned one)."""
        from edgeprune.bench.stats import LatencyStats
        from edgeprune.compile.summary import ModelFigures

        r = self.result
        original = ModelFigures(params=self.original_params, macs=self.original_macs, accuracy=self.original_accuracy)
        extra: dict[str, Any] = dict(r.extra())
        extra["accuracy_pytorch"] = deployed.accuracy
        pruned = ModelFigures(params=deployed.params, macs=deployed.macs, accuracy=deployed.accuracy,
                              latency_ms=deployed.latency_ms, extra=extra)
        notes: list[str] = []
        jr = results.get(ORIGINAL_PREFIX + chosen) if chosen else None
        if jr is not None and jr.ok and jr.times_ms:
            original.latency_ms = LatencyStats.from_times(jr.times_ms).to_dict()
            if jr.accuracy is not None:
                original.accuracy = jr.accuracy
                original.extra["accuracy_pytorch"] = self.original_accuracy
        elif chosen:
            why = (jr.error if jr is not None else None) or self.build_errors.get(chosen) or "not run"
            notes.append(f"original model not measured with {chosen}: {why}")
        pj = results.get(chosen) if chosen else None
        if pj is not None and pj.ok and pj.accuracy is not None:
            pruned.accuracy = pj.accuracy  # the compiled artifact's accuracy is the result
        o_ms = (original.latency_ms or {}).get("median")
        p_ms = (pruned.latency_ms or {}).get("median")
        if o_ms and p_ms:
            ratio = p_ms / o_ms
            budget_ratio = r.budget_ms / r.original_predicted_ms
            extra["measured_ratio"] = round(ratio, 4)
            extra["budget_ratio"] = round(budget_ratio, 4)
            extra["predicted_ratio"] = round(r.predicted_latency_ms / r.original_predicted_ms, 4)
            # a fraction is judged against the original as measured now, side by side;
            # milliseconds against the clock (5 % tolerance for measurement noise)
            met = ratio <= budget_ratio * 1.05 if r.budget_fraction is not None else p_ms <= r.budget_ms * 1.05
            extra["budget_met"] = bool(met)
            notes.append(f"pruned ({r.strategy}/{r.importance}): measured {p_ms:.3f} ms vs original {o_ms:.3f} ms "
                         f"({ratio:.2f}x; budget {budget_ratio:.2f}x, predicted {extra['predicted_ratio']:.2f}x)")
        if self.gate_error:
            notes.append(self.gate_error)
        if self.saved:
            notes.append(f"pruned torch model: {self.saved['model']} (torch.jit.load)")
        return original, pruned, notes
