"""The nightly runner's kept artifacts: each cell's built artifacts, so that a later night
can time the baseline's artifact again beside its own (the paired method,
:mod:`edgeprune.results.paired`).

Why keep files at all: a night's work folder is deleted after the run, and a verdict
against *history* compares with samples taken on other nights under other load (the
false ``SLOWER +6.8 %`` of an unchanged model on a busy host). Re-timing the baseline's
artifact tonight needs that artifact.

Layout, beside the results database by default (``results.sqlite.artifacts/``)::

    <root>/<cell slug>-<cell hash>/<artifact sha256>/
        job.json          the BenchJob it ran as (paths relative to this folder)
        <artifact files>  e.g. openvino/model.xml + model.bin
        <inputs .npz>     the inputs it was timed on

A folder is written under a temporary name and renamed into place, so a killed run
never leaves half an artifact under its hash; its files are checked against the hash
before use. Per cell the ``per_cell`` most recently used artifacts stay (the artifact a
cell is paired with is touched every night, so it stays while it is in use).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path

from edgeprune.bench.bundle import BenchJob
from edgeprune.results.records import artifact_files, file_sha256

JOB_FILE = "job.json"


def _place(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (no copy of a large artifact), or copy it."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def job_files(job: BenchJob, root: Path) -> list[Path]:
    """The files ``job`` needs, relative to its bundle ``root``: its artifact's folder (or
    the artifact's own files when it sits at the top) and its inputs."""
    art = Path(job.artifact)
    files = []
    if art.parent != Path("."):
        top = root / art.parts[0]
        files += [p.relative_to(root) for p in sorted(top.rglob("*")) if p.is_file()]
    else:
        files += [p.relative_to(root) for p in artifact_files(root / art) if p.is_file()]
    files.append(Path(job.inputs))
    return files


def copy_job(job: BenchJob, src_root: Path, dst_root: Path, prefix: str = "") -> BenchJob:
    """Place the files of ``job`` (bundle ``src_root``) under ``dst_root/prefix`` and return
    the job with its paths there; ``expected`` and ``eval`` are dropped (a re-timing only
    times: the artifact was verified on the night it was built)."""
    for rel in job_files(job, src_root):
        _place(src_root / rel, dst_root / prefix / rel)
    p = (lambda x: str(Path(prefix) / x)) if prefix else str
    return dataclasses.replace(job, artifact=p(job.artifact), inputs=p(job.inputs), expected=None, eval=None)


class ArtifactKeep:
    """Kept artifacts of the cells of one results database."""

    def __init__(self, root: Path, per_cell: int = 3) -> None:
        self.root, self.per_cell = Path(root), max(1, per_cell)

    def cell_dir(self, cell: Sequence[str]) -> Path:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(c for c in cell if c)).strip("_")[:80]
        return self.root / f"{slug}-{hashlib.sha256(json.dumps(list(cell)).encode()).hexdigest()[:10]}"

    def folder(self, cell: Sequence[str], artifact_hash: str) -> Path:
        return self.cell_dir(cell) / artifact_hash

    def get(self, cell: Sequence[str], artifact_hash: str | None) -> tuple[BenchJob, Path] | None:
        """(the kept job, its folder) if the artifact is kept and intact; touched, so that
        an artifact in use is the last to go."""
        if not artifact_hash:
            return None
        d = self.folder(cell, artifact_hash)
        try:
            job = BenchJob.from_dict(json.loads((d / JOB_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None
        if file_sha256(artifact_files(d / job.artifact)) != artifact_hash or not (d / job.inputs).is_file():
            return None
        with contextlib.suppress(OSError):
            os.utime(d)
        return job, d

    def add(self, cell: Sequence[str], artifact_hash: str | None, job: BenchJob, bundle_dir: Path) -> Path | None:
        """Keep the artifact of ``job`` (in ``bundle_dir``) under its hash; None when it
        cannot be kept (no hash, files gone, disk full: the next night falls back to history)."""
        if not artifact_hash:
            return None
        final = self.folder(cell, artifact_hash)
        if self.get(cell, artifact_hash) is not None:
            return final
        tmp = final.parent / f".{artifact_hash[:16]}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            kept = copy_job(job, bundle_dir, tmp)
            (tmp / JOB_FILE).write_text(json.dumps(dataclasses.asdict(kept), indent=1))
            if file_sha256(artifact_files(tmp / kept.artifact)) != artifact_hash:
                return None  # the bundle's artifact is not the one that was measured
            if final.exists():
                shutil.rmtree(final, ignore_errors=True)  # a damaged copy: replace it
            os.replace(tmp, final)
        except OSError:  # e.g. another run kept the same artifact a moment ago
            return final if self.get(cell, artifact_hash) is not None else None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.prune(cell, keep={artifact_hash})
        return final

    def prune(self, cell: Sequence[str], keep: AbstractSet[str] = frozenset()) -> list[str]:
        """Remove all but the ``per_cell`` most recently used artifacts of ``cell`` (and
        never those in ``keep``); returns the hashes removed."""
        d = self.cell_dir(cell)
        if not d.is_dir():
            return []
        now = time.time()
        entries = []
        for p in d.iterdir():
            if p.name.startswith("."):  # a temporary folder of a run that died: stale after a day
                with contextlib.suppress(OSError):
                    if now - p.stat().st_mtime > 86400:
                        shutil.rmtree(p, ignore_errors=True)
                continue
            with contextlib.suppress(OSError):
                entries.append((p.stat().st_mtime, p))
        entries.sort(reverse=True)
        removed = []
        for _, p in entries[self.per_cell:]:
            if p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
        return removed
