"""A throwaway OpenSSH server on a loopback port, for tests, benchmarks and demos.

It runs the system's ``sshd`` (Debian package openssh-server) in the foreground with a
config that needs no root: its own host key and user key in a temp dir, ``UsePAM no``,
``StrictModes no``, ``AuthorizedKeysFile`` pointing into the temp dir. Only the user
running it can log in (as that same user). ``devices()`` writes a matching device entry,
so the code under test is exactly what talks to a real board.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgeprune.config.devices import Device
from edgeprune.errors import DeviceError

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd")


def find_sshd() -> str | None:
    for c in SSHD_CANDIDATES:
        if os.access(c, os.X_OK):
            return c
    return shutil.which("sshd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL)


class LoopbackSSHD:
    """``with LoopbackSSHD() as sshd: dev = sshd.device("a")``."""

    def __init__(self, root: Path | None = None, port: int | None = None) -> None:
        self._own_root = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix="edgeprune-sshd-"))
        self.port = port or free_port()
        self.user = getpass.getuser()
        self.proc: subprocess.Popen | None = None

    @property
    def host_key(self) -> Path:
        return self.root / "ssh_host_ed25519_key"

    @property
    def user_key(self) -> Path:
        return self.root / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    def start(self) -> "LoopbackSSHD":
        sshd = find_sshd()
        if sshd is None:
            raise DeviceError("OpenSSH sshd is not installed", "apt-get install openssh-server")
        if not shutil.which("ssh-keygen"):
            raise DeviceError("ssh-keygen is not installed", "apt-get install openssh-client")
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.host_key.exists():
            _keygen(self.host_key, "edgeprune loopback host")
        if not self.user_key.exists():
            _keygen(self.user_key, "edgeprune loopback user")
        shutil.copy(self.user_key.with_suffix(".pub"), self.root / "authorized_keys")
        pub = self.host_key.with_suffix(".pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {pub[0]} {pub[1]}\n")
        cfg = self.root / "sshd_config"
        cfg.write_text(
            "\n".join([
                f"Port {self.port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {self.host_key}",
                f"PidFile {self.root / 'sshd.pid'}",
                f"AuthorizedKeysFile {self.root / 'authorized_keys'}",
                f"AllowUsers {self.user}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "PermitRootLogin prohibit-password",
                "X11Forwarding no",
                "PrintMotd no",
                "MaxStartups 100:30:200",
                "MaxSessions 100",
                "LogLevel ERROR",
                "Subsystem sftp internal-sftp",
                "",
            ])
        )
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)  # privilege separation dir
        self.proc = subprocess.Popen(
            [sshd, "-D", "-e", "-f", str(cfg)], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=open(self.root / "sshd.log", "ab"),
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DeviceError(f"sshd exited at start: {(self.root / 'sshd.log').read_text()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise DeviceError(f"sshd did not listen on 127.0.0.1:{self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "LoopbackSSHD":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def device(self, name: str = "loopback", python: str | None = None, workdir: str | None = None,
               **fields) -> Device:
        """A :class:`Device` that reaches this sshd (python defaults to this interpreter)."""
        values = dict(
            name=name, kind="ssh", host="127.0.0.1", port=self.port, user=self.user,
            identity_file=str(self.user_key), known_hosts=str(self.known_hosts),
            python=python or sys.executable, workdir=workdir or str(self.root / "work" / "default"),
        )
        return Device(**(values | fields))

    def devices_yaml(self, devices: list[Device], path: Path) -> Path:
        import yaml

        data = {"devices": [d.model_dump(exclude_defaults=True) | {"name": d.name, "kind": "ssh"} for d in devices]}
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path
