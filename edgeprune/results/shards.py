"""The shards of one nightly run: what ``--shard I/N`` on several CI runners wrote.

A lab splits its matrix over runners (``edgeprune nightly --shard $I/$N`` on each, all
into one database), so one night is N nightly runs, each with a part of the cells. A
report about "last night" is about all of them: :func:`sibling_shards` finds, for a
sharded nightly run, the newest run of every *other* shard of the same night, and the
report (:func:`edgeprune.results.report.gather`) shows their cells together.

Which runs are one night, from what every run records anyway: kind ``nightly``, the same
matrix (its ``name``, the run's label), the same N in ``--shard I/N`` of the command,
the same git revision when both know one (the runners of one pipeline check out one
commit), started within :data:`WINDOW_H` hours of each other; per shard index the
newest such run wins (a re-run shard replaces its failed first try).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import TYPE_CHECKING

from edgeprune.results.records import Run, parse_time

if TYPE_CHECKING:
    from edgeprune.results.store import ResultsStore

#: how far apart (hours) the shards of one night may start
WINDOW_H = 12.0
_SHARD = re.compile(r"--shard[= ]+(\d+)/(\d+)\b")


def shard_spec(command: str | None) -> tuple[int, int] | None:
    """``(I, N)`` of the ``--shard I/N`` a run's command line carries, or None."""
    m = _SHARD.search(command or "")
    if m is None:
        return None
    i, n = int(m.group(1)), int(m.group(2))
    return (i, n) if 1 <= i <= n else None


def sibling_shards(store: "ResultsStore", run: Run) -> list[Run]:
    """The other shards of ``run``'s night (newest first per shard), or [] when ``run``
    is not a sharded nightly run."""
    spec = shard_spec(run.command)
    if run.kind != "nightly" or spec is None or spec[1] < 2:
        return []
    start = parse_time(run.started)
    since = (start - timedelta(hours=WINDOW_H)).isoformat(timespec="milliseconds")
    best: dict[int, Run] = {}
    for other in store.runs(kind="nightly", since=since):  # newest first
        if other.id == run.id or other.label != run.label:
            continue
        theirs = shard_spec(other.command)
        if theirs is None or theirs[1] != spec[1] or theirs[0] == spec[0] or theirs[0] in best:
            continue
        if run.git_revision and other.git_revision and run.git_revision != other.git_revision:
            continue
        if abs((parse_time(other.started) - start).total_seconds()) > WINDOW_H * 3600:
            continue
        best[theirs[0]] = other
    return [best[i] for i in sorted(best)]
