"""All CLI output goes through here: results to stdout, messages and progress to stderr."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

import sys

# Piped output (CI logs, files) gets a wide fixed width instead of rich's 80 columns.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 200)


def log(msg: str) -> None:
    err.print(msg, markup=False, highlight=False)


def note(msg: str) -> None:
    err.print(f"[dim]{msg}[/dim]", highlight=False)


def print_json(data: Any) -> None:
    out.print_json(json.dumps(data, default=str))


def table(title: str, columns: list[str], rows: list[list[Any]], right: set[int] | None = None) -> None:
    t = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        t.add_column(c, justify="right" if right and i in right else "left")
    for r in rows:
        t.add_row(*["–" if v is None else str(v) for v in r])
    out.print(t)
