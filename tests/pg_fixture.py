"""A real PostgreSQL server for the tests: one per session, in a temporary folder.

The server is the Debian package ``postgresql`` (``make system-deps`` installs it):
``initdb`` into a fresh folder, then ``postgres`` on a free loopback port with
``listen_addresses = 127.0.0.1``, its unix socket inside that folder, and a
``pg_hba.conf`` of our own: trust for 127.0.0.1 only, except one role that must give
its password (the tests of a wrong password, and of a password kept out of messages).
``initdb`` and the server refuse to run as root, so under root they run as the system
user ``postgres`` (the package creates it) through ``subprocess``'s ``user=``: no shell,
no command string built from anything. The server is this process's child, not a
``pg_ctl`` daemon, and the kernel stops it if the test process dies (even by SIGKILL):
an interrupted session leaves no server running.

Durability settings are off (``fsync``, ``synchronous_commit``): the tests are about
what the store does, not about surviving a power cut, and the suite must stay fast.

Each test gets a database of its own (:meth:`PgServer.new_database`), so tests never see
each other's rows. When the binaries, the ``postgres`` user or psycopg are missing, every
test that needs the server is skipped with one line saying what is missing, and the
session header says it once more at the top.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

#: a role that must authenticate with its password (every other role is trusted on 127.0.0.1)
PW_USER, PW_PASSWORD = "edgeprune_pw", "s3cret-Pass"
_names = itertools.count(1)


def find_bindir() -> tuple[Path | None, str]:
    """The folder holding initdb and postgres, or (None, what is missing)."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).resolve().parent] if on_path else []

    def version(p: str) -> tuple[int, ...]:
        m = re.search(r"postgresql/(\d+)(?:\.(\d+))?/bin", p)
        return tuple(int(x) for x in m.groups() if x) if m else (0,)

    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)]
    for d in candidates:
        if all((d / exe).is_file() for exe in ("initdb", "postgres")):
            return d, ""
    return None, ("no PostgreSQL server binaries (initdb, postgres) on PATH or in /usr/lib/postgresql/*/bin; "
                  "`make system-deps` installs the Debian package postgresql")


def why_no_server() -> str | None:
    """None when a server can be started here, else the one line the skipped tests print."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]', a dependency of edgeprune)"
    bindir, why = find_bindir()
    if bindir is None:
        return why
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as (the postgresql package adds it)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    """A running server: ``url(dbname)`` for the trusted superuser, ``new_database()``."""

    bindir: Path
    root: Path
    port: int
    user: str = "postgres"
    log: Path = field(init=False)
    proc: subprocess.Popen | None = field(default=None, init=False)
    startup_s: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self.log = self.root / "server.log"

    def url(self, dbname: str, user: str | None = None, password: str | None = None) -> str:
        auth = (user or self.user) + (f":{password}" if password is not None else "")
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def admin(self, *statements: str, dbname: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(self.url(dbname), autocommit=True) as conn:
            for stmt in statements:
                conn.execute(stmt)

    def new_database(self, prefix: str = "t") -> str:
        """A new, empty database; its URL. (``FILE_COPY`` copies the template's files
        instead of writing them through the WAL; servers before 15 know only that way
        and have no ``STRATEGY``.)"""
        import psycopg

        name = f"{prefix}_{os.getpid()}_{next(_names)}"
        try:
            self.admin(f'CREATE DATABASE "{name}" TEMPLATE template0 STRATEGY FILE_COPY')
        except psycopg.errors.SyntaxError:
            self.admin(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)


def _as_server_user() -> dict:
    """``subprocess`` arguments that run a command as the server's user (root cannot)."""
    if os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam("postgres")
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _die_with_parent() -> None:
    """In the server's process before it starts: the kernel stops it (fast shutdown) when
    the test process dies, even by SIGKILL, so no server outlives its session."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG


def start_server(bindir: Path) -> PgServer:
    """initdb a fresh cluster and run ``postgres`` on it as a child of this process."""
    root = Path(tempfile.mkdtemp(prefix="edgeprune-pg-"))
    as_user = _as_server_user()
    if as_user:
        os.chown(root, as_user["user"], as_user["group"])
    data = root / "data"
    env = dict(os.environ, LC_ALL="C", LANG="C")
    subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync",
                    "-E", "UTF8", "--locale=C"], env=env, cwd=root, check=True, capture_output=True, text=True,
                   timeout=120, **as_user)
    server = PgServer(bindir=bindir, root=root, port=_free_port())
    sock = root / "sock"
    sock.mkdir()
    if as_user:
        os.chown(sock, as_user["user"], as_user["group"])
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {server.port}\nunix_socket_directories = '{sock}'\n"
                   "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 60\n"
                   "shared_buffers = 32MB\n")
    (data / "pg_hba.conf").write_text(
        "# written by tests/pg_fixture.py: loopback TCP only\n"
        f"host all {PW_USER} 127.0.0.1/32 scram-sha-256\n"
        "host all all 127.0.0.1/32 trust\n"
    )
    with open(server.log, "wb") as log:
        server.proc = subprocess.Popen([str(bindir / "postgres"), "-D", str(data)], env=env, cwd=root, stdout=log,
                                       stderr=subprocess.STDOUT, preexec_fn=_die_with_parent, **as_user)
    _wait_ready(server)
    server.admin(f"CREATE ROLE {PW_USER} LOGIN PASSWORD '{PW_PASSWORD}'")
    return server


def _wait_ready(server: PgServer, timeout_s: float = 60.0) -> None:
    import psycopg

    deadline = time.monotonic() + timeout_s
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {server.proc.returncode}: {server.log.read_text()[-2000:]}")
        try:
            psycopg.connect(server.url("postgres"), connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not accept connections in {timeout_s:.0f} s: "
                                   f"{server.log.read_text()[-2000:]}") from None
            time.sleep(0.1)


def stop_server(server: PgServer) -> None:
    """Fast shutdown (SIGINT: clients disconnected, no checkpoint wait), then the folder."""
    try:
        proc = server.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    finally:
        shutil.rmtree(server.root, ignore_errors=True)


# ------------------------------------------------------------------ pytest hooks and fixtures
def pytest_report_header(config) -> str:
    why = why_no_server()
    if why is None:
        return f"postgresql: tests run against a real server from {find_bindir()[0]}"
    return f"postgresql: SKIPPING the PostgreSQL tests: {why}"


@pytest.fixture(scope="session")
def pg_server():
    """The session's PostgreSQL server (skips the test, with the reason, when none can run)."""
    why = why_no_server()
    if why is not None:
        pytest.skip(f"PostgreSQL tests skipped: {why}")
    bindir, _ = find_bindir()
    started = time.monotonic()
    try:
        server = start_server(bindir)
    except (subprocess.CalledProcessError, RuntimeError) as exc:
        pytest.fail(f"could not start PostgreSQL from {bindir}: {getattr(exc, 'stderr', None) or exc}")
    server.startup_s = time.monotonic() - started
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture
def pg_url(pg_server) -> str:
    """The URL of a new, empty database on the session's server."""
    return pg_server.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def results_db(request, tmp_path):
    """A results database to test the store on: a SQLite file, and a PostgreSQL database
    (a fresh one on the session's server). Tests taking it run once on each engine."""
    if request.param == "sqlite":
        return tmp_path / "r.sqlite"
    return request.getfixturevalue("pg_url")
