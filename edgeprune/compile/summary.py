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
    precision: str = "fp32"  # what the runner ran: "int8" (--quantize int8), "bf16" / "fp16" (--precision)
    times_ms: list[float] = field(default_factory=list, repr=False)
    env: dict[str, Any] = field(default_factory=dict, repr=False)
    round_medians_ms: list[float] = field(default_factory=list)  # one per interleaved round (edgeprune.bench.rounds)
    job_id: str | None = None  # its job in the bundle: how a killed run's results.jsonl is matched back
    #: its outputs *are* the reference (ONNX Runtime on an ONNX-only model): parity 0 by
    #: construction, so it is labelled "reference", never shown as a passed check
    parity_reference: bool = False
    #: "<tag>: what is wrong and what fixes it" (edgeprune.compile.hints), shown beside the numbers
    hints: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and self.latency_ms is not None

    def parity_label(self) -> str | None:
        """``reference`` / ``pass`` / ``fail`` (None: not checked): summary.json's ``parity``."""
        if self.verified is None:
            return None
        if self.parity_reference and self.verified:
            return "reference"
        return "pass" if self.verified else "fail"

    def to_dict(self, with_times: bool = False) -> dict[str, Any]:
        d = asdict(self)
        d["latency_ms"] = self.latency_ms.to_dict() if self.latency_ms else None
        d["parity"] = self.parity_label()
        if not with_times:
            d.pop("times_ms")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BackendResult":
        """The inverse of :meth:`to_dict` (unknown keys of a newer file are ignored)."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        lat = known.get("latency_ms")
        known["latency_ms"] = LatencyStats(**lat) if isinstance(lat, dict) else None
        return cls(**known)


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

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelFigures":
        main = ("params", "macs", "accuracy", "latency_ms")
        return cls(params=d.get("params", 0), macs=d.get("macs", 0), accuracy=d.get("accuracy"),
                   latency_ms=d.get("latency_ms"), extra={k: v for k, v in d.items() if k not in main})


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
    #: run-level "<tag>: what is wrong and what fixes it" (edgeprune.compile.hints); per-backend
    #: ones are on each BackendResult
    hints: list[str] = field(default_factory=list)
    #: "complete"; "running" while it is measured (a killed run is recovered from that);
    #: "incomplete" when stopped by a signal (``stopped`` says which, and at what stage)
    status: str = "complete"
    stopped: str | None = None

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
            "hints": self.hints,
            "edgeprune_version": self.edgeprune_version,
            "created": self.created,
            "status": self.status,
            "stopped": self.stopped,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], out_dir: str = "") -> "CompileSummary":
        """A ``summary.json`` read back (its ``out_dir`` is where it was found)."""
        keys = ("model", "target", "device", "backend", "choice_reason", "task", "emulated", "export", "env",
                "roofline_peak", "notes", "hints", "edgeprune_version", "created", "status", "stopped")
        kw = {k: d[k] for k in keys if k in d}
        return cls(original=ModelFigures.from_dict(d.get("original") or {}),
                   pruned=ModelFigures.from_dict(d["pruned"]) if d.get("pruned") else None,
                   backends=[BackendResult.from_dict(b) for b in d.get("backends") or []],
                   **{"export": {}, **kw}, out_dir=out_dir)

    @classmethod
    def load(cls, out_dir: Path) -> "CompileSummary":
        return cls.from_dict(json.loads((Path(out_dir) / "summary.json").read_text()), out_dir=str(out_dir))

    def write(self, out_dir: Path) -> Path:
        path = out_dir / "summary.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        tmp.replace(path)
        return path
