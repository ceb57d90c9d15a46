"""The results database: one SQLite file, every measurement edgeprune ever made.

Tables (schema version in ``schema_version``; :data:`MIGRATIONS` upgrades old files):

- ``runs``: one row per invocation (``compile``, ``bench``, ``profile``, ``nightly``) with
  its status (``running`` -> ``complete`` | ``incomplete`` | ``failed``), start and end,
  the git revision of the user's repository, the edgeprune version and the environment
  fingerprint (JSON + hash).
- ``measurements``: one row per backend measured: model spec + sha256 of the ONNX model,
  artifact hash, backend + version, target, device, emulated flag, *every per-run time*
  (JSON), median / p90, accuracy, parity, threads, pruned variant, the device's
  fingerprint and its series key (see :mod:`edgeprune.results.fingerprint`).
- ``verdicts``: what regression detection concluded for a measurement (latency,
  accuracy, parity), with effect size, confidence interval and the baseline used.

Durability: WAL journal, ``BEGIN IMMEDIATE`` write transactions with a busy timeout (so
concurrent nightly runs queue instead of failing or corrupting), every measurement
committed as soon as it exists. A run whose process died while ``running`` is marked
``incomplete`` the next time the database is opened; its measurements stay.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import socket
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgeprune.errors import EdgepruneError

DB_ENV = "EDGEPRUNE_DB"
DEFAULT_DB = "results.sqlite"

RunKind = Literal["compile", "bench", "profile", "nightly"]
RunStatus = Literal["running", "complete", "incomplete", "failed"]
RUN_KINDS = ("compile", "bench", "profile", "nightly")
FINAL_STATUSES = ("complete", "incomplete", "failed")


class ResultsError(EdgepruneError):
    """The results database cannot be opened, is too new, or a run/measurement is unknown."""

    exit_code = 10


def default_db_path(explicit: str | os.PathLike | None = None) -> Path | None:
    """``--db`` if given, else ``$EDGEPRUNE_DB``, else ``./results.sqlite``.

    ``none`` / ``off`` (either place) disables recording: returns None.
    """
    value = str(explicit) if explicit is not None else os.environ.get(DB_ENV) or DEFAULT_DB
    if value.strip().lower() in ("none", "off", ""):
        return None
    return Path(value).expanduser()


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def parse_time(s: str) -> _dt.datetime:
    t = _dt.datetime.fromisoformat(s)
    return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)


def parse_since(value: str | None) -> str | None:
    """``30d``, ``12h``, ``90m``, ``2w`` or an ISO date -> ISO timestamp (UTC), or None."""
    if not value:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*", value)
    if m:
        n, unit = float(m.group(1)), m.group(2)
        delta = {"m": _dt.timedelta(minutes=n), "h": _dt.timedelta(hours=n), "d": _dt.timedelta(days=n),
                 "w": _dt.timedelta(weeks=n)}[unit]
        return (_dt.datetime.now(_dt.timezone.utc) - delta).isoformat(timespec="milliseconds")
    try:
        return parse_time(value).isoformat(timespec="milliseconds")
    except ValueError:
        raise ResultsError(f"--since '{value}' is neither a duration (30d, 12h, 2w, 90m) nor an ISO date") from None


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


def git_revision(start: str | os.PathLike | None = None) -> str | None:
    """Commit of the git repository containing ``start`` (default: cwd), read from the
    ``.git`` files directly (no git binary needed, nothing written)."""
    d = Path(start or Path.cwd()).resolve()
    for cand in [d, *d.parents]:
        dot = cand / ".git"
        if dot.is_file():  # worktree / submodule: "gitdir: <path>"
            text = dot.read_text(errors="replace").strip()
            if not text.startswith("gitdir:"):
                return None
            dot = (cand / text.split(":", 1)[1].strip()).resolve()
        if not dot.is_dir():
            continue
        try:
            head = (dot / "HEAD").read_text().strip()
        except OSError:
            return None
        if not head.startswith("ref:"):
            return head or None
        ref = head.split(":", 1)[1].strip()
        common = dot
        if (dot / "commondir").is_file():
            common = (dot / (dot / "commondir").read_text().strip()).resolve()
        for base in (dot, common):
            if (base / ref).is_file():
                return (base / ref).read_text().strip() or None
        packed = common / "packed-refs"
        if packed.is_file():
            for line in packed.read_text(errors="replace").splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref:
                    return parts[0]
        return None  # a repository with no commit yet
    return None


# --------------------------------------------------------------------------- records
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

    @property
    def cell(self) -> tuple[str, str, str, str, str]:
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


def cell_name(cell: Sequence[str]) -> str:
    model, target, device, backend, variant = cell
    return f"{model} {target}/{device} {backend}" + (f" [{variant}]" if variant else "")


@dataclass
class VerdictRecord:
    """A stored conclusion about one cell in one run."""

    cell: tuple[str, str, str, str, str]
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

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "VerdictRecord":
        d = dict(row)
        cell = (d.pop("model"), d.pop("target"), d.pop("device"), d.pop("backend"), d.pop("variant"))
        d["baseline_ids"] = json.loads(d.pop("baseline_json") or "[]")
        d["data"] = json.loads(d.pop("data_json") or "{}")
        d["regression"] = bool(d["regression"])
        return cls(cell=cell, **{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


# --------------------------------------------------------------------------- schema
_V1 = [
    """CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL CHECK (kind IN ('compile', 'bench', 'profile', 'nightly')),
        status TEXT NOT NULL CHECK (status IN ('running', 'complete', 'incomplete', 'failed')),
        started TEXT NOT NULL,
        finished TEXT,
        git_revision TEXT,
        edgeprune_version TEXT NOT NULL,
        env_json TEXT NOT NULL DEFAULT '{}',
        env_hash TEXT NOT NULL DEFAULT '',
        host TEXT,
        pid INTEGER,
        command TEXT,
        label TEXT,
        note TEXT
    )""",
    """CREATE TABLE measurements (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        created TEXT NOT NULL,
        model TEXT NOT NULL,
        model_hash TEXT,
        artifact_hash TEXT,
        backend TEXT NOT NULL,
        backend_version TEXT,
        target TEXT NOT NULL,
        device TEXT NOT NULL,
        emulated INTEGER NOT NULL DEFAULT 0,
        ok INTEGER NOT NULL,
        error TEXT,
        times_json TEXT NOT NULL DEFAULT '[]',
        median_ms REAL,
        p90_ms REAL,
        cv REAL,
        accuracy REAL,
        parity_max_diff REAL,
        parity_tolerance REAL,
        verified INTEGER,
        threads INTEGER,
        pruned INTEGER NOT NULL DEFAULT 0,
        variant_json TEXT NOT NULL DEFAULT '{}',
        env_json TEXT NOT NULL DEFAULT '{}',
        series TEXT
    )""",
    "CREATE INDEX measurements_run ON measurements(run_id)",
    "CREATE INDEX measurements_cell ON measurements(model, target, device, backend, created)",
    "CREATE INDEX runs_started ON runs(started)",
]

_V2 = [
    # re-measurements and pruned variants became part of the cell; verdicts are stored
    "ALTER TABLE measurements ADD COLUMN variant TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE measurements ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0",
    "DROP INDEX measurements_cell",
    "CREATE INDEX measurements_cell ON measurements(model, target, device, backend, variant, series, created)",
    """CREATE TABLE verdicts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        measurement_id INTEGER REFERENCES measurements(id) ON DELETE SET NULL,
        model TEXT NOT NULL,
        target TEXT NOT NULL,
        device TEXT NOT NULL,
        backend TEXT NOT NULL,
        variant TEXT NOT NULL DEFAULT '',
        kind TEXT NOT NULL CHECK (kind IN ('latency', 'accuracy', 'parity', 'run')),
        verdict TEXT NOT NULL,
        regression INTEGER NOT NULL DEFAULT 0,
        ratio REAL,
        ci_low REAL,
        ci_high REAL,
        p_value REAL,
        baseline_json TEXT NOT NULL DEFAULT '[]',
        detail TEXT NOT NULL DEFAULT '',
        data_json TEXT NOT NULL DEFAULT '{}'
    )""",
    "CREATE INDEX verdicts_run ON verdicts(run_id)",
]

#: schema version -> statements that upgrade from the version before it
MIGRATIONS: dict[int, list[str]] = {1: _V1, 2: _V2}
SCHEMA_VERSION = max(MIGRATIONS)

_MEAS_COLS = (
    "run_id created model model_hash artifact_hash backend backend_version target device emulated ok error "
    "times_json median_ms p90_ms cv accuracy parity_max_diff parity_tolerance verified threads pruned variant_json "
    "env_json series variant attempt"
).split()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ResultsStore:
    """A connection to one results database (thread-safe; one writer at a time).

    Use as a context manager, or call :meth:`close`. Opening creates the file and its
    directory if needed and migrates an older schema in one transaction.
    """

    def __init__(self, path: str | os.PathLike, timeout_s: float = 60.0, upto: int | None = None) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(self.path), timeout=timeout_s, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise ResultsError(f"cannot open results database {self.path}: {exc}") from exc
        self._db.row_factory = sqlite3.Row
        try:
            self._db.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":  # e.g. a file system without shared memory
                self._db.execute("PRAGMA journal_mode = DELETE")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._migrate(SCHEMA_VERSION if upto is None else upto)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise ResultsError(f"{self.path} is not a usable results database: {exc}") from exc
        if upto is None:
            self.reap_stale_runs()

    # -- plumbing ---------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; ``BEGIN IMMEDIATE`` takes the write lock up front so two
        writers queue on the busy timeout instead of dead-locking on an upgrade."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def schema_version(self) -> int:
        with self._lock:
            has = self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_version'"
            ).fetchone()
            if not has:
                return 0
            row = self._db.execute("SELECT MAX(version) FROM schema_version").fetchone()
            return int(row[0] or 0)

    def _migrate(self, upto: int) -> None:
        with self.transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied TEXT NOT NULL)")
            current = int(db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0])
            if current > SCHEMA_VERSION:
                raise ResultsError(
                    f"{self.path} has schema version {current}; this edgeprune knows up to {SCHEMA_VERSION}",
                    "upgrade edgeprune, or use another --db",
                )
            for version in range(current + 1, upto + 1):
                for stmt in MIGRATIONS[version]:
                    db.execute(stmt)
                db.execute("INSERT INTO schema_version (version, applied) VALUES (?, ?)", (version, now()))

    # -- runs -------------------------------------------------------------------------
    def begin_run(
        self,
        kind: str,
        env: dict[str, Any] | None = None,
        command: str | None = None,
        label: str | None = None,
        cwd: str | os.PathLike | None = None,
        started: str | None = None,
    ) -> int:
        """Create a run in status ``running`` (``started``: ISO time, default now); returns its id."""
        from edgeprune import __version__
        from edgeprune.results import fingerprint

        if kind not in RUN_KINDS:
            raise ResultsError(f"unknown run kind '{kind}'. Choose from: {', '.join(RUN_KINDS)}")
        env = fingerprint.collect() if env is None else env
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO runs (kind, status, started, git_revision, edgeprune_version, env_json, env_hash, host, pid,"
                " command, label) VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (kind, started or now(), git_revision(cwd), __version__, json.dumps(env, default=str),
                 fingerprint.env_hash(env), socket.gethostname(), os.getpid(), command, label),
            )
            return int(cur.lastrowid)

    def finish_run(self, run_id: int, status: str, note: str | None = None) -> None:
        if status not in FINAL_STATUSES:
            raise ResultsError(f"a run ends as one of {', '.join(FINAL_STATUSES)}, not '{status}'")
        with self.transaction() as db:
            db.execute("UPDATE runs SET status = ?, finished = ?, note = COALESCE(?, note) WHERE id = ?",
                       (status, now(), note, run_id))

    def reap_stale_runs(self) -> list[int]:
        """Mark runs left ``running`` by a process of this host that no longer exists
        as ``incomplete`` (their measurements are kept)."""
        host = socket.gethostname()
        stale = [int(r["id"]) for r in self._query("SELECT id, pid FROM runs WHERE status = 'running' AND host = ?", (host,))
                 if r["pid"] is not None and not _pid_alive(int(r["pid"]))]
        if stale:
            with self.transaction() as db:
                for rid in stale:
                    db.execute(
                        "UPDATE runs SET status = 'incomplete', finished = COALESCE(finished, ?),"
                        " note = COALESCE(note, 'process ended without finishing the run') WHERE id = ? AND status = 'running'",
                        (now(), rid),
                    )
        return stale

    def run(self, run_id: int) -> Run:
        rows = self._query("SELECT * FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise ResultsError(f"no run with id {run_id} in {self.path}", "see `edgeprune results list`")
        return Run.from_row(rows[0])

    def runs(self, since: str | None = None, kind: str | None = None, limit: int | None = None,
             status: str | None = None) -> list[Run]:
        """Runs, newest first."""
        sql, params = "SELECT * FROM runs WHERE 1=1", []
        if since:
            sql += " AND started >= ?"
            params.append(since)
        if kind:
            sql += " AND kind = ?"
            params.append(kind)
        if status:
            sql += " AND status = ?"
            params.append(status)
        sql += " ORDER BY started DESC, id DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [Run.from_row(r) for r in self._query(sql, params)]

    def latest_run(self, kind: str | None = None) -> Run | None:
        rs = self.runs(kind=kind, limit=1)
        return rs[0] if rs else None

    def run_counts(self) -> dict[int, tuple[int, int]]:
        """run id -> (measurements, failed measurements)."""
        rows = self._query("SELECT run_id, COUNT(*) n, SUM(1 - ok) bad FROM measurements GROUP BY run_id")
        return {int(r["run_id"]): (int(r["n"]), int(r["bad"] or 0)) for r in rows}

    # -- measurements -----------------------------------------------------------------
    def add_measurement(self, run_id: int, m: Measurement) -> int:
        """Store one measurement (committed immediately); returns its id."""
        if m.times_ms and m.median_ms is None:
            from edgeprune.bench.stats import LatencyStats

            s = LatencyStats.from_times(m.times_ms)
            m.median_ms, m.p90_ms, m.cv = s.median, s.p90, s.cv
        m.created = m.created or now()
        m.run_id = run_id
        values = {
            "run_id": run_id, "created": m.created, "model": m.model, "model_hash": m.model_hash,
            "artifact_hash": m.artifact_hash, "backend": m.backend, "backend_version": m.backend_version,
            "target": m.target, "device": m.device, "emulated": int(m.emulated), "ok": int(m.ok), "error": m.error,
            "times_json": json.dumps([float(t) for t in m.times_ms]), "median_ms": m.median_ms, "p90_ms": m.p90_ms,
            "cv": m.cv, "accuracy": m.accuracy, "parity_max_diff": m.parity_max_diff,
            "parity_tolerance": m.parity_tolerance, "verified": None if m.verified is None else int(m.verified),
            "threads": m.threads, "pruned": int(m.pruned), "variant_json": json.dumps(m.variant_info, default=str),
            "env_json": json.dumps(m.env, default=str), "series": m.series, "variant": m.variant, "attempt": m.attempt,
        }
        with self.transaction() as db:
            cur = db.execute(
                f"INSERT INTO measurements ({', '.join(_MEAS_COLS)}) VALUES ({', '.join('?' * len(_MEAS_COLS))})",
                [values[c] for c in _MEAS_COLS],
            )
            m.id = int(cur.lastrowid)
        return m.id

    def measurement(self, mid: int) -> Measurement:
        rows = self._query("SELECT * FROM measurements WHERE id = ?", (mid,))
        if not rows:
            raise ResultsError(f"no measurement with id {mid} in {self.path}")
        return Measurement.from_row(rows[0])

    def measurements(
        self,
        run_id: int | None = None,
        since: str | None = None,
        cell: Sequence[str] | None = None,
        device: str | None = None,
        model: str | None = None,
    ) -> list[Measurement]:
        """Measurements, oldest first."""
        sql, params = "SELECT * FROM measurements WHERE 1=1", []
        if run_id is not None:
            sql += " AND run_id = ?"
            params.append(run_id)
        if since:
            sql += " AND created >= ?"
            params.append(since)
        if cell is not None:
            sql += " AND model = ? AND target = ? AND device = ? AND backend = ? AND variant = ?"
            params += list(cell)
        if device:
            sql += " AND device = ?"
            params.append(device)
        if model:
            sql += " AND model = ?"
            params.append(model)
        sql += " ORDER BY created, id"
        return [Measurement.from_row(r) for r in self._query(sql, params)]

    def history(self, cell: Sequence[str], before_run: int | None = None, series: str | None = None,
                limit: int | None = None) -> list[Measurement]:
        """Good measurements of ``cell`` (newest first), optionally within one series and
        from runs other than (and started before) ``before_run``."""
        sql = ("SELECT m.* FROM measurements m JOIN runs r ON r.id = m.run_id WHERE m.model = ? AND m.target = ?"
               " AND m.device = ? AND m.backend = ? AND m.variant = ? AND m.ok = 1 AND m.times_json != '[]'"
               " AND (m.verified IS NULL OR m.verified = 1)")
        params: list[Any] = list(cell)
        if series is not None:
            sql += " AND m.series = ?"
            params.append(series)
        if before_run is not None:
            sql += " AND m.run_id != ? AND r.started <= (SELECT started FROM runs WHERE id = ?)"
            params += [before_run, before_run]
        sql += " ORDER BY m.created DESC, m.id DESC"
        rows = [Measurement.from_row(r) for r in self._query(sql, params)]
        if limit is None:
            return rows
        # limit counts *runs*: the re-measurements of one run belong together
        out, run_ids = [], []
        for m in rows:
            if m.run_id not in run_ids:
                if len(run_ids) == limit:
                    break
                run_ids.append(m.run_id)
            out.append(m)
        return out

    def cells(self, since: str | None = None) -> list[tuple[str, str, str, str, str]]:
        sql = "SELECT DISTINCT model, target, device, backend, variant FROM measurements"
        params: list[Any] = []
        if since:
            sql += " WHERE created >= ?"
            params.append(since)
        return [tuple(r) for r in self._query(sql + " ORDER BY model, target, device, backend, variant", params)]

    # -- verdicts ---------------------------------------------------------------------
    def add_verdict(self, run_id: int, v: VerdictRecord) -> int:
        model, target, device, backend, variant = v.cell
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO verdicts (run_id, measurement_id, model, target, device, backend, variant, kind, verdict,"
                " regression, ratio, ci_low, ci_high, p_value, baseline_json, detail, data_json)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, v.measurement_id, model, target, device, backend, variant, v.kind, v.verdict,
                 int(v.regression), v.ratio, v.ci_low, v.ci_high, v.p_value, json.dumps(v.baseline_ids),
                 v.detail, json.dumps(v.data, default=str)),
            )
            v.id, v.run_id = int(cur.lastrowid), run_id
        return v.id

    def change_runs(self, cell: Sequence[str], run_ids: Iterable[int]) -> set[int]:
        """Those of ``run_ids`` whose latency verdict for ``cell`` was SLOWER or FASTER."""
        ids = [int(r) for r in run_ids]
        if not ids:
            return set()
        rows = self._query(
            f"SELECT DISTINCT run_id FROM verdicts WHERE kind = 'latency' AND verdict IN ('SLOWER', 'FASTER')"
            f" AND model = ? AND target = ? AND device = ? AND backend = ? AND variant = ?"
            f" AND run_id IN ({', '.join('?' * len(ids))})",
            list(cell) + ids,
        )
        return {int(r[0]) for r in rows}

    def verdicts(self, run_id: int | None = None, since: str | None = None) -> list[VerdictRecord]:
        sql = "SELECT v.* FROM verdicts v JOIN runs r ON r.id = v.run_id WHERE 1=1"
        params: list[Any] = []
        if run_id is not None:
            sql += " AND v.run_id = ?"
            params.append(run_id)
        if since:
            sql += " AND r.started >= ?"
            params.append(since)
        return [VerdictRecord.from_row(r) for r in self._query(sql + " ORDER BY v.id", params)]
