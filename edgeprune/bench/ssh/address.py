"""Where and as whom to connect: a device's fields, completed from ~/.ssh/config.

Users who already reach a board with ``ssh pi-lab-1`` name that alias
(``ssh_config_alias``) instead of repeating host, port, user, key and known_hosts in
devices.yaml. A field set in devices.yaml wins over the ssh config, as a command-line
option wins over the config in OpenSSH.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeprune.config.devices import Device
from edgeprune.errors import ConfigError


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
        """The host as OpenSSH writes it in known_hosts (``[host]:port`` off port 22)."""
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
