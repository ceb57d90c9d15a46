"""How many CPUs *other* processes keep busy right now.

The 1-minute load average is the obvious measure and the wrong one here: it still counts
the inference threads edgeprune itself ran a moment ago (after profiling a table on 2
threads it reads ~2-6 on an otherwise idle 2-core host), so it warned about "a busy
machine" that was only busy with us, and made training fall back to one thread. Sampling
``/proc/stat`` for half a second while this process waits measures the others only.
"""

from __future__ import annotations

import os
import time


def _cpu_times() -> tuple[int, int]:
    """(total, idle) jiffies over all CPUs, from the first line of /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields), idle


def busy_cores(sample_s: float = 0.5) -> float:
    """CPUs kept busy by other processes, sampled over ``sample_s`` while the caller is idle.

    Falls back to the 1-minute load average where /proc/stat does not exist (not Linux).
    """
    cores = os.cpu_count() or 1
    try:
        total0, idle0 = _cpu_times()
        time.sleep(sample_s)
        total1, idle1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        try:
            return float(os.getloadavg()[0])
        except (AttributeError, OSError):  # pragma: no cover - neither (Windows)
            return 0.0
    total = total1 - total0
    if total <= 0:
        return 0.0
    return max(0.0, (1.0 - (idle1 - idle0) / total) * cores)
