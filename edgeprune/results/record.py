"""Turning what a pipeline run produced into rows of the results database.

``edgeprune compile`` / ``bench`` call :func:`record_summary` once the pipeline returns;
the nightly runner uses :func:`measurements_from_summary` and stores the rows itself,
inside its own run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeprune.results import fingerprint
from edgeprune.results.store import Measurement, ResultsStore, default_db_path, file_sha256

if TYPE_CHECKING:
    from edgeprune.compile.summary import BackendResult, CompileSummary

#: keys of ``summary.pruned`` that tell pruned variants of one model apart
_VARIANT_KEYS = ("strategy", "importance", "latency_budget", "budget", "latency_ms_budget", "target_latency_ms")


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
    """(pruned, variant key, variant info) of a summary."""
    if summary.pruned is None:
        return False, "", {}
    pr = summary.pruned.to_dict()
    key_parts = [f"{k}={pr[k]}" for k in _VARIANT_KEYS if pr.get(k) is not None]
    info = {"pruned": pr, "original": summary.original.to_dict()}
    return True, "pruned" + (" " + " ".join(key_parts) if key_parts else ""), info


def is_local(summary: "CompileSummary", host_env: dict[str, Any], local: bool | None) -> bool:
    if local is not None:
        return local
    if summary.device == "local":
        return True
    dev = fingerprint.normalize(summary.env)
    return bool(dev) and dev.get("platform") == host_env.get("platform") and dev.get("cpu_model") == host_env.get("cpu_model")


def measurement_from_backend(
    summary: "CompileSummary", b: "BackendResult", host_env: dict[str, Any], local: bool,
    model_hash: str | None, variant: str = "", variant_info: dict[str, Any] | None = None, attempt: int = 0,
) -> Measurement:
    pruned = summary.pruned is not None
    env = fingerprint.merge(b.env, host_env, local) if b.env else {}
    threads = b.threads
    version = b.backend_version or (b.env or {}).get("runtime_version")
    error = b.error
    if error is None and b.latency_ms is None:
        error = "not benchmarked" + (f": {summary.notes[-1]}" if summary.notes else "")
    return Measurement(
        model=summary.model,
        backend=b.name,
        target=summary.target,
        device=summary.device,
        ok=b.ok,
        error=error,
        model_hash=model_hash,
        artifact_hash=file_sha256(artifact_files(b.artifact)),
        backend_version=version,
        emulated=summary.emulated,
        times_ms=list(b.times_ms or []),
        median_ms=b.latency_ms.median if b.latency_ms else None,
        p90_ms=b.latency_ms.p90 if b.latency_ms else None,
        cv=b.latency_ms.cv if b.latency_ms else None,
        accuracy=b.accuracy,
        parity_max_diff=b.max_abs_diff,
        parity_tolerance=b.tolerance,
        verified=b.verified,
        threads=threads,
        pruned=pruned,
        variant=variant,
        variant_info=variant_info or {},
        env=env,
        series=fingerprint.series_key(env, b.name, version, threads) if env else None,
        attempt=attempt,
    )


def measurements_from_summary(
    summary: "CompileSummary", host_env: dict[str, Any] | None = None, local: bool | None = None,
    backends: list[str] | None = None,
) -> list[Measurement]:
    """One :class:`Measurement` per backend of ``summary`` (or of ``backends``)."""
    host_env = host_env if host_env is not None else fingerprint.collect()
    loc = is_local(summary, host_env, local)
    model_hash = file_sha256([Path(summary.out_dir) / "model.onnx"]) if summary.out_dir else None
    pruned, variant, info = variant_of(summary)
    return [
        measurement_from_backend(summary, b, host_env, loc, model_hash, variant, info)
        for b in summary.backends
        if backends is None or b.name in backends
    ]


def record_summary(
    db: str | Path | None,
    summary: "CompileSummary",
    kind: str = "compile",
    command: str | None = None,
    local: bool | None = None,
    started: str | None = None,
) -> int | None:
    """Store a compile/bench run and its measurements; returns the run id.

    ``db`` None means ``$EDGEPRUNE_DB`` or ``./results.sqlite``; ``"none"`` disables
    recording (returns None). The run is ``complete`` when at least one backend was
    measured or only compile-verified, ``failed`` when every backend failed.
    """
    path = default_db_path(db)
    if path is None:
        return None
    host_env = fingerprint.collect()
    rows = measurements_from_summary(summary, host_env, local)
    if command is None:
        command = " ".join(["edgeprune", *sys.argv[1:]]) if sys.argv and "edgeprune" in sys.argv[0] else None
    with ResultsStore(path) as store:
        run_id = store.begin_run(kind, env=host_env, command=command, label=summary.model, started=started)
        for m in rows:
            store.add_measurement(run_id, m)
        failed = [b for b in summary.backends if b.error]
        status = "failed" if summary.backends and len(failed) == len(summary.backends) else "complete"
        note = "; ".join(f"{b.name}: {b.error}" for b in failed)[:2000] or None
        store.finish_run(run_id, status, note)
    return run_id
