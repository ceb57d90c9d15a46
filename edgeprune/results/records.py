"""The typed rows of the results database: :class:`Run`, :class:`Measurement`,
:class:`VerdictRecord`, and how each is read from and written to its table.

A *cell* is what one latency series is about: (model, target, device, backend, variant).
Times are ISO 8601 strings in UTC (``now()``), so they sort as text in SQLite.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeprune.results import fingerprint

if TYPE_CHECKING:
    from edgeprune.compile.summary import BackendResult, CompileSummary

Cell = tuple[str, str, str, str, str]

#: keys of ``summary.pruned`` that tell pruned variants of one model apart
_VARIANT_KEYS = ("strategy", "importance", "latency_budget", "budget", "latency_ms_budget", "target_latency_ms")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def parse_time(s: str) -> _dt.datetime:
    t = _dt.datetime.fromisoformat(s)
    return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)


def cell_name(cell: Sequence[str]) -> str:
    model, target, device, backend, variant = cell
    return f"{model} {target}/{device} {backend}" + (f" [{variant}]" if variant else "")


def file_sha256(paths: Iterable[str | os.PathLike]) -> str | None:
    """sha256 over the contents of ``paths`` in order (None if none exists)."""
    h = hashlib.sha256()
    seen = False
    for p in paths:
        p = Path(p)
        if not p.is_file():
            continue
        seen = True
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest() if seen else None


def artifact_files(path: str | Path | None) -> list[Path]:
    """The files an artifact consists of (OpenVINO IR is an .xml plus its .bin)."""
    if not path:
        return []
    p = Path(path)
    files = [p]
    if p.suffix == ".xml":
        files.append(p.with_suffix(".bin"))
    return files


def variant_of(summary: "CompileSummary") -> tuple[bool, str, dict[str, Any]]:
    """(pruned, variant key, variant info) of a summary: a pruned model is its own cell,
    named by the settings it was pruned with."""
    if summary.pruned is None:
        return False, "", {}
    pr = summary.pruned.to_dict()
    key_parts = [f"{k}={pr[k]}" for k in _VARIANT_KEYS if pr.get(k) is not None]
    info = {"pruned": pr, "original": summary.original.to_dict()}
    return True, "pruned" + (" " + " ".join(key_parts) if key_parts else ""), info


# --------------------------------------------------------------------------- runs
@dataclass
class Run:
    id: int
    kind: str
    status: str
    started: str
    finished: str | None = None
    git_revision: str | None = None
    edgeprune_version: str = ""
    env: dict[str, Any] = field(default_factory=dict)
    env_hash: str = ""
    host: str | None = None
    pid: int | None = None
    command: str | None = None
    label: str | None = None
    note: str | None = None
    out_dir: str | None = None  # compile/bench: where its summary.json and bundle/ are

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Run":
        d = dict(row)
        d["env"] = json.loads(d.pop("env_json") or "{}")
        return cls(**d)

    @property
    def duration_s(self) -> float | None:
        if not self.finished:
            return None
        return (parse_time(self.finished) - parse_time(self.started)).total_seconds()


# --------------------------------------------------------------------------- measurements
@dataclass
class Measurement:
    """One backend's artifact measured on one device (times in milliseconds)."""

    model: str
    backend: str
    target: str
    device: str
    ok: bool = True
    error: str | None = None
    model_hash: str | None = None
    artifact_hash: str | None = None
    backend_version: str | None = None
    emulated: bool = False
    times_ms: list[float] = field(default_factory=list, repr=False)
    median_ms: float | None = None
    p90_ms: float | None = None
    cv: float | None = None
    accuracy: float | None = None
    parity_max_diff: float | None = None
    parity_tolerance: float | None = None
    verified: bool | None = None
    threads: int | None = None
    pruned: bool = False
    variant: str = ""  # part of the cell key: "" for the model as given
    variant_info: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict, repr=False)
    series: str | None = None
    attempt: int = 0  # re-measurements of one cell within a run: 0, 1, 2, ...
    created: str = ""
    run_id: int | None = None
    id: int | None = None

    @classmethod
    def from_backend_result(
        cls, summary: "CompileSummary", result: "BackendResult", *, host_env: Mapping[str, Any], local: bool,
        model_hash: str | None = None, attempt: int = 0,
    ) -> "Measurement":
        """The row for one backend of a compile/bench ``summary``: the one place a device's
        result becomes a measurement (first measurements and nightly re-timings alike).

        ``local``: the device is this host, so the host's fingerprint fills in what the
        runner did not report. The series key comes from the merged fingerprint, the
        backend version and the threads: a change of any of them starts a new series.
        """
        pruned, variant, info = variant_of(summary)
        env = fingerprint.merge(result.env, host_env, local) if result.env else {}
        version = result.backend_version or (result.env or {}).get("runtime_version")
        error = result.error
        if error is None and result.latency_ms is None:
            error = "not benchmarked" + (f": {summary.notes[-1]}" if summary.notes else "")
        stats = result.latency_ms
        return cls(
            model=summary.model, backend=result.name, target=summary.target, device=summary.device,
            ok=result.ok, error=error, model_hash=model_hash, artifact_hash=file_sha256(artifact_files(result.artifact)),
            backend_version=version, emulated=summary.emulated, times_ms=list(result.times_ms or []),
            median_ms=stats.median if stats else None, p90_ms=stats.p90 if stats else None,
            cv=stats.cv if stats else None, accuracy=result.accuracy, parity_max_diff=result.max_abs_diff,
            parity_tolerance=result.tolerance, verified=result.verified, threads=result.threads, pruned=pruned,
            variant=variant, variant_info=info, env=env,
            series=fingerprint.series_key(env, result.name, version, result.threads) if env else None,
            attempt=attempt,
        )

    @property
    def cell(self) -> Cell:
        return (self.model, self.target, self.device, self.backend, self.variant)

    @property
    def cell_name(self) -> str:
        return cell_name(self.cell)

    @property
    def good(self) -> bool:
        """Usable as a baseline: measured, with times, and its outputs not wrong."""
        return bool(self.ok and self.times_ms and self.verified is not False)

    def to_dict(self, with_times: bool = True) -> dict[str, Any]:
        d = asdict(self)
        if not with_times:
            d.pop("times_ms")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Measurement":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def to_row(self) -> dict[str, Any]:
        """Column -> value for the ``measurements`` table (JSON for lists and dicts)."""
        return {
            "run_id": self.run_id, "created": self.created, "model": self.model, "model_hash": self.model_hash,
            "artifact_hash": self.artifact_hash, "backend": self.backend, "backend_version": self.backend_version,
            "target": self.target, "device": self.device, "emulated": int(self.emulated), "ok": int(self.ok),
            "error": self.error, "times_json": json.dumps([float(t) for t in self.times_ms]),
            "median_ms": self.median_ms, "p90_ms": self.p90_ms, "cv": self.cv, "accuracy": self.accuracy,
            "parity_max_diff": self.parity_max_diff, "parity_tolerance": self.parity_tolerance,
            "verified": None if self.verified is None else int(self.verified), "threads": self.threads,
            "pruned": int(self.pruned), "variant_json": json.dumps(self.variant_info, default=str),
            "env_json": json.dumps(self.env, default=str), "series": self.series, "variant": self.variant,
            "attempt": self.attempt,
        }

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Measurement":
        d = dict(row)
        d["times_ms"] = json.loads(d.pop("times_json") or "[]")
        d["variant_info"] = json.loads(d.pop("variant_json") or "{}")
        d["env"] = json.loads(d.pop("env_json") or "{}")
        for k in ("ok", "emulated", "pruned"):
            d[k] = bool(d[k])
        if d["verified"] is not None:
            d["verified"] = bool(d["verified"])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


