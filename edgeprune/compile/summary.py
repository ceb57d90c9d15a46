"""Typed records of a compile run, and their JSON form (``summary.json``).

The JSON layout is a public contract (CI scripts read it); keep keys stable.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeprune.bench.stats import LatencyStats


@dataclass
class BackendResult:
    """One backend's artifact as measured on the device."""

    name: str
    artifact: str | None
    backend_version: str | None = None
    build_seconds: float | None = None
    latency_ms: LatencyStats | None = None
    runs: int = 0
    verified: bool | None = None
    max_abs_diff: float | None = None
    tolerance: float | None = None
    accuracy: float | None = None
    speedup_vs_reference: float | None = None
    roofline_fraction: float | None = None
    threads: int | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    precision: str = "fp32"  # "int8" for artifacts of the quantized model (--quantize int8)
    times_ms: list[float] = field(default_factory=list, repr=False)
    env: dict[str, Any] = field(default_factory=dict, repr=False)
    round_medians_ms: list[float] = field(default_factory=list)  # one per interleaved round (edgeprune.bench.rounds)

    @property
    def ok(self) -> bool:
        return self.error is None and self.latency_ms is not None

    def to_dict(self, with_times: bool = False) -> dict[str, Any]:
        d = asdict(self)
        d["latency_ms"] = self.latency_ms.to_dict() if self.latency_ms else None
        if not with_times:
            d.pop("times_ms")
        return d


@dataclass
class ModelFigures:
    """Size, cost, quality and speed of one model version (original or pruned)."""

    params: int
    macs: int
    accuracy: float | None
    latency_ms: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {"params": self.params, "macs": self.macs, "accuracy": self.accuracy, "latency_ms": self.latency_ms}
        d.update(self.extra)
        return d


@dataclass
class CompileSummary:
    model: str
    target: str
    device: str
    backend: str | None
    original: ModelFigures
    pruned: ModelFigures | None
    backends: list[BackendResult]
    export: dict[str, Any]
    choice_reason: str = ""
    task: str | None = None
    emulated: bool = False
    env: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    edgeprune_version: str = ""
    created: str = ""
    out_dir: str = ""
    #: how the roofline's peak was computed (Target.peak_description): detected, not assumed
    roofline_peak: str = ""

    def chosen(self) -> BackendResult | None:
        return next((b for b in self.backends if b.name == self.backend), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "target": self.target,
            "device": self.device,
            "backend": self.backend,
            "choice_reason": self.choice_reason,
            "task": self.task,
            "emulated": self.emulated,
            "original": self.original.to_dict(),
            "pruned": self.pruned.to_dict() if self.pruned else None,
            "backends": [b.to_dict() for b in self.backends],
            "export": self.export,
            "env": self.env,
            "roofline_peak": self.roofline_peak,
            "notes": self.notes,
            "edgeprune_version": self.edgeprune_version,
            "created": self.created,
        }

    def write(self, out_dir: Path) -> Path:
        path = out_dir / "summary.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        tmp.replace(path)
        return path
