"""At most ``device.concurrency`` benchmarks on one board at a time, inside this process.

Two layers keep a board to its concurrency. Across processes and machines it is the
board's own lock files (the launcher in :mod:`.scripts`), which alone would be enough
for correctness. This layer exists for threads of *one* process that share a board —
a fleet run or ``bench --device a --device b`` where two devices.yaml entries name the
same board: without it every such thread would open a connection, upload its bundle
and then sit in the remote lock queue, holding an SSH session and a copy of the bundle
on the board's disk, with no message saying why it waits. With it the thread waits
here, before connecting, and says so once.

That needs one registry per process, so :data:`PROCESS_BOARD_SLOTS` is a module-level
object; it is passed to :class:`~.executor.SSHExecutor` explicitly (tests or a caller
with its own scheduling can give their own). It holds only semaphores, never options.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from edgeprune.bench.ssh.address import SSHAddress


@dataclass(frozen=True)
class BoardKey:
    """One board as far as locking goes: the same address and workdir share the lock files."""

    hostname: str
    port: int
    workdir: str

    @classmethod
    def of(cls, addr: SSHAddress, workdir: str) -> "BoardKey":
        return cls(addr.hostname, addr.port, workdir)


class BoardSlots:
    """A bounded semaphore per board, created on first use with that board's concurrency."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[BoardKey, threading.BoundedSemaphore] = {}

    def _semaphore(self, key: BoardKey, slots: int) -> threading.BoundedSemaphore:
        with self._lock:
            sem = self._slots.get(key)
            if sem is None:
                sem = self._slots[key] = threading.BoundedSemaphore(slots)
            return sem

    @contextmanager
    def hold(self, key: BoardKey, slots: int, on_wait: Callable[[], None] = lambda: None) -> Iterator[None]:
        """Hold one of ``key``'s ``slots``; ``on_wait()`` is called once if all are taken."""
        sem = self._semaphore(key, slots)
        if not sem.acquire(blocking=False):
            on_wait()
            sem.acquire()
        try:
            yield
        finally:
            sem.release()


#: The registry shared by every SSH executor of this process (see the module docstring).
PROCESS_BOARD_SLOTS = BoardSlots()
