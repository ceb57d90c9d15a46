"""One grammar for durations, everywhere a user writes one (``tune --time-budget``,
``results --since``, ``--profile-budget``...): ``90s``, ``30m``, ``2h``, ``1h30m``,
``7d``, ``2w``, or a bare number of seconds."""

from __future__ import annotations

import re

UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
GRAMMAR = "a number of seconds or units w/d/h/m/s, like 90s, 30m, 2h, 1h30m, 7d"


def parse_duration(text: str) -> float:
    """``'1h30m'`` -> 5400.0 seconds. ValueError (with the grammar) if it is not one."""
    s = re.sub(r"\s+", "", str(text).strip().lower())
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    parts = re.findall(r"(\d+(?:\.\d+)?)([wdhms])", s)
    if not parts or "".join(a + u for a, u in parts) != s:
        raise ValueError(f"'{text}' is not a duration; write {GRAMMAR}")
    return sum(float(a) * UNITS[u] for a, u in parts)


def format_duration(seconds: float) -> str:
    """Seconds as a short human figure (``45 s``, ``12.5 min``, ``3.2 h``)."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
