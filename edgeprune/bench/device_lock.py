"""One device, one run: the lock every timing on this host takes.

Two benchmarks timing on the same CPU at once disturb each other (measured: two ``bench``
runs started together timed 0.67-0.76 ms against 0.356 ms alone, CVs up to 243 %), and
neither can tell from its own numbers. So :func:`~edgeprune.bench.measure.measure_on`
takes this lock around every local device run: every ``kind: local`` device is this
host's CPU whatever its name, so they share one lock with ``concurrency`` slots (the
device's field; 1 by default). SSH boards are kept to one run at a time on the board
itself (the SSH executor's launcher), across every host that uses them.

Where: ``/run/lock/edgeprune`` (the system's lock folder, the same for every process of
the machine), else ``$EDGEPRUNE_CACHE/locks``; never ``$TMPDIR``, which differs between
processes and users, so two runs could each take "the" lock in their own folder. The
lock is an ``flock`` on a file: the kernel releases it when its holder dies, SIGKILL
included, so a crashed run never leaves the device locked. The holder writes its pid
and command line into the file, so a waiting run can say who it waits for.

Re-entrant per thread: a flow that holds the lock around a longer stretch (nightly
holds it over a cell's build and timing) does not deadlock when ``measure_on`` takes it
again inside.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from edgeprune.config.devices import Device
from edgeprune.errors import DeviceError
from edgeprune.paths import cache_dir
from edgeprune.signals import StopFlag

SYSTEM_LOCK_DIR = Path("/run/lock/edgeprune")
POLL_S = 0.25  # how often a waiting run looks for a free slot

#: the locks held by each thread (re-entrancy); thread-local by nature, not an option
_held = threading.local()


def lock_dir() -> Path:
    """The folder that holds device locks (see the module docstring)."""
    for d in (SYSTEM_LOCK_DIR, cache_dir("locks")):
        try:
            d.mkdir(parents=True, exist_ok=True)
            if os.access(d, os.W_OK):
                return d
        except OSError:
            continue
    raise DeviceError(f"no writable lock folder ({SYSTEM_LOCK_DIR} or {cache_dir('locks')})",
                      "set $EDGEPRUNE_CACHE to a writable folder")


def lock_name(device: Device) -> str:
    """Local devices share this host's lock; other kinds are locked by name."""
    return "local-host" if device.kind == "local" else f"device-{device.name}"


def holder(path: Path) -> str:
    """Who holds the lock file at ``path`` ("pid N (command)"), as it wrote itself (a
    holder writes itself in right after it takes the lock: give it a moment)."""
    for _ in range(10):
        try:
            text = path.read_text().strip()
        except OSError:
            text = ""
        pid, _, cmd = text.partition(" ")
        if pid.isdigit():
            return f"pid {pid} ({cmd})"
        time.sleep(0.05)
    return "another process"


def _try_slots(paths: list[Path]) -> tuple[IO[str], Path] | None:
    for p in paths:
        fh = open(p, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            continue
        return fh, p
    return None


def check_free(device: Device) -> None:
    """Fail at once (:class:`DeviceError`) if ``device`` is busy with another run: what a
    ``--no-wait`` command checks before any export, build or training."""
    with device_lock(device, wait=False):
        pass


@contextlib.contextmanager
def device_lock(device: Device, *, wait: bool = True, log: Callable[[str], None] = lambda m: None,
                timeout_s: float | None = None, stop: StopFlag | None = None) -> Iterator[None]:
    """Hold one of ``device``'s ``concurrency`` slots on this host.

    Busy: with ``wait`` says who holds it and waits (up to ``timeout_s``; ``stop`` ends
    the wait when the run is stopped); without, fails at once with a :class:`DeviceError`
    that says who holds it.
    """
    name = lock_name(device)
    held: dict[str, int] = getattr(_held, "locks", None) or {}
    _held.locks = held
    if held.get(name):  # this thread holds it already
        held[name] += 1
        try:
            yield
        finally:
            held[name] -= 1
        return
    d = lock_dir()
    slots = [d / (f"{name}.lock" if k == 0 else f"{name}.{k}.lock") for k in range(max(1, device.concurrency))]
    got = _try_slots(slots)
    if got is None:
        who = holder(slots[0])
        if not wait:
            raise DeviceError(f"device '{device.name}' busy: held by {who}",
                              "wait for it to finish, or run again without --no-wait to wait")
        log(f"device '{device.name}' busy: held by {who}, waiting ...")
        t0 = time.monotonic()
        while got is None:
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                raise DeviceError(f"device '{device.name}' still busy after {timeout_s:.0f} s: held by {holder(slots[0])}")
            if stop is not None:
                stop.check()
            time.sleep(POLL_S)
            got = _try_slots(slots)
        log(f"device '{device.name}' free after {time.monotonic() - t0:.1f} s")
    fh, path = got
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()} {' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200]}\n")
        fh.flush()
        held[name] = 1
        yield
    finally:
        held.pop(name, None)
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()
