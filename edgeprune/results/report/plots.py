"""The report's figures of the results database, as base64 PNGs:

- latency over time per (device, model): one panel per cell (target, backend,
  variant), each with its own y scale, so a 0.3 ms ONNX Runtime line is as readable as
  a 50 ms untuned TVM one (on one shared linear axis the fast backends are flat at
  zero); regressions, improvements, inconclusive runs and environment changes marked;
- accuracy vs measured latency of pruned variants, with their Pareto front.

The staircases of latency tables are :mod:`~edgeprune.results.report.stair_plots`.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from edgeprune.results.records import parse_time
from edgeprune.results.report.data import STATUS_LABEL, CellRow, ReportData
from edgeprune.results.report.figure import AMBER, COLORS, GREEN, INK, MUTED, RED, STATUS_COLOR, mpl, style, to_b64
from edgeprune.results.report.gather import pareto_front
from edgeprune.results.report.text import fmt_ms
from edgeprune.results.report.timeaxis import time_axis

#: the smallest y range of a panel, relative to its level: a flat series with 1 % noise
#: stays visibly flat instead of being stretched into a saw-tooth
MIN_REL_RANGE = 0.08
PANEL_W, PANEL_H = 10.4, 1.9


def panel_layout(n: int) -> tuple[int, int]:
    """(rows, columns) of ``n`` panels: one column up to three, then two."""
    cols = 1 if n <= 3 else 2
    return math.ceil(n / cols), cols


def panel_ylim(lows: list[float], highs: list[float]) -> tuple[float, float]:
    """A panel's own y range: the data with room for markers, at least MIN_REL_RANGE of
    its level, never below zero."""
    lo, hi = min(lows), max(highs)
    level = statistics.median(highs) or hi or 1.0
    span = max(hi - lo, MIN_REL_RANGE * level)
    mid = (hi + lo) / 2
    return max(0.0, mid - 0.62 * span), mid + 0.78 * span


def _label(r: CellRow) -> str:
    return f"{r.backend} · {r.target}" + (f" · {r.variant}" if r.variant else "")


def _panel(ax: Any, r: CellRow, color: str) -> None:
    pts = r.history
    xs = [parse_time(p.time) for p in pts]
    med = [p.median_ms for p in pts]
    low = [p.p10_ms for p in pts]
    style(ax)
    if len(pts) > 1:
        ax.fill_between(xs, low, med, color=color, alpha=0.16, lw=0)
    else:  # one run: its band as a bar
        ax.vlines(xs, low, med, color=color, alpha=0.45, lw=5)
    ax.plot(xs, med, "-o", color=color, ms=3.8, lw=1.6)
    ax.set_ylim(*panel_ylim(low, med))
    for j in range(1, len(pts)):
        if pts[j].series != pts[j - 1].series:
            ax.axvline(xs[j], color=MUTED, ls="--", lw=0.9)
            ax.annotate("environment changed", (xs[j], 0.97), xycoords=("data", "axes fraction"), fontsize=7,
                        color=MUTED, rotation=90, ha="right", va="top")
    for x, p in zip(xs, pts):
        if p.verdict == "SLOWER":
            ax.plot([x], [p.median_ms], marker="^", ms=10, color=RED, mec="white", mew=1.2, zorder=5)
            if p.ratio:
                ax.annotate(f"{p.ratio - 1:+.1%}", (x, p.median_ms), textcoords="offset points", xytext=(0, 8),
                            ha="center", fontsize=8, color="#b91c1c", fontweight="bold")
        elif p.verdict == "FASTER":
            ax.plot([x], [p.median_ms], marker="v", ms=9, color=GREEN, mec="white", mew=1.2, zorder=5)
        elif p.verdict == "UNKNOWN":
            ax.plot([x], [p.median_ms], marker="D", ms=6.5, color=AMBER, mec="white", mew=1, zorder=5)
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    ax.yaxis.set_major_locator(MaxNLocator(nbins=4))
    fmt = ScalarFormatter(useOffset=False)
    fmt.set_scientific(False)
    ax.yaxis.set_major_formatter(fmt)
    ax.set_ylabel("ms", fontsize=8.5, color=INK)
    ax.set_title(_label(r), loc="left", fontsize=9.5, color="#111827", fontweight="bold")
    last = f"{fmt_ms(r.median_ms)} ms · {STATUS_LABEL[r.status]}" if r.median_ms is not None else STATUS_LABEL[r.status]
    ax.set_title(last, loc="right", fontsize=9, color=STATUS_COLOR.get(r.status, INK))


def latency_figures(data: ReportData) -> list[dict[str, Any]]:
    """One PNG per (device, model) (:func:`latency_figure`)."""
    groups: dict[tuple[str, str], list[CellRow]] = {}
    for r in data.rows:
        if r.history:
            groups.setdefault((r.device, r.model), []).append(r)
    backends = sorted({r.backend for r in data.rows})
    out = []
    for (device, model), rows in sorted(groups.items()):
        fig = latency_figure(rows, backends)
        out.append({"title": f"{model} on {device}", "png": to_b64(fig), "panels": len(rows)})
    return out


def latency_figure(rows: list[CellRow], backends: list[str]) -> Any:
    """The cells of one (device, model), one panel each with its own y scale: the median
    of each run over a band down to its 10th percentile (the fast end the verdicts
    compare by default; the slow tail of a busy machine would swamp the panel),
    regressions ▲ (red, with the change), improvements ▼ (green), inconclusive ◆
    (amber), environment changes dashed. Panels share the time axis. ``backends`` fixes
    each backend's colour across the report."""
    plt = mpl()
    rows = sorted(rows, key=lambda r: (r.target, r.backend, r.variant))
    nrows, ncols = panel_layout(len(rows))
    fig, axes = plt.subplots(nrows, ncols, figsize=(PANEL_W, PANEL_H * nrows + 0.25), sharex=True,
                             squeeze=False, layout="constrained")
    flat = [a for row in axes for a in row]
    times = [parse_time(p.time) for r in rows for p in r.history]
    for ax, r in zip(flat, rows):
        _panel(ax, r, COLORS[backends.index(r.backend) % len(COLORS)] if r.backend in backends else COLORS[0])
    for ax in flat[len(rows):]:  # an incomplete last row: the panel above keeps its time labels
        fig.delaxes(ax)
    for i, ax in enumerate(flat[:len(rows)]):
        if i + ncols >= len(rows):
            ax.xaxis.set_tick_params(which="both", labelbottom=True)
        time_axis(ax, times)
    return fig


