"""Turning what a pipeline run produced into rows of the results database.

``edgeprune compile`` / ``bench`` call :func:`record_summary` once the pipeline returns,
with a :class:`RecordOptions` built from ``--db``; the nightly flow uses
:func:`measurements_from_summary` and stores the rows itself, inside its own run.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeprune.results import fingerprint
from edgeprune.results.records import Measurement, file_sha256
from edgeprune.results.store import ResultsStore, default_db_path

if TYPE_CHECKING:
    from edgeprune.compile.summary import CompileSummary


@dataclass(frozen=True)
class RecordOptions:
    """Where a compile/bench run is recorded (``--db``), and when it started.

    ``db`` None means ``$EDGEPRUNE_DB`` or ``./results.sqlite``; ``"none"`` / ``"off"``
    disables recording. ``started`` is the ISO time the command began (the run's start
    is the user's, not the moment the pipeline returned); None: when it is recorded.
    """

    db: str | Path | None = None
    started: str | None = None

    @property
    def path(self) -> Path | None:
        return default_db_path(self.db)


def is_local(summary: "CompileSummary", host_env: dict[str, Any], local: bool | None) -> bool:
    """Whether ``summary`` was measured on this host (then the host's fingerprint is the
    device's): said by the caller, or the ``local`` device, or a device reporting this
    host's platform and CPU."""
    if local is not None:
        return local
    if summary.device == "local":
        return True
    dev = fingerprint.normalize(summary.env)
    return bool(dev) and dev.get("platform") == host_env.get("platform") and dev.get("cpu_model") == host_env.get("cpu_model")


def model_hash_of(summary: "CompileSummary") -> str | None:
    """sha256 of the ONNX model a summary measured (its cell's model identity)."""
    return file_sha256([Path(summary.out_dir) / "model.onnx"]) if summary.out_dir else None


def measurements_from_summary(
    summary: "CompileSummary", host_env: dict[str, Any] | None = None, local: bool | None = None,
    backends: list[str] | None = None,
) -> list[Measurement]:
    """One :class:`Measurement` per backend of ``summary`` (or of ``backends``)."""
    host_env = host_env if host_env is not None else fingerprint.collect()
    loc = is_local(summary, host_env, local)
    model_hash = model_hash_of(summary)
    return [
        Measurement.from_backend_result(summary, b, host_env=host_env, local=loc, model_hash=model_hash)
        for b in summary.backends
        if backends is None or b.name in backends
    ]


def run_status(summary: "CompileSummary") -> str:
    """``incomplete`` for a stopped run, ``failed`` when every backend failed, else ``complete``."""
    if summary.status != "complete":
        return "incomplete"
    failed = [b for b in summary.backends if b.error]
    return "failed" if summary.backends and len(failed) == len(summary.backends) else "complete"


@dataclass(frozen=True)
class RecordedRun:
    """A compile/bench run's row, begun when the command starts (status ``running``)."""

    path: Path
    run_id: int


def default_command() -> str | None:
    return " ".join(["edgeprune", *sys.argv[1:]]) if sys.argv and "edgeprune" in sys.argv[0] else None


def begin_recording(options: RecordOptions, kind: str, out_dir: Path | None = None, label: str | None = None,
                    command: str | None = None) -> RecordedRun | None:
    """Begin this run in ``options``' database as ``running``, with its output folder (a
    killed run is recovered from it: :mod:`edgeprune.results.recover`, which the CLI runs
    first). None when recording is off (``--db none``)."""
    path = options.path
    if path is None:
        return None
    with ResultsStore(path) as store:
        run_id = store.begin_run(kind, command=command or default_command(), label=label, started=options.started,
                                 out_dir=out_dir)
    return RecordedRun(path, run_id)


def finish_recording(run: RecordedRun | None, summary: "CompileSummary | None", status: str | None = None,
                     note: str | None = None, local: bool | None = None) -> None:
    """Store ``summary``'s measurements in ``run`` and end it (status from the summary
    unless given). An incomplete run stores only the backends it measured."""
    if run is None:
        return
    rows: list[Measurement] = []
    if summary is not None:
        status = status or run_status(summary)
        only = None if status != "incomplete" else [b.name for b in summary.backends if b.ok]
        rows = measurements_from_summary(summary, fingerprint.collect(), local, backends=only)
        failed = [b for b in summary.backends if b.error]
        note = note or ("; ".join(f"{b.name}: {b.error}" for b in failed)[:2000] or None)
        if summary.stopped:
            note = summary.stopped + (f"; {note}" if note else "")
    with ResultsStore(run.path) as store:
        for m in rows:
            store.add_measurement(run.run_id, m)
        store.finish_run(run.run_id, status or "failed", note)


def record_summary(
    db: str | Path | None,
    summary: "CompileSummary",
    kind: str = "compile",
    command: str | None = None,
    local: bool | None = None,
    started: str | None = None,
) -> int | None:
    """Store a finished compile/bench run and its measurements at once; returns the run id.

    ``db`` None means ``$EDGEPRUNE_DB`` or ``./results.sqlite``; ``"none"`` disables
    recording (returns None). The run is ``complete`` when at least one backend was
    measured or only compile-verified, ``failed`` when every backend failed.
    """
    run = begin_recording(RecordOptions(db=db, started=started), kind, label=summary.model, command=command)
    finish_recording(run, summary, local=local)
    return run.run_id if run is not None else None
