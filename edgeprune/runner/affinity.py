"""Pinning a worker process to a job's cores (``cpu_affinity``, an option of any backend).

Every runtime's threads inherit the process's CPU mask, so pinning the process before
the runtime starts its threads pins them all, whatever the runtime.

The device's own ``cpu_affinity`` (devices.yaml; ``runner.pyz --cpus``) pins the whole
runner first (:func:`pin_runner`); its worker processes inherit that mask, and a job's
``cpu_affinity`` is then taken within it (the cores of both), so a job can never escape
the CPUs its device was given.
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
    allowed = _ORIGINAL_AFFINITY[0]
    try:
        cores = set(parse_cores(want)) & set(allowed) if want not in (None, "", []) else allowed
        if not cores:
            raise ValueError("none of them is among this runner's CPUs %s (the device's cpu_affinity)"
                             % sorted(allowed))
        os.sched_setaffinity(0, cores)
    except (OSError, ValueError) as exc:
        raise JobError("cannot pin to cores %r: %s" % (want, one_line(exc)))
    return sorted(os.sched_getaffinity(0))


def pin_runner(spec) -> list[int]:
    """Pin this runner (and so every worker process it starts) to the device's CPUs
    (``--cpus``); a ValueError says why it cannot."""
    if not hasattr(os, "sched_setaffinity"):
        raise ValueError("this OS cannot pin a process to CPUs (no sched_setaffinity); drop cpu_affinity")
    cores = parse_cores(spec)
    try:
        os.sched_setaffinity(0, cores)
    except OSError as exc:
        raise ValueError("cannot pin the runner to CPUs %s: %s (CPUs here: %s)"
                         % (cores, one_line(exc), sorted(os.sched_getaffinity(0))))
    return sorted(os.sched_getaffinity(0))
