"""One authenticated SSH connection to a board: connect, run a command, move files.

Like Fabric's ``Connection``: a context manager that connects on first use and closes
on exit; :meth:`SSHConnection.run` returns a :class:`CommandResult`. The connection
knows nothing about bundles or benchmarks (that is :mod:`.executor`).

Connecting verifies the host key (:mod:`.host_keys`), authenticates with the device's
key (or the user's default keys / agent), and retries with backoff only what is
transient — a board that reboots, an sshd under load (refused, reset, timeout, a lost
banner). A bad key, a refused login or an unknown host fails at once: retrying cannot
fix those and would only delay the message.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import shlex
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path

import paramiko

from edgeprune.bench.ssh.address import resolve_address
from edgeprune.bench.ssh.command import CommandResult, build_command
from edgeprune.bench.ssh.host_keys import HostKeyPolicy, mismatch_error
from edgeprune.config.devices import Device
from edgeprune.errors import DeviceError
from edgeprune.signals import StopFlag

#: Failures worth a retry (connect) or a reconnect to rescue results (executor).
TRANSIENT: tuple[type[BaseException], ...] = (OSError, EOFError, paramiko.SSHException)

_KEEPALIVE_S = 15  # notices a board that vanished mid-run instead of waiting forever


def describe(exc: BaseException | None) -> str:
    """One short line for a connection failure ("connection refused", "timed out", ...)."""
    if exc is None:
        return "unknown error"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return "connection refused"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == errno.ECONNREFUSED:
        return "connection refused"
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _quiet_paramiko() -> None:
    # paramiko's transport thread logs tracebacks for failures we report ourselves;
    # a user who configured the "paramiko" logger keeps their setting.
    lg = logging.getLogger("paramiko")
    if lg.level == logging.NOTSET:
        lg.setLevel(logging.CRITICAL)


class SSHConnection:
    """One authenticated SSH connection to ``device`` (a context manager, like Fabric's)."""

    def __init__(self, device: Device, retries: int = 3, backoff_s: float = 0.5) -> None:
        self.device = device
        self.addr = resolve_address(device)
        self.retries = retries
        self.backoff_s = backoff_s
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None

    # --- connection -------------------------------------------------------------------
    def __enter__(self) -> "SSHConnection":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def connect(self) -> None:
        """Connect, retrying transient failures with exponential backoff (see the module doc)."""
        last: Exception | None = None
        for attempt in range(self.retries):
            try:
                self._connect_once()
                return
            except DeviceError:
                raise
            except TRANSIENT as exc:
                last = exc
                self.close()
                if attempt + 1 < self.retries:
                    time.sleep(self.backoff_s * (2**attempt))
        raise DeviceError(
            f"device '{self.device.name}': cannot connect to {self.addr.display} "
            f"after {self.retries} attempts: {describe(last)}",
            "is the board on, sshd running and the port right? check with: "
            + shlex.join(["ssh", "-p", str(self.addr.port), self.addr.display.rsplit(":", 1)[0]]),
        )

    def _connect_once(self) -> None:
        _quiet_paramiko()
        client = paramiko.SSHClient()
        kh = self.addr.known_hosts
        if kh.exists():
            try:
                client.load_host_keys(str(kh))
            except (OSError, paramiko.SSHException) as exc:
                raise DeviceError(f"device '{self.device.name}': cannot read known_hosts {kh}: {exc}") from None
        # load_host_keys would make paramiko rewrite the file on save(); the policy appends itself.
        client._host_keys_filename = None
        client.set_missing_host_key_policy(HostKeyPolicy(self.device, self.addr))
        t = self.device.connect_timeout_s
        sock = paramiko.ProxyCommand(self.addr.proxy_command) if self.addr.proxy_command else None
        try:
            client.connect(
                self.addr.hostname, port=self.addr.port, username=self.addr.user,
                key_filename=list(self.addr.key_files) or None,
                look_for_keys=not self.addr.key_files, allow_agent=not self.addr.key_files,
                timeout=t, banner_timeout=t, auth_timeout=t, channel_timeout=t, sock=sock,
            )
        except DeviceError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise mismatch_error(self.device, self.addr, exc) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            keys = ", ".join(self.addr.key_files) or "your default keys / ssh-agent"
            raise DeviceError(
                f"device '{self.device.name}': authentication failed for {self.addr.display} with {keys}: {exc}",
                "put the public key in ~/.ssh/authorized_keys of that user on the board (ssh-copy-id -i KEY.pub ...)",
            ) from None
        except socket.gaierror as exc:
            client.close()
            raise DeviceError(f"device '{self.device.name}': cannot resolve host '{self.addr.hostname}': {exc}") from None
        except Exception:
            client.close()
            raise
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(_KEEPALIVE_S)
        self._client = client

    def close(self) -> None:
        for obj in (self._sftp, self._client):
            try:
                if obj is not None:
                    obj.close()
            except Exception:
                pass
        self._sftp = self._client = None

    @property
    def alive(self) -> bool:
        t = self._client.get_transport() if self._client else None
        return bool(t and t.is_active())

    @property
    def transport(self) -> paramiko.Transport:
        """The connected transport (for port forwards, as :mod:`edgeprune.bench.rpc_tunnel` needs)."""
        if self._client is None:
            self.connect()
        transport = self._client.get_transport()
        if transport is None:
            raise DeviceError(f"device '{self.device.name}': the SSH connection is closed")
        return transport

    @property
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            self._sftp = paramiko.SFTPClient.from_transport(self.transport)
            self._sftp.get_channel().settimeout(self.device.command_timeout_s)
        return self._sftp

    # --- commands ---------------------------------------------------------------------
    def run(self, argv: list[str], timeout_s: float, env: dict[str, str] | None = None,
            stdin: bytes | None = None, on_stderr_line: Callable[[str], None] | None = None,
            on_stdout_line: Callable[[str], None] | None = None,
            start_clock: Callable[[str], bool] | None = None, stop: StopFlag | None = None) -> CommandResult:
        """Run ``argv`` on the device; the command line is :func:`build_command` of it.

        Output is streamed: ``on_stdout_line`` / ``on_stderr_line`` see each line as it
        arrives (progress, protocol markers). ``start_clock(line)`` may return True for a
        stderr line that starts the timeout, so time spent waiting for the board lock
        does not count against the run. A timeout or a lost connection returns
        ``exit_code=None``; killing what still runs there is the caller's business, as on
        a stop (a signal, or ``stop`` set while this runs in a worker thread).
        """
        cmd = build_command(argv, env or {})
        transport = self.transport
        chan = transport.open_session(timeout=self.device.connect_timeout_s)
        chan.exec_command(cmd)
        if stdin is not None:
            chan.sendall(stdin)
        chan.shutdown_write()
        out = _Lines(on_stdout_line)
        err = _Lines(on_stderr_line, start_clock)
        deadline = None if start_clock else time.monotonic() + timeout_s
        timed_out = False
        try:
            code, timed_out = self._pump(chan, transport, out, err, timeout_s, deadline, stop)
        finally:  # also on Ctrl-C: the channel goes, the transport stays usable to stop the run
            chan.close()
        return CommandResult(code, out.text(), err.text(), timed_out)

    @staticmethod
    def _pump(chan, transport, out: "_Lines", err: "_Lines", timeout_s: float,
              deadline: float | None, stop: StopFlag | None) -> tuple[int | None, bool]:
        """Feed the channel's output to the line handlers until it exits, the connection
        drops or the deadline passes: (exit code or None, timed out)."""
        timed_out = False
        while True:
            got = False
            if chan.recv_ready():
                out.feed(chan.recv(65536))
                got = True
            if chan.recv_stderr_ready():
                if err.feed(chan.recv_stderr(65536)) and deadline is None:
                    deadline = time.monotonic() + timeout_s
                got = True
            if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
            if not transport.is_active():
                break
            if deadline is not None and time.monotonic() > deadline:
                timed_out = True
                break
            if not got:
                if stop is not None:
                    stop.check()
                time.sleep(0.02)
        return (chan.recv_exit_status() if chan.exit_status_ready() else None), timed_out

    # --- files ------------------------------------------------------------------------
    def home(self) -> str:
        return self.sftp.normalize(".")

    def abspath(self, path: str) -> str:
        """``path`` on the board made absolute (``~`` and relative paths from the login's home)."""
        if path.startswith("~/"):
            return posixpath.join(self.home(), path[2:])
        if path == "~":
            return self.home()
        if not path.startswith("/"):
            return posixpath.join(self.home(), path)
        return posixpath.normpath(path)

    def makedirs(self, path: str) -> None:
        """``mkdir -p`` over SFTP; a file in the way is a DeviceError that names it."""
        sftp = self.sftp
        cur = "/"
        for p in (p for p in path.split("/") if p):
            cur = posixpath.join(cur, p)
            try:
                st = sftp.stat(cur)
            except FileNotFoundError:
                try:
                    sftp.mkdir(cur, 0o755)
                except OSError:
                    if not stat.S_ISDIR(sftp.stat(cur).st_mode):
                        raise
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise DeviceError(f"device '{self.device.name}': {cur} exists and is not a directory")

    def upload_tree(self, local: Path, remote: str, skip: set[str]) -> int:
        """Copy ``local`` into the (existing) remote directory; returns bytes sent.

        ``skip`` names top-level files left behind (earlier results and logs).
        """
        sftp = self.sftp
        sent = 0
        for root, dirs, files in os.walk(local):
            rel = Path(root).relative_to(local)
            rroot = posixpath.join(remote, *rel.parts) if rel.parts else remote
            dirs.sort()
            for d in dirs:
                sftp.mkdir(posixpath.join(rroot, d), 0o755)
            for f in sorted(files):
                if not rel.parts and f in skip:
                    continue
                lp = Path(root) / f
                sftp.put(str(lp), posixpath.join(rroot, f), confirm=True)
                sent += lp.stat().st_size
        return sent


class _Lines:
    """One output stream of a remote command: all its bytes, and each line to a callback."""

    def __init__(self, on_line: Callable[[str], None] | None,
                 starts_clock: Callable[[str], bool] | None = None) -> None:
        self.on_line, self.starts_clock = on_line, starts_clock
        self.data = bytearray()
        self._partial = bytearray()

    def feed(self, chunk: bytes) -> bool:
        """Take ``chunk``; True if one of its complete lines starts the clock."""
        self.data += chunk
        if self.on_line is None and self.starts_clock is None:
            return False
        self._partial += chunk
        started = False
        while b"\n" in self._partial:
            line, _, rest = bytes(self._partial).partition(b"\n")
            self._partial = bytearray(rest)
            text = line.decode(errors="replace")
            if self.starts_clock is not None and self.starts_clock(text):
                started = True
            if self.on_line is not None:
                self.on_line(text)
        return started

    def text(self) -> str:
        return self.data.decode(errors="replace")
