"""Time ticks that fit the span of a history (:func:`time_axis`).

Why not matplotlib's defaults: a history of one run has no span, and a plain number
locator then puts six ticks on one instant, all labelled ``00:00:00``. Here one instant
gets one tick labelled with its date and time; a longer history gets
:class:`~matplotlib.dates.AutoDateLocator` ticks labelled as its span needs
(seconds or minutes apart: ``HH:MM:SS`` / ``HH:MM``; hours: ``HH:MM``; days:
``Mon DD``), with the date the clock times belong to written once beside the axis.
Times are UTC, as the database stores them.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable
from typing import Any

#: a history shorter than this is one instant (one run, or re-measurements of one)
ONE_INSTANT_S = 1.0
#: room each side of the data, at least (so one-minute histories get readable ticks)
MIN_PAD_S = 30.0


def time_axis(ax: Any, times: Iterable[_dt.datetime]) -> None:
    """Set the x limits, locator and formatter of ``ax`` for ``times``."""
    import matplotlib.dates as mdates
    from matplotlib.ticker import FixedLocator

    utc = _dt.timezone.utc
    nums = sorted({float(mdates.date2num(t)) for t in times})
    if not nums:
        return
    span_s = (nums[-1] - nums[0]) * 86400.0
    if span_s < ONE_INSTANT_S:
        x = nums[0]
        ax.set_xlim(x - 1 / 24, x + 1 / 24)  # an hour each side: the point sits in the middle
        ax.xaxis.set_major_locator(FixedLocator([x]))
        ax.xaxis.set_minor_locator(FixedLocator([]))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d %H:%M UTC", tz=utc))
        return
    pad = max(span_s * 0.04, MIN_PAD_S) / 86400.0
    ax.set_xlim(nums[0] - pad, nums[-1] + pad)
    loc = mdates.AutoDateLocator(tz=utc, minticks=3, maxticks=7)
    fmt = mdates.ConciseDateFormatter(
        loc, tz=utc,
        formats=["%Y", "%b", "%b %d", "%H:%M", "%H:%M", "%H:%M:%S"],
        zero_formats=["", "%Y", "%b %d", "%b %d", "%H:%M", "%H:%M:%S"],
        offset_formats=["UTC", "%Y UTC", "%Y UTC", "%Y-%m-%d UTC", "%Y-%m-%d UTC", "%Y-%m-%d UTC"],
    )
    ax.xaxis.set_major_locator(loc)
    ax.xaxis.set_major_formatter(fmt)


def tick_labels(ax: Any) -> list[str]:
    """The x tick labels as drawn (the figure is drawn first), for checks and tests."""
    ax.figure.canvas.draw()
    return [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
