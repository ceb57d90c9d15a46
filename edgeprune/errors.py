"""One exception root for the package, with a stable exit code per failure kind.

Every exit code a failure kind has is here, so this file is the table (docs/cli.md
lists it for users); a new kind subclasses one of these. The CLI catches
:class:`EdgepruneError` once at the top (``edgeprune/cli/__init__.py``) and prints
``str(err)`` as a single line (plus the hint, if any); ``--debug`` shows the traceback.
"""

from __future__ import annotations


class EdgepruneError(Exception):
    """Base of every error edgeprune raises on purpose. ``hint`` says how to fix it."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class ConfigError(EdgepruneError):
    """A YAML file (target, device, matrix) is missing, malformed or has a bad field."""

    exit_code = 3


class ModelError(EdgepruneError):
    """A model spec cannot be resolved, read, traced or exported."""

    exit_code = 4


class BackendError(EdgepruneError):
    """A backend is unknown, not installed, or failed to build an artifact."""

    exit_code = 5


class BenchError(EdgepruneError):
    """A benchmark run failed, timed out, or produced wrong outputs."""

    exit_code = 6


class DeviceError(EdgepruneError):
    """A device is unreachable, refuses us, or lacks a runtime."""

    exit_code = 7


class PruneError(EdgepruneError):
    """Pruning cannot satisfy the request (budget unreachable, accuracy gate failed)."""

    exit_code = 8


class DependencyError(EdgepruneError):
    """An optional Python package is not installed."""

    exit_code = 9


class ResultsError(EdgepruneError):
    """The results database cannot be opened, is too new, or a run/measurement is unknown."""

    exit_code = 10


class OutputError(EdgepruneError):
    """An output path (``--out``, a ``-dir`` option) cannot be written: a bad value, like a usage error."""

    exit_code = 2


#: ``edgeprune nightly``'s exit status is a contract for cron and CI, whatever went wrong:
#: 0 no regression, 1 a regression (or an unknown verdict with fail_on_unknown), 2 the run failed
EXIT_OK, EXIT_REGRESSION, EXIT_FAILED = 0, 1, 2


#: exit status of a run ended by a signal, as shells report it (128 + the signal's number):
#: 130 Ctrl-C (SIGINT), 143 SIGTERM (CI runners, ``kill``), 129 SIGHUP (the terminal closed)
EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_HANGUP = 130, 143, 129


class Interrupted(KeyboardInterrupt):
    """The user or the system asked the run to stop (SIGINT, SIGTERM or SIGHUP).

    A :class:`KeyboardInterrupt`, so code that already cleans up on Ctrl-C does so for
    every stop signal. Layers that hold partial work re-raise a subclass that carries it
    (finished job results, measurements, the written summary), so nothing measured is lost
    on the way up; the CLI exits with :attr:`exit_code`.
    """

    def __init__(self, signum: int = 2, kept: str = "") -> None:
        super().__init__(signal_name(signum))
        self.signum = signum
        #: what the stopped run kept, for the user (e.g. "3 of 4 results in out/x/summary.json")
        self.kept = kept

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @classmethod
    def of(cls, exc: BaseException) -> "Interrupted":
        """``exc`` as an :class:`Interrupted` (a bare KeyboardInterrupt is Ctrl-C)."""
        return exc if isinstance(exc, Interrupted) else cls(2)


def signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
