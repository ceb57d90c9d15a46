"""Where MetaSchedule records live, which build may use them, and applying them to a build.

Tuning is an investment (minutes to hours per model), so its records are kept and never
measured twice:

* one database per *target key* under :func:`tuning_root`: ``<target>-<hash>/``, where
  the hash covers the TVM target dict (CPU, features, cores), the TVM version and, for the
  ``host`` target, the CPU model, so records are never applied to hardware they were not
  measured on (this project's machines change CPU between sessions);
* records are keyed by the *structural hash* of each kernel (MetaSchedule's
  ``module_equality="structural"``), so any model with a layer of the same shape (a
  pruned model, another model) reuses them;
* ``build`` calls :func:`records_for` and :func:`apply_records`, so a compile after a tune
  uses the records without tuning again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeprune.compile.backends.base import one_line
from edgeprune.compile.backends.tvm.relax import count_scheduled, is_cpu, lower_for_tuning
from edgeprune.compile.backends.tvm.targets import NAME, target_dict, tvm_version
from edgeprune.errors import BackendError
from edgeprune.paths import cache_dir

if TYPE_CHECKING:
    from edgeprune.config.targets import Target

#: overrides the tuning root alone (the rest of the cache stays under $EDGEPRUNE_CACHE)
TUNING_DIR_ENV = "EDGEPRUNE_TUNING_DIR"
#: ``off`` disables records for every build; a folder points every build at that database
TUNING_SWITCH_ENV = "EDGEPRUNE_TVM_TUNING"
WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
META_FILE = "edgeprune-tuning.json"


class TuningError(BackendError):
    """Tuning cannot run as asked (no device to measure on, database busy, TVM failure)."""


def tuning_root() -> Path:
    """``$EDGEPRUNE_TUNING_DIR``, else ``cache_dir("tuning")`` (``$EDGEPRUNE_CACHE/tuning``)."""
    explicit = os.environ.get(TUNING_DIR_ENV)
    return Path(explicit).expanduser() if explicit else cache_dir("tuning")


def target_key(target: "Target") -> str:
    """``<target name>-<12 hex>``: records apply only to the hardware they were measured on."""
    from edgeprune.host import cpu_model

    ident: dict[str, Any] = {"tvm_target": target_dict(target), "tvm": tvm_version()}
    if target.is_host:
        ident["host_cpu"] = cpu_model()
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', target.name)}-{digest}"


@dataclass(frozen=True)
class TuningDatabase:
    """One target's MetaSchedule JSON database (two append-only JSON-lines files)."""

    path: Path

    @classmethod
    def for_target(cls, target: "Target", root: Path | None = None) -> "TuningDatabase":
        return cls((root or tuning_root()) / target_key(target))

    @property
    def workload_file(self) -> Path:
        return self.path / WORKLOAD_FILE

    @property
    def record_file(self) -> Path:
        return self.path / RECORD_FILE

    def record_count(self) -> int:
        """Number of tuning records (all workloads), without importing TVM."""
        try:
            with open(self.record_file, "rb") as f:
                return sum(1 for line in f if line.strip())
        except OSError:
            return 0

    def has_records(self) -> bool:
        return self.record_count() > 0

    def open(self):
        """The MetaSchedule database object (creates empty files if missing)."""
        from tvm.s_tir import meta_schedule as ms

        self.path.mkdir(parents=True, exist_ok=True)
        return ms.database.JSONDatabase(
            path_workload=str(self.workload_file), path_tuning_record=str(self.record_file), allow_missing=True
        )

    def read_meta(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / META_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def write_meta(self, target: "Target", session: dict[str, Any]) -> None:
        """Keep what the records were measured for, and a history of tuning sessions."""
        meta = self.read_meta()
        meta.update({"format": "edgeprune-tuning", "version": 1, "target": target.name,
                     "tvm_target": target_dict(target), "key": self.path.name})
        meta.setdefault("sessions", []).append(session)
        tmp = self.path / (META_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=1, default=str))
        tmp.replace(self.path / META_FILE)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """One tuning session per database at a time (records are appended, never rewritten).

        Builds only read, so they never wait for a tune; a tune refuses to start while
        another one writes the same database.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        with open(self.path / ".tune.lock", "a+") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                owner = f.read().strip() or "another process"
                raise TuningError(
                    f"the tuning database {self.path} is being written by {owner}",
                    "wait for that tune to finish (records are shared), or use another --tuning-dir",
                ) from None
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()}")
            f.flush()
            try:
                yield
            finally:
                f.seek(0)
                f.truncate()
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def records_for(target: "Target") -> TuningDatabase | None:
    """The database a build of ``target`` should apply, or None.

    Disabled by ``tuning: off`` in the target's ``tvm`` backend options or by
    ``EDGEPRUNE_TVM_TUNING=off``; ``tuning: <dir>`` points at a database directory.
    """
    setting = str(target.options_for(NAME).get("tuning", os.environ.get(TUNING_SWITCH_ENV, "auto")))
    if setting.lower() in ("off", "false", "0", "no", "none"):
        return None
    db = TuningDatabase(Path(setting).expanduser()) if setting.lower() not in ("auto", "on", "true", "1") \
        else TuningDatabase.for_target(target)
    return db if db.has_records() else None


@dataclass
class AppliedRecords:
    """What a build took from the tuning database."""

    database: str
    kernels_tuned: int
    kernels: int

    def note(self) -> str:
        if self.kernels_tuned == 0:
            return (f"untuned build: the tuning database {self.database} has no records for this model's kernels "
                    "(run `edgeprune tune`)")
        return (f"MetaSchedule records applied to {self.kernels_tuned} of {self.kernels} kernels "
                f"(database {self.database})")


def apply_records(mod, tvm_target, db: TuningDatabase):
    """Lower ``mod`` as the tuner did and replace every kernel the database knows by its best schedule.

    Kernels without records keep TVM's default lowering. On CPUs the prepacked weight
    layouts are then split out, lifted and folded (``SplitLayoutRewritePreproc``,
    ``LiftTransformParams``, ``FoldConstant``): weights are bound as constants, so the
    artifact's ``main(input)`` interface does not change. Returns (module, AppliedRecords).
    """
    import tvm
    from tvm import relax

    lowered = lower_for_tuning(mod, tvm_target)
    before, _ = count_scheduled(lowered)
    try:
        with tvm_target:  # the passes read the target from the context when constructed
            applied = relax.transform.MetaScheduleApplyDatabase(str(db.path))(lowered)
            tuned, n = count_scheduled(applied)
            out = applied
            if is_cpu(tvm_target):
                out = tvm.transform.Sequential([relax.transform.SplitLayoutRewritePreproc(),
                                                relax.transform.LiftTransformParams(),
                                                relax.transform.FoldConstant()])(applied)
    except Exception as exc:  # noqa: BLE001 - e.g. a record half-written by a tune running right now
        raise TuningError(f"the tuning database {db.path} could not be applied: {one_line(exc)}") from exc
    return out, AppliedRecords(str(db.path), max(0, tuned - before), n)
