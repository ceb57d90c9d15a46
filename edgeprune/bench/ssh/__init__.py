"""Running deploy bundles on a board over SSH (paramiko), one job per module.

=================  ===============================================================
``address``        where and as whom to connect (devices.yaml + ~/.ssh/config)
``host_keys``      known_hosts verification: refuse unknown hosts, or accept-new
``command``        the remote command line (``shlex.join`` of a fixed argv)
``connection``     :class:`SSHConnection`: connect with retries, run, SFTP
``scripts``        the launcher (board lock, process group) and killer run there
``limits``         one run per board slot inside this process
``probe``          what the board has (arch, Python, runtimes), cached briefly
``executor``       :class:`SSHExecutor`: check, upload, run, fetch, clean up
=================  ===============================================================

Host-key trust is the device's setting (``Device.host_key_policy``), resolved from the
CLI flag and the environment where devices are loaded (:mod:`edgeprune.config.devices`);
nothing here reads process-wide options. Importing this package imports paramiko, so
callers import it lazily (see :func:`edgeprune.bench.devices.executor_for`).
"""

from __future__ import annotations

from edgeprune.bench.ssh.address import SSHAddress, resolve_address
from edgeprune.bench.ssh.command import CommandResult, build_command
from edgeprune.bench.ssh.connection import SSHConnection
from edgeprune.bench.ssh.executor import SSHExecutor
from edgeprune.bench.ssh.limits import PROCESS_BOARD_SLOTS, BoardSlots
from edgeprune.bench.ssh.probe import PROCESS_PROBE_CACHE, ProbeCache

__all__ = ["PROCESS_BOARD_SLOTS", "PROCESS_PROBE_CACHE", "BoardSlots", "CommandResult", "ProbeCache", "SSHAddress",
           "SSHConnection", "SSHExecutor", "build_command", "resolve_address"]
