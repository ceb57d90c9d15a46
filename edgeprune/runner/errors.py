"""The runner's two failure kinds, and the one-line form in which a failure is recorded."""

from __future__ import annotations


class ManifestError(Exception):
    """The bundle cannot be used at all (exit code 2)."""


class JobError(Exception):
    """One job failed; the message is the one-line error recorded in its result."""


def one_line(exc: BaseException) -> str:
    """First informative line of an exception, prefixed with its type (a result's
    ``error`` is one line: runtimes raise multi-line C++ tracebacks)."""
    if isinstance(exc, JobError):
        return str(exc)
    name = type(exc).__name__
    for line in str(exc).splitlines():
        s = line.strip()
        if s and not s.startswith(("Traceback", "File ", "^", "---")):
            return s if s.startswith(name) else "%s: %s" % (name, s)
    return name
