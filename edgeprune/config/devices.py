"""Devices a user owns, from ``devices.yaml``.

``kind: local`` runs the bundle runner in a subprocess on this machine; ``kind: ssh``
runs it on a board over SSH (host keys verified against known_hosts). Both go through
the same deploy bundle, so numbers from either are comparable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgeprune.config.yamlfile import read_yaml, validate
from edgeprune.errors import ConfigError


class Device(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    kind: Literal["local", "ssh"] = "local"
    target: str | None = Field(None, description="default target for this device")
    host: str | None = None
    port: int = Field(22, ge=1, le=65535)
    user: str | None = None
    identity_file: str | None = None
    known_hosts: str | None = None
    ssh_config_alias: str | None = None
    python: str = "python3"
    workdir: str = "/tmp/edgeprune"
    env: dict[str, str] = Field(default_factory=dict)
    concurrency: int = Field(1, ge=1)
    emulated: bool = Field(False, description="timings meaningless (e.g. qemu); reports say so")
    connect_timeout_s: float = Field(10.0, gt=0)
    command_timeout_s: float = Field(900.0, gt=0)

    @model_validator(mode="after")
    def _ssh_needs_host(self) -> "Device":
        if self.kind == "ssh" and not (self.host or self.ssh_config_alias):
            raise ValueError("an ssh device needs 'host' (or 'ssh_config_alias')")
        return self


class DevicesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    devices: list[Device] = Field(default_factory=list)


LOCAL = Device(name="local", kind="local", target="host")


def devices_path(explicit: Path | None = None) -> Path | None:
    """$EDGEPRUNE_DEVICES, else ./devices.yaml, else none (only the built-in `local`)."""
    if explicit is not None:
        return explicit
    env = os.environ.get("EDGEPRUNE_DEVICES")
    if env:
        return Path(env)
    cand = Path.cwd() / "devices.yaml"
    return cand if cand.exists() else None


def load_devices(path: Path | None = None) -> list[Device]:
    p = devices_path(path)
    if p is None:
        return [LOCAL]
    if not p.exists():
        raise ConfigError(f"devices file {p} does not exist", "create it or drop --devices")
    data, node = read_yaml(p)
    parsed = validate(DevicesFile, data or {}, p, node)
    names = [d.name for d in parsed.devices]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{p}: device name(s) defined twice: {', '.join(dupes)}")
    devs = list(parsed.devices)
    if "local" not in names:
        devs.insert(0, LOCAL)
    return devs


def get_device(name: str, path: Path | None = None) -> Device:
    devs = load_devices(path)
    for d in devs:
        if d.name == name:
            return d
    raise ConfigError(
        f"unknown device '{name}'. Choose from: {', '.join(d.name for d in devs)}",
        "devices are defined in devices.yaml",
    )
