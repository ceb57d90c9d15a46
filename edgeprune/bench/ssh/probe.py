"""What a board is: the runner's probe (arch, CPU, Python, numpy, runtimes), run over SSH.

The runner's probe module arrives on stdin (``python - --probe``), so a probe uploads nothing and
leaves nothing behind. ``edgeprune devices check`` probes fresh every time; a benchmark
only needs to know which runtimes the board has before it uploads a bundle, and a
measurement runs many bundles on one board (rounds, variants, nightly cells), each
through a new executor — a probe per run would add seconds of Python start-up on a
small board to every one. :class:`ProbeCache` keeps each probe for a few minutes.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Hashable
from typing import Any

from edgeprune.bench.ssh.command import last_message
from edgeprune.bench.ssh.connection import SSHConnection
from edgeprune.errors import DeviceError
from edgeprune.runner.ship import probe_source

#: How long a probe stands in for the board: long enough for one measurement session,
#: short enough that installing a runtime on the board is seen by the next command.
PROBE_CACHE_S = 300.0


def run_probe(conn: SSHConnection) -> dict[str, Any]:
    """``runner --probe`` on ``conn``'s device, with the device's python and env."""
    dev = conn.device
    r = conn.run([dev.python, "-", "--probe"], dev.command_timeout_s, env=dev.env, stdin=probe_source())
    if r.timed_out:
        raise DeviceError(f"device '{dev.name}': probe timed out after {dev.command_timeout_s:.0f} s")
    if r.exit_code != 0:
        raise DeviceError(
            f"device '{dev.name}': cannot run {dev.python!r} there: {last_message(r.stderr)}",
            "set `python:` in devices.yaml to a Python 3 on the board (e.g. /home/pi/venv/bin/python)",
        )
    try:
        return json.loads(r.stdout[r.stdout.index("{"):])
    except (json.JSONDecodeError, ValueError):
        raise DeviceError(f"device '{dev.name}': probe printed no JSON: {r.stdout[-200:]!r}") from None


def probe_key(conn: SSHConnection) -> Hashable:
    """What a probe depends on: the login on the board, its python and its environment."""
    a, dev = conn.addr, conn.device
    return (a.hostname, a.port, a.user, dev.python, tuple(sorted(dev.env.items())))


class ProbeCache:
    """Probes by :func:`probe_key`, each trusted for ``ttl_s`` seconds. Thread-safe."""

    def __init__(self, ttl_s: float = PROBE_CACHE_S) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._entries: dict[Hashable, tuple[float, dict[str, Any]]] = {}

    def probe(self, conn: SSHConnection) -> dict[str, Any]:
        """A probe of ``conn``'s board younger than ``ttl_s``, probing now if there is none."""
        key = probe_key(conn)
        with self._lock:
            hit = self._entries.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.ttl_s:
            return hit[1]
        fresh = run_probe(conn)
        with self._lock:
            self._entries[key] = (time.monotonic(), fresh)
        return fresh


#: Shared by the SSH executors of this process (the cache is only worth having across
#: executors: each measurement round makes a new one).
PROCESS_PROBE_CACHE = ProbeCache()