# --------------------------------------------------------------------------- verdicts
@dataclass
class VerdictRecord:
    """A stored conclusion about one cell in one run."""

    cell: Cell
    kind: str  # latency | accuracy | parity | run
    verdict: str  # SLOWER FASTER SAME UNKNOWN NEW_SERIES NO_BASELINE REGRESSION OK FAILED SKIPPED
    regression: bool = False
    ratio: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    baseline_ids: list[int] = field(default_factory=list)
    measurement_id: int | None = None
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    run_id: int | None = None
    id: int | None = None

    @property
    def cell_name(self) -> str:
        return cell_name(self.cell)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cell"] = list(self.cell)
        d["cell_name"] = self.cell_name
        return d

    def to_row(self) -> dict[str, Any]:
        """Column -> value for the ``verdicts`` table."""
        model, target, device, backend, variant = self.cell
        return {
            "run_id": self.run_id, "measurement_id": self.measurement_id, "model": model, "target": target,
            "device": device, "backend": backend, "variant": variant, "kind": self.kind, "verdict": self.verdict,
            "regression": int(self.regression), "ratio": self.ratio, "ci_low": self.ci_low, "ci_high": self.ci_high,
            "p_value": self.p_value, "baseline_json": json.dumps(self.baseline_ids), "detail": self.detail,
            "data_json": json.dumps(self.data, default=str),
        }

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "VerdictRecord":
        d = dict(row)
        cell = (d.pop("model"), d.pop("target"), d.pop("device"), d.pop("backend"), d.pop("variant"))
        d["baseline_ids"] = json.loads(d.pop("baseline_json") or "[]")
        d["data"] = json.loads(d.pop("data_json") or "{}")
        d["regression"] = bool(d["regression"])
        return cls(cell=cell, **{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
