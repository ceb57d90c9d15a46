"""Running deploy bundles on a board over SSH (paramiko).

What a run does, in order::

    connect    host key verified against known_hosts (unknown -> refused, with the
               ssh-keyscan line to trust it), key auth, connect timeout, retries with
               backoff for transient failures (refused, reset, timeout, lost banner)
    upload     SFTP into a fresh remote directory <workdir>/run-<random> (mkdir fails if
               it exists, so two runs never share one)
    run        one fixed argv, quoted with shlex.join (no user string reaches the remote
               shell unquoted): [env K=V ...] PYTHON -c LAUNCHER WORKDIR SLOTS WAIT
               BUNDLE/runner.py BUNDLE. The launcher takes a per-board lock (flock on a
               slot file in the workdir, held across exec), makes itself a process group
               and execs the runner, so a timeout kills the whole group.
    download   results.jsonl, also after a failure or a timeout (finished jobs are kept)
    clean up   the remote directory is removed

At most ``device.concurrency`` runs use one board at once: a semaphore inside this
process plus the remote lock files, which also hold off other processes and machines.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import posixpath
import re
import secrets
import shlex
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeprune.bench.bundle import BenchJob, JobResult
from edgeprune.bench.executor import Executor
from edgeprune.config.devices import Device
from edgeprune.errors import BenchError, ConfigError, DeviceError, EdgepruneError

Log = Callable[[str], None]

#: env var equivalent of ``--insecure-accept-new-host-key``
ACCEPT_NEW_ENV = "EDGEPRUNE_INSECURE_ACCEPT_NEW_HOST_KEY"
_accept_new_default = False


def set_accept_new_host_keys(accept: bool) -> None:
    """Trust-on-first-use for hosts not in known_hosts (like ``ssh -o StrictHostKeyChecking=accept-new``).

    A *changed* key is always refused. Off unless the user asks for it.
    """
    global _accept_new_default
    _accept_new_default = accept


def _accept_new() -> bool:
    return _accept_new_default or os.environ.get(ACCEPT_NEW_ENV) == "1"


# Runs on the device with the device's python; every value arrives as an argv item.
# It waits for a free slot lock in the workdir (flock, released by the kernel when the
# runner exits or is killed), becomes a process-group leader, and execs the runner.
_LAUNCHER = r"""
import fcntl, os, sys, time
workdir, slots, wait_s, argv = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
deadline, said, fd = time.monotonic() + wait_s, False, None
while fd is None:
    for i in range(slots):
        path = os.path.join(workdir, ".edgeprune-lock.%d" % i)
        try:
            f = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            f = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fd = f
            break
        except OSError:
            os.close(f)
    if fd is None:
        if not said:
            sys.stderr.write("EDGEPRUNE_LOCK_WAIT\n"); sys.stderr.flush(); said = True
        if time.monotonic() > deadline:
            sys.stderr.write("EDGEPRUNE_LOCK_TIMEOUT\n"); sys.stderr.flush(); sys.exit(75)
        time.sleep(0.5)
os.set_inheritable(fd, True)
try:
    os.setpgid(0, 0)
except OSError:
    pass
sys.stderr.write("EDGEPRUNE_PGID=%d\n" % os.getpgrp()); sys.stderr.flush()
os.execv(sys.executable, [sys.executable] + argv)
"""

# SIGTERM to the run's process group, SIGKILL if it is still there after a grace period.
_KILLER = r"""
import os, signal, sys, time
pgid = int(sys.argv[1])
try:
    os.killpg(pgid, signal.SIGTERM)
except ProcessLookupError:
    sys.exit(0)
for _ in range(30):
    time.sleep(0.1)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        sys.exit(0)
