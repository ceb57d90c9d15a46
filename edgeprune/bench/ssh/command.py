"""The remote command line, and what a remote command gave back.

Every command edgeprune runs on a board is a fixed argv joined with ``shlex.join``:
the board's shell sees each item as one word, so a device name, a path or an env
value from devices.yaml can never become shell syntax (tests try ``; touch``, ``$( )``
and backquotes). Env names are checked, because ``env`` takes ``NAME=VALUE`` words
and a name with ``=`` or ``;`` in it would change what the word means.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from edgeprune.bench.ssh.scripts import MARKER_PREFIX
from edgeprune.errors import ConfigError

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def valid_env_name(name: str) -> bool:
    """A POSIX shell variable name: letters, digits and ``_``, not starting with a digit."""
    return bool(_ENV_NAME.match(name))


def build_command(argv: list[str], env: dict[str, str]) -> str:
    """The remote command line: ``[env K=V ...] argv...``, every item shell-quoted.

    ``argv[0]`` must not start with ``-``: ``env -oSomething`` or a program named like
    an option would be read as an option, not as the program to run.
    """
    if not argv:
        raise ValueError("empty argv")
    for k in env:
        if not valid_env_name(k):
            raise ConfigError(f"environment variable name {k!r} is not valid (letters, digits, _; not first a digit)")
    if argv[0].startswith("-"):
        raise ConfigError(f"remote program {argv[0]!r} must not start with '-'")
    prefix = ["env", *[f"{k}={v}" for k, v in env.items()]] if env else []
    return shlex.join(prefix + list(argv))


@dataclass
class CommandResult:
    """What one remote command gave back (like Fabric's ``Result``)."""

    exit_code: int | None  # None: killed on timeout or connection lost
    stdout: str
    stderr: str
    timed_out: bool = False


def last_message(text: str) -> str:
    """The last line of remote output meant for a person (protocol markers skipped)."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip() and not ln.startswith(MARKER_PREFIX)]
    return lines[-1].strip() if lines else "(no output)"
