"""Pinning a worker process to a job's cores (``cpu_affinity``, an option of any backend).

Every runtime's threads inherit the process's CPU mask, so pinning the process before
the runtime starts its threads pins them all, whatever the runtime.
"""

from __future__ import annotations

import os

from .errors import JobError, one_line

#: the mask this process started with, restored for a job without ``cpu_affinity``
#: (a worker runs several jobs; one job's pinning must not leak into the next)
_ORIGINAL_AFFINITY: list = []


def parse_cores(spec) -> list[int]:
    """[0, 1], "0,1" or "0-3" -> sorted list of core ids."""
    if isinstance(spec, (list, tuple)):
        return sorted(int(c) for c in spec)
    cores = set()
    for part in str(spec).replace(" ", "").split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            cores.update(range(int(lo), int(hi) + 1))
        elif part:
            cores.add(int(part))
    return sorted(cores)


def apply_affinity(options: dict) -> list[int] | None:
    """Pin this process to the job's ``cpu_affinity`` cores, or restore the original mask;
    returns the cores it may run on (None where the OS cannot tell)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    if not _ORIGINAL_AFFINITY:
        _ORIGINAL_AFFINITY.append(os.sched_getaffinity(0))
    want = options.get("cpu_affinity", options.get("CPU_AFFINITY"))
    try:
        os.sched_setaffinity(0, parse_cores(want) if want not in (None, "", []) else _ORIGINAL_AFFINITY[0])
    except (OSError, ValueError) as exc:
        raise JobError("cannot pin to cores %r: %s" % (want, one_line(exc)))
    return sorted(os.sched_getaffinity(0))
