"""Turn a configured :class:`Device` into the :class:`Executor` that runs bundles on it.

The SSH executor is imported only for an SSH device: it brings paramiko (and its
cryptography), which a local run and ``edgeprune --help`` should not pay for.
"""

from __future__ import annotations

from edgeprune.bench.executor import Executor, LocalExecutor
from edgeprune.config.devices import Device
from edgeprune.errors import DeviceError


def executor_for(device: Device) -> Executor:
    """The executor for ``device``'s kind; host-key trust and limits travel on the device."""
    if device.kind == "local":
        return LocalExecutor(cpus=device.cpu_affinity)
    if device.kind == "ssh":
        from edgeprune.bench.ssh import SSHExecutor

        return SSHExecutor(device)
    raise DeviceError(f"device '{device.name}' has unsupported kind '{device.kind}'")
