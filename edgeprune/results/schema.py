"""The results database's tables, and the steps that upgrade an older one.

One definition for both engines: the statements below are SQLite's, and
:mod:`edgeprune.results.dialect` translates their types for PostgreSQL (ids become
identity columns, ``REAL`` double precision, text byte-ordered). A SQLite file and a
PostgreSQL database at the same version have the same tables, columns and indexes.

Tables (the version applied is recorded in ``schema_version``):

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

A change of schema is a new entry in :data:`MIGRATIONS` (never an edit of an old one):
databases written by any earlier edgeprune open and upgrade in place, keeping their rows
(on PostgreSQL the upgrade holds an advisory lock: runners opening it at once queue).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgeprune.results.dialect import Db

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

_V3 = [
    # where a compile/bench run writes (summary.json, bundle/): a run whose process was
    # killed is recovered from there (edgeprune.results.recover)
    "ALTER TABLE runs ADD COLUMN out_dir TEXT",
]

#: schema version -> statements that upgrade from the version before it
MIGRATIONS: dict[int, list[str]] = {1: _V1, 2: _V2, 3: _V3}
SCHEMA_VERSION = max(MIGRATIONS)

#: columns a run row is copied with (``results migrate``; ``begin_run`` names its own)
RUN_COLUMNS = (
    "id kind status started finished git_revision edgeprune_version env_json env_hash host pid command label note out_dir"
).split()

#: columns a measurement row is inserted with (``id`` is assigned by the database)
MEASUREMENT_COLUMNS = (
    "run_id created model model_hash artifact_hash backend backend_version target device emulated ok error "
    "times_json median_ms p90_ms cv accuracy parity_max_diff parity_tolerance verified threads pruned variant_json "
    "env_json series variant attempt"
).split()

#: columns a verdict row is inserted with
VERDICT_COLUMNS = (
    "run_id measurement_id model target device backend variant kind verdict regression ratio ci_low ci_high "
    "p_value baseline_json detail data_json"
).split()


def read_version(db: Db) -> int:
    """The schema version of an open database (0: empty), creating nothing."""
    if not db.table_exists("schema_version"):
        return 0
    return int(db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0])


def current_version(db: Db) -> int:
    """The schema version of an open database (0: empty); creates the version table."""
    db.ddl("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied TEXT NOT NULL)")
    return int(db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0])


def upgrade(db: Db, current: int, upto: int, applied: str) -> None:
    """Apply the migrations after ``current`` up to ``upto`` (inside the caller's
    transaction, so a failed step leaves the database as it was: PostgreSQL's DDL is
    transactional too). Each statement is written once, in SQLite's types;
    :meth:`Db.ddl <edgeprune.results.dialect.Db.ddl>` translates them for PostgreSQL."""
    for version in range(current + 1, upto + 1):
        for stmt in MIGRATIONS[version]:
            db.ddl(stmt)
        db.execute("INSERT INTO schema_version (version, applied) VALUES (?, ?)", (version, applied))
