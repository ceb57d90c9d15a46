"""The results database: every measurement edgeprune ever made, in a SQLite file (the
default, embedded) or a PostgreSQL database (one history for a lab's runners).

:class:`ResultsStore` opens (and creates, and upgrades: :mod:`edgeprune.results.schema`)
the database ``--db`` names (:mod:`edgeprune.results.location`) and answers the queries
the rest of ``results`` asks: runs, measurements of a run or a cell, a cell's good
history, verdicts. The rows are the typed records of :mod:`edgeprune.results.records`.
The SQL is written once; :mod:`edgeprune.results.dialect` speaks it to either engine.

Durability, the same promise on both engines: every measurement is committed as soon as
it exists, in its own transaction. SQLite: WAL journal, ``BEGIN IMMEDIATE`` write
transactions with a busy timeout (concurrent nightly runs queue instead of failing or
corrupting). PostgreSQL: row-level concurrency, so several runners insert at once;
ids come from identity columns (never duplicated, never reused), a schema upgrade holds
an advisory lock. A run whose process died while ``running`` is marked ``incomplete``
the next time the database is opened *on the host that ran it* (it checks its own
process ids only); its measurements stay.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from edgeprune.durations import GRAMMAR, parse_duration
from edgeprune.errors import ResultsError
from edgeprune.results import schema
from edgeprune.results.dialect import Db, SqliteDb
from edgeprune.results.location import (DB_ENV, DEFAULT_DB, DbLocation, PgUrl, default_db_path, parse_location,
                                        scrub)
from edgeprune.results.records import Cell, Measurement, Run, VerdictRecord, now, parse_time

__all__ = ["DB_ENV", "DEFAULT_DB", "FINAL_STATUSES", "REAPED_NOTE", "RUN_KINDS", "ResultsError", "ResultsStore",
           "default_db_path", "git_revision", "parse_since"]

RunKind = Literal["compile", "bench", "profile", "nightly"]
RunStatus = Literal["running", "complete", "incomplete", "failed"]
RUN_KINDS = ("compile", "bench", "profile", "nightly")
FINAL_STATUSES = ("complete", "incomplete", "failed")
#: the note of a run whose process ended while it was ``running`` (killed, crashed)
REAPED_NOTE = "process ended without finishing the run"


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
    """A connection to one results database (thread-safe; one statement at a time).

    ``path``: a SQLite file (a path, ``sqlite:PATH``) or a ``postgresql://`` URL (a
    string or :class:`~edgeprune.results.location.PgUrl`). Use as a context manager,
    or call :meth:`close`. Opening creates the file and its directory if needed (a
    PostgreSQL database must exist: the server owns it) and migrates an older schema in
    one transaction. ``timeout_s``: how long a writer waits for another (SQLite's busy
    timeout, PostgreSQL's ``lock_timeout``).
    """

    def __init__(self, path: DbLocation | str | os.PathLike, timeout_s: float = 60.0, upto: int | None = None) -> None:
        #: the SQLite file (a Path) or the PostgreSQL URL (a PgUrl: prints without its password)
        self.path: DbLocation = parse_location(path)
        if isinstance(self.path, PgUrl):
            from edgeprune.results.pg import connect

            self._db: Db = connect(self.path, timeout_s)
        else:
            self._db = SqliteDb.open(self.path, timeout_s)
        try:
            self._migrate(schema.SCHEMA_VERSION if upto is None else upto)
            if upto is None:
                self.reap_stale_runs()
        except BaseException:
            self._db.close()
            raise

    # -- plumbing ---------------------------------------------------------------------
    @property
    def engine(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._db.name

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[Db]:
        """A write transaction on the connection (statements in the common SQL, ``?``
        placeholders): committed when the block ends, rolled back on an exception."""
        with self._db.transaction() as db:
            yield db

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._db.query(sql, params)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Rows of one read-only statement in the common SQL (``results migrate`` copies
        the tables row for row with it)."""
        return self._db.query(sql, params)

    def schema_version(self) -> int:
        return schema.read_version(self._db)

    def _migrate(self, upto: int) -> None:
        current = schema.read_version(self._db)  # an up-to-date database: no write, no lock
        if current >= upto:
            self._refuse_newer(current)
            return
        with self.transaction() as db:
            db.lock_schema()  # PostgreSQL: a second runner opening a new database waits here
            current = schema.current_version(db)
            self._refuse_newer(current)
            schema.upgrade(db, current, upto, applied=now())

    def _refuse_newer(self, current: int) -> None:
        if current > schema.SCHEMA_VERSION:
            raise ResultsError(
                f"{self.path} has schema version {current}; this edgeprune knows up to {schema.SCHEMA_VERSION}",
                "upgrade edgeprune, or use another --db",
            )

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
        ``out_dir``: where the run writes its summary (a killed run is recovered from it).
        ``command`` is stored with any URL password in it hidden."""
        from edgeprune import __version__
        from edgeprune.results import fingerprint

        if kind not in RUN_KINDS:
            raise ResultsError(f"unknown run kind '{kind}'. Choose from: {', '.join(RUN_KINDS)}")
        env = fingerprint.collect() if env is None else env
        with self.transaction() as db:
            return db.insert(
                "INSERT INTO runs (kind, status, started, git_revision, edgeprune_version, env_json, env_hash, host, pid,"
                " command, label, out_dir) VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (kind, started or now(), git_revision(cwd), __version__, json.dumps(env, default=str),
                 fingerprint.env_hash(env), socket.gethostname(), os.getpid(), scrub(command), label,
                 str(Path(out_dir).resolve()) if out_dir is not None else None),
            )

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
        """Runs of this host marked ``incomplete`` by :meth:`reap_stale_runs` that have an
        output folder and no measurement yet: a killed compile/bench whose finished jobs
        may be on disk. Only this host's: another runner's output folder is not on this
        machine (and a shared database must not lose that runner's chance to recover)."""
        return [Run.from_row(r) for r in self._query(
            "SELECT * FROM runs WHERE status = 'incomplete' AND out_dir IS NOT NULL AND note = ? AND host = ?"
            " AND NOT EXISTS (SELECT 1 FROM measurements m WHERE m.run_id = runs.id) ORDER BY id",
            (REAPED_NOTE, socket.gethostname()))]

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
            m.id = db.insert(_insert("measurements", schema.MEASUREMENT_COLUMNS),
                             [row[c] for c in schema.MEASUREMENT_COLUMNS])
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
            v.id = db.insert(_insert("verdicts", schema.VERDICT_COLUMNS), [row[c] for c in schema.VERDICT_COLUMNS])
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
            row = db.execute("SELECT env_json FROM runs WHERE id = ?" + db.for_update, (run_id,)).fetchone()
            if row is None:
                raise ResultsError(f"no run with id {run_id} in {self.path}")
            env = json.loads(row[0] or "{}") | dict(extra)
            db.execute("UPDATE runs SET env_json = ? WHERE id = ?", (json.dumps(env, default=str), run_id))
