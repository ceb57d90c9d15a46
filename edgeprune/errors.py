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


#: ``edgeprune nightly``'s exit status is a contract for cron and CI, whatever went wrong:
#: 0 no regression, 1 a regression (or an unknown verdict with fail_on_unknown), 2 the run failed
EXIT_OK, EXIT_REGRESSION, EXIT_FAILED = 0, 1, 2