def pareto_figures(data: ReportData) -> list[dict[str, str]]:
    """Accuracy vs measured latency of pruned variants, per (model, target, device, backend)."""
    plt = mpl()
    out = []
    for key, pts in data.pareto.items():
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        style(ax)
        front = pareto_front([(x, y) for _, x, y, _ in pts])
        fx = [pts[i][1] for i in front]
        fy = [pts[i][2] for i in front]
        ax.step(fx, fy, where="post", color="#2563eb", lw=1.4, alpha=0.8, label="Pareto front")
        for i, (label, x, y, orig) in enumerate(pts):
            on = i in front
            ax.scatter([x], [y], s=150 if orig else 46, marker="*" if orig else "o",
                       color="#111827" if orig else ("#2563eb" if on else "#9ca3af"), zorder=4,
                       edgecolor="white", linewidth=0.8)
            ax.annotate(label.replace("pruned ", ""), (x, y), textcoords="offset points", xytext=(6, 4), fontsize=7.5,
                        color=INK)
        ax.set_xlabel("measured median latency (ms)", fontsize=9)
        ax.set_ylabel("accuracy (%)", fontsize=9)
        ax.legend(fontsize=8, frameon=False, loc="lower right")
        out.append({"title": f"{key[0]} · {key[3]} on {key[2]}/{key[1]}", "png": to_b64(fig)})
    return out