os.killpg(pgid, signal.SIGKILL)
"""

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LOCK_TIMEOUT_EXIT = 75

# Serialises runs on one board inside this process (the remote lock covers the rest).
_board_slots: dict[tuple[str, int, str], threading.BoundedSemaphore] = {}
_board_slots_lock = threading.Lock()
_known_hosts_lock = threading.Lock()
# Probes reused by the runtime pre-check of later runs in this process (not by `probe()`).
_probe_cache: dict[tuple, tuple[float, dict[str, Any]]] = {}
PROBE_CACHE_S = 300.0


def _board_semaphore(key: tuple[str, int, str], slots: int) -> threading.BoundedSemaphore:
    with _board_slots_lock:
        sem = _board_slots.get(key)
        if sem is None:
            sem = _board_slots[key] = threading.BoundedSemaphore(slots)
        return sem


def _quiet_paramiko() -> None:
    # paramiko's transport thread logs tracebacks for failures we report ourselves.
    lg = logging.getLogger("paramiko")
    if lg.level == logging.NOTSET:
        lg.setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class SSHAddress:
    """Where and as whom to connect, after applying ~/.ssh/config for an alias."""

    hostname: str
    port: int
    user: str | None
    key_files: tuple[str, ...]
    known_hosts: Path
    proxy_command: str | None = None

    @property
    def display(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.hostname}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


def resolve_address(device: Device) -> SSHAddress:
    """Device fields win over ~/.ssh/config; the config fills in what the device leaves out."""
    import paramiko

    cfg: dict[str, Any] = {}
    if device.ssh_config_alias:
        path = Path("~/.ssh/config").expanduser()
        if path.exists():
            cfg = dict(paramiko.SSHConfig.from_path(str(path)).lookup(device.ssh_config_alias))
        else:
            cfg = {"hostname": device.ssh_config_alias}
    set_fields = device.model_fields_set
    hostname = device.host or cfg.get("hostname") or device.ssh_config_alias
    if not hostname:
        raise ConfigError(f"device '{device.name}' has no host")
    port = device.port if ("port" in set_fields or "port" not in cfg) else int(cfg["port"])
    user = device.user or cfg.get("user")
    if device.identity_file:
        keys: tuple[str, ...] = (str(Path(device.identity_file).expanduser()),)
    else:
        keys = tuple(str(Path(k).expanduser()) for k in cfg.get("identityfile", []))
    for k in keys:
        if device.identity_file and not Path(k).exists():
            raise ConfigError(f"device '{device.name}': identity_file {k} does not exist")
    if device.known_hosts:
        kh = Path(device.known_hosts).expanduser()
    elif cfg.get("userknownhostsfile"):
        kh = Path(str(cfg["userknownhostsfile"]).split()[0]).expanduser()
    else:
        kh = Path("~/.ssh/known_hosts").expanduser()
    return SSHAddress(hostname, port, user, keys, kh, cfg.get("proxycommand"))


class _HostKeyPolicy:
    """Refuse keys of unknown hosts, or (asked for explicitly) record them: accept-new."""

    def __init__(self, device: Device, addr: SSHAddress, accept_new: bool) -> None:
        self.device, self.addr, self.accept_new = device, addr, accept_new

    def missing_host_key(self, client, hostname: str, key) -> None:
        fp = _fingerprint(key)
        if not self.accept_new:
            kh = self.addr.known_hosts
            scan = shlex.join(["ssh-keyscan", "-p", str(self.addr.port), "-t", _keyscan_type(key), self.addr.hostname])
            raise DeviceError(
                f"device '{self.device.name}': host key of {self.addr.hostname}:{self.addr.port} is not in "
                f"{kh} ({key.get_name()} {fp}); refusing to connect",
                f"if that is the board's key, trust it with: {scan} >> {shlex.quote(str(kh))}  "
                "(check the fingerprint on the board: ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), "
                "or rerun with --insecure-accept-new-host-key",
            )
        _append_known_host(self.addr.known_hosts, self.addr.known_hosts_name, key)
        client.get_host_keys().add(self.addr.known_hosts_name, key.get_name(), key)
        print(
            f"warning: device '{self.device.name}': trusted new host key {key.get_name()} {fp} for "
            f"{self.addr.known_hosts_name}, saved to {self.addr.known_hosts}",
            file=sys.stderr,
        )


def _fingerprint(key) -> str:
    import base64
    import hashlib

    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _keyscan_type(key) -> str:
    name = key.get_name()
    return {"ssh-ed25519": "ed25519", "ssh-rsa": "rsa"}.get(name, "ecdsa" if name.startswith("ecdsa") else name)


def _append_known_host(path: Path, name: str, key) -> None:
    with _known_hosts_lock:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(f"{name} {key.get_name()} {key.get_base64()}\n")


@dataclass
class CommandResult:
    exit_code: int | None  # None: killed on timeout or connection lost
    stdout: str
    stderr: str
    timed_out: bool = False


class SSHConnection:
    """One authenticated SSH connection to a device (a context manager, like Fabric's)."""

    def __init__(self, device: Device, accept_new_host_key: bool | None = None,
                 retries: int = 3, backoff_s: float = 0.5) -> None:
        _init_transient()
        self.device = device
        self.addr = resolve_address(device)
        self.accept_new = _accept_new() if accept_new_host_key is None else accept_new_host_key
        self.retries = retries
        self.backoff_s = backoff_s
        self._client = None
        self._sftp = None

    # --- connection -------------------------------------------------------------------
    def __enter__(self) -> "SSHConnection":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def connect(self) -> None:
        """Connect with retries: a board that reboots or an sshd under load is transient;
        a bad key, a refused login or an unknown host is not and fails at once."""
        last: Exception | None = None
        for attempt in range(self.retries):
            try:
                self._connect_once()
                return
            except DeviceError:
                raise
            except _TRANSIENT as exc:
                last = exc
                self.close()
                if attempt + 1 < self.retries:
                    time.sleep(self.backoff_s * (2**attempt))
        raise DeviceError(
            f"device '{self.device.name}': cannot connect to {self.addr.display} "
            f"after {self.retries} attempts: {_describe(last)}",
            "is the board on, sshd running and the port right? check with: "
            + shlex.join(["ssh", "-p", str(self.addr.port), self.addr.display.rsplit(":", 1)[0]]),
        )

    def _connect_once(self) -> None:
        import paramiko

        _quiet_paramiko()
        client = paramiko.SSHClient()
        kh = self.addr.known_hosts
        if kh.exists():
            try:
                client.load_host_keys(str(kh))
            except (OSError, paramiko.SSHException) as exc:
                raise DeviceError(f"device '{self.device.name}': cannot read known_hosts {kh}: {exc}") from None
        # load_host_keys would make paramiko rewrite the file on save(); we append ourselves.
        client._host_keys_filename = None
        client.set_missing_host_key_policy(_HostKeyPolicy(self.device, self.addr, self.accept_new))
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
            raise DeviceError(
                f"device '{self.device.name}': HOST KEY MISMATCH for {self.addr.known_hosts_name}: the board "
                f"presented {exc.key.get_name()} {_fingerprint(exc.key)}, {kh} expects {_fingerprint(exc.expected_key)}; "
                "refusing to connect (someone may be intercepting the connection)",
                "if the board was reinstalled, remove the old key with: "
                + shlex.join(["ssh-keygen", "-R", self.addr.known_hosts_name, "-f", str(kh)]),
            ) from None
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
            transport.set_keepalive(15)
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
    def sftp(self):
        if self._client is None:
            self.connect()
        if self._sftp is None:
            self._sftp = self._client.open_sftp()
            self._sftp.get_channel().settimeout(self.device.command_timeout_s)
        return self._sftp

    # --- commands ---------------------------------------------------------------------
    def run(self, argv: list[str], timeout_s: float, env: dict[str, str] | None = None,
            stdin: bytes | None = None, on_stderr_line: Callable[[str], None] | None = None,
            on_stdout_line: Callable[[str], None] | None = None,
            start_clock: Callable[[str], bool] | None = None) -> CommandResult:
        """Run ``argv`` on the device. The command line is ``shlex.join`` of a fixed argv.

        ``start_clock(line)`` may return True for a stderr line that starts the timeout
        (time spent waiting for the board lock does not count against the run).
        """
        if self._client is None:
            self.connect()
        cmd = build_command(argv, env or {})
        transport = self._client.get_transport()
        chan = transport.open_session(timeout=self.device.connect_timeout_s)
        chan.exec_command(cmd)
        if stdin is not None:
            chan.sendall(stdin)
        chan.shutdown_write()
        out, err = bytearray(), bytearray()
        buf, obuf = bytearray(), bytearray()
        deadline = None if start_clock else time.monotonic() + timeout_s
        timed_out = False
        while True:
            got = False
            if chan.recv_ready():
                data = chan.recv(65536)
                out += data
                got = True
                if on_stdout_line:
                    obuf += data
                    while b"\n" in obuf:
                        line, _, rest = bytes(obuf).partition(b"\n")
                        obuf = bytearray(rest)
                        on_stdout_line(line.decode(errors="replace"))
            if chan.recv_stderr_ready():
                data = chan.recv_stderr(65536)
                err += data
                buf += data
                got = True
                while b"\n" in buf:
                    line, _, rest = bytes(buf).partition(b"\n")
                    buf = bytearray(rest)
                    text = line.decode(errors="replace")
                    if start_clock and deadline is None and start_clock(text):
                        deadline = time.monotonic() + timeout_s
                    if on_stderr_line:
                        on_stderr_line(text)
            if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
            if not transport.is_active():
                break
            if deadline is not None and time.monotonic() > deadline:
                timed_out = True
                break
            if not got:
                time.sleep(0.02)
        code = chan.recv_exit_status() if chan.exit_status_ready() else None
        chan.close()
        return CommandResult(code, out.decode(errors="replace"), err.decode(errors="replace"), timed_out)

    # --- files ------------------------------------------------------------------------
    def home(self) -> str:
        return self.sftp.normalize(".")

    def abspath(self, path: str) -> str:
        if path.startswith("~/"):
            return posixpath.join(self.home(), path[2:])
        if path == "~":
            return self.home()
        if not path.startswith("/"):
            return posixpath.join(self.home(), path)
        return posixpath.normpath(path)

    def makedirs(self, path: str) -> None:
        sftp = self.sftp
        parts = [p for p in path.split("/") if p]
        cur = "/"
        for p in parts:
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
        """Copy ``local`` into the (existing) remote directory; returns bytes sent."""
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


_TRANSIENT: tuple[type[BaseException], ...] = (OSError, EOFError)


def _init_transient() -> None:
    import paramiko

    global _TRANSIENT
    _TRANSIENT = (OSError, EOFError, paramiko.SSHException)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    import paramiko

    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return "connection refused"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == errno.ECONNREFUSED:
        return "connection refused"
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def build_command(argv: list[str], env: dict[str, str]) -> str:
    """The remote command line: ``[env K=V ...] argv...``, every item shell-quoted."""
    if not argv:
        raise ValueError("empty argv")
    for k in env:
        if not _ENV_NAME.match(k):
            raise ConfigError(f"environment variable name {k!r} is not valid (letters, digits, _; not first a digit)")
    if argv[0].startswith("-"):
        raise ConfigError(f"remote program {argv[0]!r} must not start with '-'")
    prefix = ["env", *[f"{k}={v}" for k, v in env.items()]] if env else []
    return shlex.join(prefix + list(argv))


def _safe_component(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:40] or "device"


class SSHExecutor(Executor):
    """Runs deploy bundles on ``device`` over SSH; see the module docstring."""

    def __init__(self, device: Device, accept_new_host_key: bool | None = None, log: Log | None = None,
                 keep_remote: bool | None = None) -> None:
        _init_transient()
        if device.kind != "ssh":
            raise DeviceError(f"device '{device.name}' is not an SSH device")
        if device.python.startswith("-"):
            raise ConfigError(f"device '{device.name}': python {device.python!r} must not start with '-'")
        for k in device.env:
            if not _ENV_NAME.match(k):
                raise ConfigError(f"device '{device.name}': env name {k!r} is not a valid variable name")
        self.device = device
        self.name = device.name
        self.accept_new = accept_new_host_key
        self.log: Log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.keep_remote = os.environ.get("EDGEPRUNE_KEEP_REMOTE") == "1" if keep_remote is None else keep_remote
        self._probe: dict[str, Any] | None = None

    def connection(self) -> SSHConnection:
        return SSHConnection(self.device, accept_new_host_key=self.accept_new)

    # --- probe ------------------------------------------------------------------------
    def probe(self) -> dict[str, Any]:
        """``runner.py --probe`` on the device: arch, CPU, Python, runtimes (always fresh)."""
        with self.connection() as conn:
            self._probe = self._probe_with(conn)
        return self._probe

    def _probe_with(self, conn: SSHConnection) -> dict[str, Any]:
        import json

        from edgeprune.bench.bundle import RUNNER_SOURCE

        # The runner arrives on stdin: nothing to upload or clean up for a probe.
        r = conn.run([self.device.python, "-", "--probe"], self.device.command_timeout_s,
                     env=self.device.env, stdin=RUNNER_SOURCE.read_bytes())
        if r.timed_out:
            raise DeviceError(f"device '{self.device.name}': probe timed out after {self.device.command_timeout_s:.0f} s")
        if r.exit_code != 0:
            raise DeviceError(
                f"device '{self.device.name}': cannot run {self.device.python!r} there: {_last_line(r.stderr)}",
                "set `python:` in devices.yaml to a Python 3 on the board (e.g. /home/pi/venv/bin/python)",
            )
        try:
            return json.loads(r.stdout[r.stdout.index("{"):])
        except (json.JSONDecodeError, ValueError):
            raise DeviceError(f"device '{self.device.name}': probe printed no JSON: {r.stdout[-200:]!r}") from None

    # --- run --------------------------------------------------------------------------
    def run_bundle(self, bundle_dir: Path, timeout_s: float, only: list[str] | None = None) -> list[JobResult]:
        bundle_dir = Path(bundle_dir)
        jobs = _read_jobs(bundle_dir)
        if only:
            known = {j.id for j in jobs}
            unknown = [o for o in only if o not in known]
            if unknown:
                raise BenchError(f"unknown job id(s) {unknown}; the bundle has {sorted(known)}")
            jobs = [j for j in jobs if j.id in set(only)]
        else:
            only = None
        addr = resolve_address(self.device)
        key = (addr.hostname, addr.port, self.device.workdir)
        sem = _board_semaphore(key, self.device.concurrency)
        if not sem.acquire(blocking=False):
            self.log(f"device '{self.device.name}' is busy with another run of this process; waiting ...")
            sem.acquire()
        try:
            return self._run_locked(bundle_dir, jobs, timeout_s, only)
        finally:
            sem.release()

    def _run_locked(self, bundle_dir: Path, jobs: list[BenchJob], timeout_s: float,
                    only: list[str] | None) -> list[JobResult]:
        dev = self.device
        local_results = bundle_dir / "results.jsonl"
        if only is None and local_results.exists():
            local_results.unlink()  # a full run starts clean; partial runs append (as LocalExecutor)
        conn = self.connection()
        conn.connect()
        remote_dir = None
        missing: dict[str, str] = {}
        try:
            missing = self._missing_runtimes(conn, jobs)
            runnable = [j for j in jobs if j.backend not in missing]
            if not runnable:
                which = ", ".join(sorted(missing))
                if self._probe is not None and self._probe.get("numpy", "") is None:
                    which = "numpy, " + which
                raise DeviceError(
                    f"device '{dev.name}': {which} not installed for {dev.python} on the board",
                    "; ".join(missing.values()) + f" (see: edgeprune devices check {dev.name})",
                )
            workdir = conn.abspath(dev.workdir)
            t0 = time.monotonic()
            try:
                conn.makedirs(workdir)
                rdir = posixpath.join(workdir, f"run-{_safe_component(dev.name)}-{secrets.token_hex(6)}")
                conn.sftp.mkdir(rdir, 0o700)  # fails if it exists: a fresh directory
                remote_dir = rdir
                sent = conn.upload_tree(bundle_dir, remote_dir, skip={"results.jsonl", "runner.log"})
            except OSError as exc:
                if not conn.alive:
                    raise
                raise DeviceError(
                    f"device '{dev.name}': cannot upload the bundle into {workdir}: {_describe(exc)}",
                    "is `workdir` writable by that user and the board's disk not full?",
                ) from None
            self.log(f"uploaded bundle to {dev.name}:{remote_dir} ({sent / 1e6:.1f} MB, {time.monotonic() - t0:.1f} s)")
            ids = [j.id for j in runnable]
            argv = [dev.python, "-c", _LAUNCHER, workdir, str(dev.concurrency), str(dev.command_timeout_s),
                    posixpath.join(remote_dir, "runner.py"), remote_dir]
            if only is not None or len(runnable) != len(jobs):
                argv += ["--only", *ids]
            outcome = self._execute(conn, argv, timeout_s)
            results = self._download_results(conn, remote_dir, bundle_dir)
            self._write_log(bundle_dir, outcome)
        except EdgepruneError:
            raise
        except _TRANSIENT as exc:
            # The connection broke mid-run: reconnect once to rescue finished results.
            self.log(f"device '{dev.name}': connection lost ({_describe(exc)}); fetching finished results ...")
            outcome = _Outcome(None, "", f"connection to the board lost: {_describe(exc)}", lost=True)
            results = []
            if remote_dir is not None:
                conn.close()
                try:
                    conn.connect()
                    results = self._download_results(conn, remote_dir, bundle_dir)
                except (EdgepruneError, *_TRANSIENT):
                    pass
        finally:
            if remote_dir is not None and not self.keep_remote:
                self._cleanup(conn, remote_dir)
            conn.close()
        return self._complete(jobs, results, missing, outcome, timeout_s)

    def _missing_runtimes(self, conn: SSHConnection, jobs: list[BenchJob]) -> dict[str, str]:
        """backend -> install hint, for job backends whose runtime the board lacks."""
        from edgeprune.bench.install import missing_runtimes

        if self._probe is None:
            key = (conn.addr.hostname, conn.addr.port, conn.addr.user, self.device.python,
                   tuple(sorted(self.device.env.items())))
            hit = _probe_cache.get(key)
            if hit is not None and time.monotonic() - hit[0] < PROBE_CACHE_S:
                self._probe = hit[1]
            else:
                self._probe = self._probe_with(conn)
                _probe_cache[key] = (time.monotonic(), self._probe)
        return missing_runtimes(self._probe, sorted({j.backend for j in jobs}), self.device.python)

    def _execute(self, conn: SSHConnection, argv: list[str], timeout_s: float) -> "_Outcome":
        dev = self.device
        pgid: list[int] = []

        def on_line(line: str) -> None:
            if line.startswith("EDGEPRUNE_PGID="):
                pgid.append(int(line.split("=", 1)[1]))
            elif line == "EDGEPRUNE_LOCK_WAIT":
                self.log(f"device '{dev.name}' is busy (another benchmark holds its lock); waiting ...")

        def on_out(line: str) -> None:
            if line.startswith("edgeprune-runner: "):
                self.log(f"{dev.name}: {line[len('edgeprune-runner: '):]}")

        r = conn.run(argv, timeout_s, env=dict(dev.env), on_stderr_line=on_line, on_stdout_line=on_out,
                     start_clock=lambda line: line.startswith("EDGEPRUNE_PGID="))
        if r.timed_out:
            self.log(f"device '{dev.name}': run exceeded {timeout_s:.0f} s; killing it (finished jobs are kept)")
            if pgid:
                try:
                    conn.run([dev.python, "-c", _KILLER, str(pgid[0])], min(dev.command_timeout_s, 60.0))
                except _TRANSIENT:
                    pass
            return _Outcome(None, r.stdout, r.stderr, timed_out=True)
        if r.exit_code is None:
            return _Outcome(None, r.stdout, r.stderr or "connection to the board lost", lost=True)
        if r.exit_code == _LOCK_TIMEOUT_EXIT and "EDGEPRUNE_LOCK_TIMEOUT" in r.stderr:
            raise DeviceError(
                f"device '{dev.name}': still busy after waiting {dev.command_timeout_s:.0f} s for its benchmark lock",
                f"another run holds {dev.workdir}/.edgeprune-lock.*; try again later",
            )
        return _Outcome(r.exit_code, r.stdout, r.stderr)

    def _download_results(self, conn: SSHConnection, remote_dir: str, bundle_dir: Path) -> list[JobResult]:
        """This run's results.jsonl from the board, appended to the local one."""
        from edgeprune.bench.executor import parse_results

        remote = posixpath.join(remote_dir, "results.jsonl")
        tmp = bundle_dir / f".results.{secrets.token_hex(4)}.jsonl"
        try:
            conn.sftp.get(remote, str(tmp))
        except FileNotFoundError:
            return []
        try:
            text = tmp.read_text(errors="replace")
        finally:
            tmp.unlink(missing_ok=True)
        with open(bundle_dir / "results.jsonl", "a") as fh:
            fh.write(text if not text or text.endswith("\n") else text + "\n")
        return parse_results(text)

    @staticmethod
    def _write_log(bundle_dir: Path, outcome: "_Outcome") -> None:
        try:
            (bundle_dir / "runner.log").write_text(
                "--- stdout ---\n" + outcome.stdout + "\n--- stderr ---\n" + outcome.stderr)
        except OSError:
            pass

    def _cleanup(self, conn: SSHConnection, remote_dir: str) -> None:
        try:
            if not conn.alive:
                conn.close()
                conn.connect()
            conn.run(["rm", "-rf", "--", remote_dir], min(self.device.command_timeout_s, 120.0))
        except Exception as exc:  # cleanup must not hide the run's outcome
            self.log(f"warning: device '{self.device.name}': could not remove {remote_dir}: {_describe(exc)}")

    def _complete(self, jobs: list[BenchJob], results: list[JobResult], missing: dict[str, str],
                  outcome: "_Outcome", timeout_s: float) -> list[JobResult]:
        """One result per job: finished ones as the runner wrote them, the rest failed with why."""
        dev = self.device
        by_id = {r.id: r for r in results}
        if outcome.exit_code not in (0, 1, None) and not by_id:
            # The runner died before any job finished: that is the device's problem, say why.
            raise DeviceError(
                f"device '{dev.name}': the runner failed (exit {outcome.exit_code}): {_last_line(outcome.stderr)}",
                f"see: edgeprune devices check {dev.name}",
            )
        if not by_id and (outcome.timed_out or outcome.lost):
            what = f"timed out after {timeout_s:g} s" if outcome.timed_out else _last_line(outcome.stderr)
            raise BenchError(f"benchmark on device '{dev.name}' produced no results: {what}")
        if outcome.timed_out:
            why = f"timed out after {timeout_s:.0f} s on device '{dev.name}' (run killed)"
        elif outcome.lost:
            why = f"device '{dev.name}': {_last_line(outcome.stderr)}"
        elif outcome.exit_code not in (0, None):
            why = f"runner exited with {outcome.exit_code} on device '{dev.name}': {_last_line(outcome.stderr)}"
        else:
            why = f"no result from the runner on device '{dev.name}'"
        out: list[JobResult] = []
        for j in jobs:
            if j.id in by_id:
                out.append(by_id[j.id])
            elif j.backend in missing:
                out.append(JobResult(id=j.id, ok=False, backend=j.backend,
                                     error=f"{j.backend} is not installed on device '{dev.name}' ({missing[j.backend]})"))
            else:
                out.append(JobResult(id=j.id, ok=False, backend=j.backend, error=why))
        return out


@dataclass
class _Outcome:
    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    lost: bool = False


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip() and not ln.startswith("EDGEPRUNE_")]
    return lines[-1].strip() if lines else "(no output)"


def _read_jobs(bundle_dir: Path) -> list[BenchJob]:
    import json

    path = bundle_dir / "manifest.json"
    if not path.exists():
        raise DeviceError(f"{bundle_dir} is not a deploy bundle (no manifest.json)")
    data = json.loads(path.read_text())
    return [BenchJob.from_dict(j) for j in data.get("jobs", [])]
