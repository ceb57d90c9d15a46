"""Turn a configured :class:`Device` into an :class:`Executor` that runs bundles on it."""

from __future__ import annotations

from edgeprune.bench.executor import Executor, LocalExecutor
from edgeprune.config.devices import Device
from edgeprune.errors import DeviceError


def executor_for(device: Device) -> Executor:
    if device.kind == "local":
        return LocalExecutor()
    if device.kind == "ssh":
        try:
            from edgeprune.bench.ssh import SSHExecutor  # lands with SSH device support
        except ImportError:
            raise DeviceError(f"device '{device.name}' is an SSH device, but SSH support is not installed") from None
        return SSHExecutor(device)
    raise DeviceError(f"device '{device.name}' has unsupported kind '{device.kind}'")
