"""Connecting to a PostgreSQL results database (psycopg 3), and saying why it failed.

Why psycopg 3 and not SQLAlchemy Core: the store is ~30 hand-written statements over
three tables, and the engines differ in a handful of places (type names of the id and
float columns, placeholders, the inserted row's id, how a writer locks, the catalog):
:mod:`edgeprune.results.dialect` handles them in one table. SQLAlchemy would have meant
rewriting every query into its expression language (or ``text()`` with named
parameters), a schema object beside the versioned migrations (or Alembic on top), and a
second layer between the SQLite store and the ``sqlite3`` module it has always used;
the SQLite path stays byte for byte what it was. psycopg is the maintained driver of
the PostgreSQL project's own ecosystem; ``psycopg[binary]`` ships libpq in its wheel,
so nothing else is installed on a runner.

psycopg is imported only when a ``postgresql://`` database is opened: SQLite users
never load it.

Every failure leaves as one line naming the URL with its password hidden
(:class:`~edgeprune.results.location.PgUrl`) and a hint for the usual causes: the server
is not reachable, the password or role is wrong, the database does not exist yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgeprune.errors import ResultsError
from edgeprune.results.dialect import PostgresDb, first_line
from edgeprune.results.location import PgUrl

#: seconds libpq waits for the server to answer (unless the URL says ``connect_timeout``)
CONNECT_TIMEOUT_S = 10
LAB_DOC = "docs/lab.md"


class Row(tuple):
    """A result row readable like ``sqlite3.Row``: ``row[0]``, ``row["id"]``, ``dict(row)``."""

    _index: dict[str, int]

    def __new__(cls, values: Sequence[Any], index: dict[str, int]) -> "Row":
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


def _row_factory(cursor: Any):
    desc = cursor.description or []
    index = {d.name: i for i, d in enumerate(desc)}
    return lambda values: Row(values, index)


def _hint(message: str, url: PgUrl | None) -> str:
    low = message.lower()
    p = url.parts if url is not None else None
    host = (p.hostname or "localhost") if p else "HOST"
    try:
        port = (p.port or 5432) if p else 5432
    except ValueError:
        port = 5432
    user = (p.username or "$USER") if p else "USER"
    dbname = (url.dbname or "DBNAME") if url is not None else "DBNAME"
    if "password" in low or "authentication failed" in low:
        return f"check the user and password (in the URL, $PGPASSWORD or ~/.pgpass); see {LAB_DOC}"
    if "does not exist" in low and "database" in low:
        return f"create it first: createdb -h {host} -p {port} -U {user} {dbname} (see {LAB_DOC})"
    if "role" in low and "does not exist" in low:
        return f"create the role first: createuser -h {host} -p {port} -P {user} (see {LAB_DOC})"
    if "permission denied" in low:
        return f"the role needs to own the database, or CREATE rights in it (see {LAB_DOC})"
    if any(s in low for s in ("refused", "timeout", "timed out", "could not translate", "no route",
                              "name or service", "network is unreachable", "server closed", "terminating")):
        return f"is the PostgreSQL server running and reachable? check with: pg_isready -h {host} -p {port}"
    return f"see {LAB_DOC} for setting up the lab's database"


def describe(exc: BaseException, where: str, url: PgUrl | None = None, connecting: bool = False) -> ResultsError:
    """A driver error as one line naming the database (password hidden) plus a hint."""
    line = first_line(exc)
    for prefix in ("connection failed: ", "connection is bad: "):
        if line.startswith(prefix):
            line = line[len(prefix):]
    secret = url.password if url is not None else None
    if secret:
        line = line.replace(secret, "***")
    what = f"cannot connect to the results database {where}" if connecting else f"results database {where}"
    return ResultsError(f"{what}: {line}", _hint(line, url))


def connect(url: PgUrl, timeout_s: float = 60.0) -> PostgresDb:
    """Open ``url``: autocommit outside explicit transactions, rows like ``sqlite3.Row``,
    ``lock_timeout`` = ``timeout_s`` (the SQLite store's busy timeout: a writer waits this
    long for another, then fails instead of hanging)."""
    try:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        raise ResultsError(f"results database {url}: PostgreSQL needs the psycopg driver, which is not installed",
                           "pip install 'psycopg[binary]' (a dependency of edgeprune: reinstall edgeprune)") from None
    try:
        given = conninfo_to_dict(url.url)
    except psycopg.Error as exc:
        raise ResultsError(f"results database {url} is not a valid PostgreSQL URL: {first_line(exc)}",
                           "e.g. postgresql://edgeprune@db.lab:5432/results") from None
    extra: dict[str, Any] = {}
    if "connect_timeout" not in given:
        extra["connect_timeout"] = CONNECT_TIMEOUT_S
    if "application_name" not in given:
        extra["application_name"] = "edgeprune"  # what a DBA sees in pg_stat_activity
    try:
        raw = psycopg.connect(url.url, autocommit=True, row_factory=_row_factory, **extra)
    except psycopg.Error as exc:
        raise describe(exc, str(url), url, connecting=True) from None
    db = PostgresDb(raw, str(url), (psycopg.Error,), lambda exc: describe(exc, str(url), url))
    db.execute(f"SET lock_timeout = {int(timeout_s * 1000)}")
    return db
