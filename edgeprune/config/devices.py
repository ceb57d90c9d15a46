"""Devices a user owns, from ``devices.yaml``.

``kind: local`` runs the bundle runner in a subprocess on this machine; ``kind: ssh``
runs it on a board over SSH (host keys verified against known_hosts). Both go through
the same deploy bundle, so numbers from either are comparable.

Host-key trust is a device setting (:attr:`Device.host_key_policy`), not process state:
``verify`` (the default) refuses a host whose key is not in known_hosts; ``accept-new``
trusts and saves a key seen for the first time (OpenSSH's ``StrictHostKeyChecking
accept-new``). A *changed* key is refused under both. The user asks for ``accept-new``
per device in devices.yaml, for one run with ``--insecure-accept-new-host-key``, or
with ``$EDGEPRUNE_INSECURE_ACCEPT_NEW_HOST_KEY=1``; :func:`load_devices` turns the last
two into the field, so the SSH code below only ever reads the device it is given.

``board_kind`` names boards that are interchangeable (same board, OS and runtimes): they
share one latency table (:attr:`Device.table_device`, ``kind:<board_kind>``), and
``edgeprune device-model build --kind K`` splits its measurement over every reachable
board of kind K (docs/board-farm.md). ``cpu_affinity`` pins the device's runner (and the
worker processes and runtime threads it starts) to those CPUs: a board shared with other
work, or several "boards" on one host, each get cores of their own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgeprune.config.yamlfile import read_yaml, validate
from edgeprune.errors import ConfigError

#: What to do with an SSH host whose key is not in known_hosts (a changed key is always refused).
HostKeyPolicy = Literal["verify", "accept-new"]

#: ``=1`` asks for ``accept-new`` on every device loaded in this process (as the CLI flag does).
ACCEPT_NEW_ENV = "EDGEPRUNE_INSECURE_ACCEPT_NEW_HOST_KEY"


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
    host_key_policy: HostKeyPolicy = Field(
        "verify", description="unknown host key: refuse (verify) or trust and save it (accept-new)")
    ssh_config_alias: str | None = None
    python: str = "python3"
    workdir: str = "/tmp/edgeprune"
    env: dict[str, str] = Field(default_factory=dict)
    concurrency: int = Field(1, ge=1)
    emulated: bool = Field(False, description="timings meaningless (e.g. qemu); reports say so")
    connect_timeout_s: float = Field(10.0, gt=0)
    command_timeout_s: float = Field(900.0, gt=0)
    board_kind: str | None = Field(None, min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$",
                                   description="boards of one kind share a latency table and a device-model farm")
    cpu_affinity: list[int] | None = Field(None, description="CPUs the runner is pinned to ([0, 1] or \"0-3\")")

    @field_validator("cpu_affinity", mode="before")
    @classmethod
    def _cores(cls, v: object) -> object:
        """``"0-3,6"``, ``3`` or ``[0, 1]`` -> a sorted list of distinct CPU ids."""
        if v is None or isinstance(v, bool):
            return v
        if isinstance(v, int):
            return [v]
        if isinstance(v, str):
            from edgeprune.runner.affinity import parse_cores

            try:
                v = parse_cores(v)
            except ValueError:
                raise ValueError(f"{v!r} is not a CPU list (e.g. \"0-3\" or \"0,2\")") from None
        return v

    @field_validator("cpu_affinity", mode="after")
    @classmethod
    def _some_cores(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(c < 0 for c in v)):
            raise ValueError("cpu_affinity needs at least one CPU id, none negative")
        return None if v is None else sorted(set(v))

    @model_validator(mode="after")
    def _ssh_needs_host(self) -> "Device":
        if self.kind == "ssh" and not (self.host or self.ssh_config_alias):
            raise ValueError("an ssh device needs 'host' (or 'ssh_config_alias')")
        return self

    @property
    def table_device(self) -> str:
        """The device part of this device's latency-table context: boards of one
        ``board_kind`` share ``kind:<board_kind>``, any other device has its own name."""
        return f"kind:{self.board_kind}" if self.board_kind else self.name


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


def with_host_key_policy(device: Device, accept_new: bool) -> Device:
    """``device`` with ``host_key_policy: accept-new`` when the user asked for it on this run.

    ``accept_new=False`` leaves the configured policy alone: a run-time switch only ever
    relaxes verification that the user asked to relax, it never overrides devices.yaml.
    """
    if not accept_new or device.kind != "ssh" or device.host_key_policy == "accept-new":
        return device
    return device.model_copy(update={"host_key_policy": "accept-new"})


def accept_new_from_env() -> bool:
    """Whether ``$EDGEPRUNE_INSECURE_ACCEPT_NEW_HOST_KEY=1`` asks for accept-new."""
    return os.environ.get(ACCEPT_NEW_ENV) == "1"


def load_devices(path: Path | None = None, accept_new_host_key: bool = False) -> list[Device]:
    """The devices of ``path`` (see :func:`devices_path`), ``local`` always among them.

    ``accept_new_host_key`` (``--insecure-accept-new-host-key``) or the environment
    variable switch every SSH device to ``host_key_policy: accept-new``.
    """
    accept_new = accept_new_host_key or accept_new_from_env()
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
    devs = [with_host_key_policy(d, accept_new) for d in parsed.devices]
    if "local" not in names:
        devs.insert(0, LOCAL)
    return devs


def get_device(name: str, path: Path | None = None, accept_new_host_key: bool = False) -> Device:
    """One device by name; ``accept_new_host_key`` as in :func:`load_devices`."""
    devs = load_devices(path, accept_new_host_key)
    for d in devs:
        if d.name == name:
            return d
    raise ConfigError(
        f"unknown device '{name}'. Choose from: {', '.join(d.name for d in devs)}",
        "devices are defined in devices.yaml",
    )
