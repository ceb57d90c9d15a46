"""Where the results database is: what ``--db`` / ``$EDGEPRUNE_DB`` names.

Three forms, told apart here and nowhere else:

- a plain path (``results.sqlite``, ``~/lab/r.sqlite``): a SQLite file, exactly as
  always; ``sqlite:PATH`` (and the ``sqlite:///rel`` / ``sqlite:////abs`` URL forms
  other Python tools write) names one too;
- ``postgresql://user[:password]@host[:port]/dbname[?param=...]`` (or ``postgres://``):
  a PostgreSQL database shared by a lab's runners (:class:`PgUrl`);
- ``none`` / ``off`` (or empty): recording is off.

Why a parser of its own: ``Path("postgresql://u@h/db")`` is a valid relative path, so
before this module such a ``--db`` silently created a SQLite file in a folder named
``postgresql:``. Any other ``scheme://`` (``mysql://``) is now refused by name, while a
file name that merely contains a colon (``night:1.sqlite``) stays a path.

A :class:`PgUrl` prints with its password hidden (``user:***@host``): every message,
report and run listing that names the database goes through ``str()``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from edgeprune.errors import ResultsError

DB_ENV = "EDGEPRUNE_DB"
DEFAULT_DB = "results.sqlite"
PG_SCHEMES = ("postgresql", "postgres")
FORMS = "a SQLite file path (or sqlite:PATH) or postgresql://user@host:port/dbname"
#: query parameters of a PostgreSQL URL whose value is a secret
_SECRET_PARAMS = ("password", "sslpassword")
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True)
class PgUrl:
    """A PostgreSQL database URL (libpq's form). ``url`` is the full text, password and
    all, handed only to the driver; ``str()`` is :attr:`display`."""

    url: str
    display: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "display", redact(self.url))

    def __str__(self) -> str:
        return self.display

    def __repr__(self) -> str:
        return f"PgUrl({self.display!r})"

    @property
    def parts(self):
        return urlsplit(self.url)

    @property
    def dbname(self) -> str:
        return unquote(self.parts.path.lstrip("/"))

    @property
    def password(self) -> str | None:
        """The password in the URL (userinfo or ``?password=``), if any: only for scrubbing
        it out of a driver's message."""
        p = self.parts
        if p.password:
            return unquote(p.password)
        return dict(parse_qsl(p.query)).get("password")

    def slug(self) -> str:
        """A file-name-safe name of this database (``host-port-dbname``), for local files
        that belong to it (the nightly runner's kept artifacts)."""
        p = self.parts
        try:
            port = p.port
        except ValueError:
            port = None
        raw = f"{p.hostname or 'local'}-{port or 5432}-{self.dbname or p.username or 'db'}"
        return re.sub(r"[^A-Za-z0-9._-]", "_", raw)


#: what ``--db`` resolves to: a SQLite file or a PostgreSQL database
DbLocation = Path | PgUrl


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (userinfo and query parameters)."""
    try:
        p = urlsplit(url)
    except ValueError:
        return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)
    netloc = p.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{host}"
    query = p.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k in _SECRET_PARAMS for k, _ in pairs):
            query = urlencode([(k, "***" if k in _SECRET_PARAMS else v) for k, v in pairs], safe="*", quote_via=quote)
    return urlunsplit((p.scheme, netloc, p.path, query, p.fragment))


_USERINFO_PW = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*):[^\s@/]*@")
_QUERY_PW = re.compile(r"([?&](?:%s)=)[^&\s]*" % "|".join(_SECRET_PARAMS))


def scrub(text: str | None) -> str | None:
    """``text`` (a command line) with the password of every URL in it hidden: a run's
    command is stored in the database and shown by ``results show`` and the reports, so a
    ``--db postgresql://user:pw@...`` typed on it must not be."""
    if not text:
        return text
    return _QUERY_PW.sub(r"\1***", _USERINFO_PW.sub(r"\1:***@", text))


def _sqlite_path(value: str) -> Path:
    """``sqlite:PATH`` -> PATH; ``sqlite:///rel`` -> rel and ``sqlite:////abs`` -> /abs
    (the convention of SQLAlchemy URLs)."""
    rest = value.split(":", 1)[1]
    if rest.startswith("//"):
        rest = rest[2:]
        if not rest.startswith("/"):
            raise ResultsError(f"results database {value}: a sqlite URL has no host",
                               "write sqlite:PATH, sqlite:///relative/path or sqlite:////absolute/path")
        rest = rest[1:]
    if not rest:
        raise ResultsError(f"results database {value}: no file named", "write sqlite:PATH, e.g. sqlite:results.sqlite")
    return Path(rest).expanduser()


def parse_location(value: str | os.PathLike) -> DbLocation:
    """What one ``--db`` value names (no ``none`` handling: see :func:`default_db_path`).
    A :class:`ResultsError` (exit 10) for an unknown scheme or a malformed URL."""
    if isinstance(value, (Path, PgUrl)):
        return value
    text = os.fspath(value).strip()
    low = text.lower()
    if low.startswith("sqlite:"):
        return _sqlite_path(text)
    m = _URL.match(text)
    if m is None:
        return Path(text).expanduser()
    scheme = m.group(1).lower()
    if scheme not in PG_SCHEMES:
        raise ResultsError(f"results database {redact(text)}: unknown scheme '{m.group(1)}'", f"--db takes {FORMS}")
    parts = urlsplit(text)
    try:
        parts.port  # noqa: B018 (validates it)
    except ValueError:
        raise ResultsError(f"results database {redact(text)}: the port is not a number",
                           "e.g. postgresql://edgeprune@db.lab:5432/results") from None
    if not parts.path.lstrip("/") and "dbname=" not in parts.query:
        raise ResultsError(f"results database {redact(text)}: no database named",
                           "e.g. postgresql://edgeprune@db.lab:5432/results")
    return PgUrl(text)


def default_db_path(explicit: str | os.PathLike | None = None) -> DbLocation | None:
    """``--db`` if given, else ``$EDGEPRUNE_DB``, else ``./results.sqlite``: a SQLite
    path or a :class:`PgUrl`. ``none`` / ``off`` (either place) disables recording:
    returns None."""
    if isinstance(explicit, PgUrl):
        return explicit
    value = str(explicit) if explicit is not None else os.environ.get(DB_ENV) or DEFAULT_DB
    if value.strip().lower() in ("none", "off", ""):
        return None
    return parse_location(value)


def beside(location: DbLocation, suffix: str) -> Path:
    """A local folder that belongs to the database: next to a SQLite file
    (``results.sqlite.artifacts``), and for a PostgreSQL database, which has no folder
    on this machine, under the cache (``$EDGEPRUNE_CACHE/results/host-5432-db.artifacts``)."""
    if isinstance(location, PgUrl):
        from edgeprune.paths import cache_dir

        return cache_dir("results") / (location.slug() + suffix)
    return location.with_name(location.name + suffix)
