"""Host-key verification: known_hosts in, a refusal that says how to fix it out.

The policy is the device's own setting (:attr:`Device.host_key_policy`, see
:mod:`edgeprune.config.devices`):

* ``verify`` (default): a host whose key is not in known_hosts is refused, with its
  SHA256 fingerprint and the ``ssh-keyscan`` line that trusts it;
* ``accept-new``: a key seen for the first time is trusted and appended to known_hosts,
  like OpenSSH's ``StrictHostKeyChecking accept-new``.

A *changed* key is refused under both (paramiko raises ``BadHostKeyException`` before
any policy is asked), with the ``ssh-keygen -R`` line for a reinstalled board.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import shlex
import sys
from pathlib import Path

from edgeprune.bench.ssh.address import SSHAddress
from edgeprune.config.devices import Device
from edgeprune.errors import DeviceError


def fingerprint(key) -> str:
    """``SHA256:...`` as ``ssh-keygen -lf`` prints it, to compare on the board."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _keyscan_type(key) -> str:
    name = key.get_name()
    return {"ssh-ed25519": "ed25519", "ssh-rsa": "rsa"}.get(name, "ecdsa" if name.startswith("ecdsa") else name)


def append_known_host(path: Path, name: str, key) -> None:
    """Append ``name``'s key to known_hosts unless it is already there.

    ``flock`` serialises writers, whether other processes or threads of this one (a
    lock is per open file), so ``devices check`` of several new boards at once cannot
    interleave lines or add one twice.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    line = f"{name} {key.get_name()} {key.get_base64()}"
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        if line not in (ln.strip() for ln in fh):
            fh.write(line + "\n")


class HostKeyPolicy:
    """paramiko's missing-host-key hook: refuse (``verify``) or record (``accept-new``)."""

    def __init__(self, device: Device, addr: SSHAddress) -> None:
        self.device, self.addr = device, addr

    def missing_host_key(self, client, hostname: str, key) -> None:
        fp = fingerprint(key)
        kh = self.addr.known_hosts
        if self.device.host_key_policy != "accept-new":
            scan = shlex.join(["ssh-keyscan", "-p", str(self.addr.port), "-t", _keyscan_type(key), self.addr.hostname])
            raise DeviceError(
                f"device '{self.device.name}': host key of {self.addr.hostname}:{self.addr.port} is not in "
                f"{kh} ({key.get_name()} {fp}); refusing to connect",
                f"if that is the board's key, trust it with: {scan} >> {shlex.quote(str(kh))}  "
                "(check the fingerprint on the board: ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), "
                "or rerun with --insecure-accept-new-host-key",
            )
        append_known_host(kh, self.addr.known_hosts_name, key)
        client.get_host_keys().add(self.addr.known_hosts_name, key.get_name(), key)
        print(
            f"warning: device '{self.device.name}': trusted new host key {key.get_name()} {fp} for "
            f"{self.addr.known_hosts_name}, saved to {kh}",
            file=sys.stderr,
        )


def mismatch_error(device: Device, addr: SSHAddress, exc) -> DeviceError:
    """The refusal for a changed host key (paramiko's ``BadHostKeyException``)."""
    kh = addr.known_hosts
    return DeviceError(
        f"device '{device.name}': HOST KEY MISMATCH for {addr.known_hosts_name}: the board "
        f"presented {exc.key.get_name()} {fingerprint(exc.key)}, {kh} expects {fingerprint(exc.expected_key)}; "
        "refusing to connect (someone may be intercepting the connection)",
        "if the board was reinstalled, remove the old key with: "
        + shlex.join(["ssh-keygen", "-R", addr.known_hosts_name, "-f", str(kh)]),
    )
