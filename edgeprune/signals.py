"""Stop signals as exceptions: SIGTERM and SIGHUP end a run the way Ctrl-C does.

Python turns SIGINT into :class:`KeyboardInterrupt`; SIGTERM (what CI runners, ``kill``
and systemd send) and SIGHUP (a closed terminal or SSH session) kill the process by
default, with nothing written — and once, during a torch export, with
``terminate called without an active exception`` (exit 134). :func:`stop_signals_raise`
makes all three raise :class:`~edgeprune.errors.Interrupted` in the main thread, so the
same ``except KeyboardInterrupt`` / ``finally`` code stops the device's runner, keeps
every finished measurement and records the run as incomplete.

A second signal while the first is being handled is ignored for a moment, not raised
again into the cleanup (a user pressing Ctrl-C twice must not cut the saving short).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator

from edgeprune.errors import Interrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: after the first stop signal, repeats within this many seconds are ignored (cleanup runs)
GRACE_S = 5.0


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Within the block, SIGINT / SIGTERM / SIGHUP raise :class:`Interrupted` (main thread
    only: elsewhere Python cannot install handlers, and the block runs as it is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    first: list[float] = []

    def handler(signum: int, frame) -> None:
        if first and time.monotonic() - first[0] < GRACE_S:
            return  # already stopping: let the cleanup finish
        first[:] = [time.monotonic()]
        raise Interrupted(signum)

    with stop_signals_handled(handler):
        yield


@contextlib.contextmanager
def stop_signals_handled(handler) -> Iterator[None]:
    """``handler`` for every stop signal within the block (main thread only), then the
    previous handlers again. A signal the parent set to ignored stays ignored: ``nohup``
    (SIGHUP) and ``cmd &`` in a script (SIGINT) are the user's promise to keep it running."""
    old = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s, h in old.items():
        if h is not signal.SIG_IGN:
            signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in old.items():
            if h is not None:
                signal.signal(s, h)


class StopFlag:
    """A stop signal handed to worker threads: Python delivers signals to the main thread
    only, so when several devices are timed in parallel the main thread :meth:`set`\\ s this
    and each device's wait loop (lock, runner, SSH channel) calls :meth:`check`, which
    raises :class:`Interrupted` there as the signal would have."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signum = 0

    def set(self, signum: int) -> None:
        self.signum = signum
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Interrupted(self.signum)
