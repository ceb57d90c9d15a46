"""The results database: one SQLite file, every measurement edgeprune ever made.

:class:`ResultsStore` opens (and creates, and upgrades: :mod:`edgeprune.results.schema`)
the file and answers the queries the rest of ``results`` asks: runs, measurements of a
run or a cell, a cell's good history, verdicts. The rows are the typed records of
:mod:`edgeprune.results.records`.

Durability: WAL journal, ``BEGIN IMMEDIATE`` write transactions with a busy timeout (so
concurrent nightly runs queue instead of failing or corrupting), every measurement
committed as soon as it exists. A run whose process died while ``running`` is marked
``incomplete`` the next time the database is opened; its measurements stay.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from edgeprune.durations import GRAMMAR, parse_duration
from edgeprune.errors import ResultsError
from edgeprune.results import schema
from edgeprune.results.records import Cell, Measurement, Run, VerdictRecord, now, parse_time

DB_ENV = "EDGEPRUNE_DB"
DEFAULT_DB = "results.sqlite"

RunKind = Literal["compile", "bench", "profile", "nightly"]
RunStatus = Literal["running", "complete", "incomplete", "failed"]
RUN_KINDS = ("compile", "bench", "profile", "nightly")
FINAL_STATUSES = ("complete", "incomplete", "failed")
#: the note of a run whose process ended while it was ``running`` (killed, crashed)
REAPED_NOTE = "process ended without finishing the run"


def default_db_path(explicit: str | os.PathLike | None = None) -> Path | None:
    """``--db`` if given, else ``$EDGEPRUNE_DB``, else ``./results.sqlite``.

    ``none`` / ``off`` (either place) disables recording: returns None.
    """
    value = str(explicit) if explicit is not None else os.environ.get(DB_ENV) or DEFAULT_DB
    if value.strip().lower() in ("none", "off", ""):
        return None
    return Path(value).expanduser()


def parse_since(value: str | None) -> str | None:
    """The start of a window as an ISO timestamp (UTC), or None for no window.

    ``value`` is a duration back from now in the one duration grammar
    (:mod:`edgeprune.durations`: ``30d``, ``12h``, ``1h30m``, ``2w``) or an ISO date.
    """
    if not value:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError:
        pass
    else:
        start = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(seconds=seconds)
        return start.isoformat(timespec="milliseconds")
    try:
        return parse_time(value.strip()).isoformat(timespec="milliseconds")
    except ValueError:
        raise ResultsError(f"--since '{value}' is neither a duration ({GRAMMAR}) nor an ISO date") from None


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _insert(table: str, columns: Sequence[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


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
            self._migrate(schema.SCHEMA_VERSION if upto is None else upto)
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
            current = schema.current_version(db)
            if current > schema.SCHEMA_VERSION:
                raise ResultsError(
                    f"{self.path} has schema version {current}; this edgeprune knows up to {schema.SCHEMA_VERSION}",
                    "upgrade edgeprune, or use another --db",
                )
            schema.upgrade(db, current, upto, applied=now())

    # -- runs -------------------------------------------------------------------------
    def begin_run(
        self,
        kind: str,
        env: dict[str, Any] | None = None,
        command: str | None = None,
        label: str | None = None,
        cwd: str | os.PathLike | None = None,
        started: str | None = None,
        out_dir: str | os.PathLike | None = None,
    ) -> int:
        """Create a run in status ``running`` (``started``: ISO time, default now); returns its id.
        ``out_dir``: where the run writes its summary (a killed run is recovered from it)."""
        from edgeprune import __version__
        from edgeprune.results import fingerprint

        if kind not in RUN_KINDS:
            raise ResultsError(f"unknown run kind '{kind}'. Choose from: {', '.join(RUN_KINDS)}")
        env = fingerprint.collect() if env is None else env
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO runs (kind, status, started, git_revision, edgeprune_version, env_json, env_hash, host, pid,"
                " command, label, out_dir) VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (kind, started or now(), git_revision(cwd), __version__, json.dumps(env, default=str),
                 fingerprint.env_hash(env), socket.gethostname(), os.getpid(), command, label,
                 str(Path(out_dir).resolve()) if out_dir is not None else None),
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
                        " note = COALESCE(note, ?) WHERE id = ? AND status = 'running'",
                        (now(), REAPED_NOTE, rid),
                    )
        return stale

    def killed_runs(self) -> list[Run]:
        """Runs marked ``incomplete`` by :meth:`reap_stale_runs` that have an output folder
        and no measurement yet: a killed compile/bench whose finished jobs may be on disk."""
        return [Run.from_row(r) for r in self._query(
            "SELECT * FROM runs WHERE status = 'incomplete' AND out_dir IS NOT NULL AND note = ?"
            " AND NOT EXISTS (SELECT 1 FROM measurements m WHERE m.run_id = runs.id) ORDER BY id", (REAPED_NOTE,))]

    def set_note(self, run_id: int, note: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE runs SET note = ? WHERE id = ?", (note, run_id))

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
        row = m.to_row()
        with self.transaction() as db:
            cur = db.execute(_insert("measurements", schema.MEASUREMENT_COLUMNS),
                             [row[c] for c in schema.MEASUREMENT_COLUMNS])
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

    def cells(self, since: str | None = None) -> list[Cell]:
        sql = "SELECT DISTINCT model, target, device, backend, variant FROM measurements"
        params: list[Any] = []
        if since:
            sql += " WHERE created >= ?"
            params.append(since)
        return [tuple(r) for r in self._query(sql + " ORDER BY model, target, device, backend, variant", params)]

    # -- verdicts ---------------------------------------------------------------------
    def add_verdict(self, run_id: int, v: VerdictRecord) -> int:
        v.run_id = run_id
        row = v.to_row()
        with self.transaction() as db:
            cur = db.execute(_insert("verdicts", schema.VERDICT_COLUMNS), [row[c] for c in schema.VERDICT_COLUMNS])
            v.id = int(cur.lastrowid)
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

    def add_run_env(self, run_id: int, extra: dict[str, Any]) -> None:
        """Merge ``extra`` into a run's ``env`` JSON: what a run learns as it goes that no
        column holds (``edgeprune profile``: its latency table and points, under
        ``"profile"``). The fingerprint hash is left as it was: the machine is the same."""
        with self.transaction() as db:
            row = db.execute("SELECT env_json FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise ResultsError(f"no run with id {run_id} in {self.path}")
            env = json.loads(row[0] or "{}") | dict(extra)
            db.execute("UPDATE runs SET env_json = ? WHERE id = ?", (json.dumps(env, default=str), run_id))
