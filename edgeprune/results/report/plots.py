"""The report's figures as base64 PNGs (matplotlib, imported only when a report draws).

- latency over time per (device, model), regressions and environment changes marked;
- accuracy vs measured latency of pruned variants, with their Pareto front;
- per-layer latency staircases of measured latency tables.
"""

from __future__ import annotations

import base64
import io

from edgeprune.results.records import parse_time
from edgeprune.results.report.data import CellRow, ReportData
from edgeprune.results.report.gather import pareto_front

COLORS = ["#2563eb", "#d97706", "#059669", "#7c3aed", "#db2777", "#0891b2", "#65a30d", "#dc2626"]
#: channel multiples the staircase plots mark (a common SIMD width in fp32 lanes)
LANE_MARKS = 8


def _fig_to_b64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", facecolor="white")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _style(ax) -> None:
    ax.grid(True, color="#e5e7eb", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color("#9ca3af")
    ax.tick_params(colors="#374151", labelsize=8.5)


def _mpl():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    return plt, mdates


def latency_figures(data: ReportData) -> list[dict[str, str]]:
    """One PNG per (device, model): median latency of each target/backend over time over
    a band down to the 10th percentile (the fast end the verdicts compare by default;
    the slow tail of a busy machine would flatten everything), regressions marked ▲
    (red), improvements ▼ (green), inconclusive ◆ (amber), environment changes dashed."""
    plt, mdates = _mpl()
    groups: dict[tuple[str, str], list[CellRow]] = {}
    for r in data.rows:
        if r.history:
            groups.setdefault((r.device, r.model), []).append(r)
    out = []
    for (device, model), rows in sorted(groups.items()):
        fig, ax = plt.subplots(figsize=(9.2, 3.1))
        _style(ax)
        span = 0.0
        breaks: set = set()
        for i, r in enumerate(sorted(rows, key=lambda r: (r.target, r.backend, r.variant))):
            color = COLORS[i % len(COLORS)]
            pts = r.history
            xs = [parse_time(p.time) for p in pts]
            if xs:
                span = max(span, (max(xs) - min(xs)).total_seconds())
            med = [p.median_ms for p in pts]
            label = f"{r.backend} · {r.target}" + (f" · {r.variant}" if r.variant else "")
            ax.fill_between(xs, [p.p10_ms for p in pts], med, color=color, alpha=0.15, lw=0)
            ax.plot(xs, med, "-o", color=color, ms=3.5, lw=1.6, label=label)
            for j in range(1, len(pts)):
                if pts[j].series != pts[j - 1].series:
                    breaks.add(xs[j].replace(second=0, microsecond=0))
            for x, p in zip(xs, pts):
                if p.verdict == "SLOWER":
                    ax.plot([x], [p.median_ms], marker="^", ms=11, color="#dc2626", mec="white", mew=1.2, zorder=5)
                    if p.ratio:
                        ax.annotate(f"{p.ratio - 1:+.1%}", (x, p.median_ms), textcoords="offset points", xytext=(0, 9),
                                    ha="center", fontsize=8, color="#b91c1c", fontweight="bold")
                elif p.verdict == "FASTER":
                    ax.plot([x], [p.median_ms], marker="v", ms=10, color="#059669", mec="white", mew=1.2, zorder=5)
                elif p.verdict == "UNKNOWN":
                    ax.plot([x], [p.median_ms], marker="D", ms=7, color="#d97706", mec="white", mew=1, zorder=5)
        for x in sorted(breaks):
            ax.axvline(x, color="#6b7280", ls="--", lw=0.9)
            ax.annotate("environment changed", (x, 0.98), xycoords=("data", "axes fraction"), fontsize=7,
                        color="#6b7280", rotation=90, ha="right", va="top")
        ax.set_ylabel("latency (ms)", fontsize=9, color="#374151")
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(0.0, lo - 0.05 * (hi - lo)), hi + 0.12 * (hi - lo))
        xmin, xmax = ax.get_xlim()
        pad = max((xmax - xmin) * 0.04, 60 / 86400)  # at least a minute each side (units: days)
        ax.set_xlim(xmin - pad, xmax + pad)
        fmt = "%b %d" if span > 3 * 86400 else "%b %d %H:%M" if span > 3 * 3600 else "%H:%M:%S" if span < 600 else "%H:%M"
        ax.xaxis.set_major_formatter(mdates.DateFormatter(fmt))
        if span > 86400:
            ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=8))
        else:  # minutes or hours apart (tests, demos, CI re-runs): plain evenly spaced ticks
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
        fig.autofmt_xdate(rotation=0, ha="center")
        ax.legend(fontsize=8, frameon=False, loc="upper left", ncol=min(4, len(rows)))
        out.append({"title": f"{model} on {device}", "png": _fig_to_b64(fig)})
    return out


def pareto_figures(data: ReportData) -> list[dict[str, str]]:
    """Accuracy vs measured latency of pruned variants, per (model, target, device, backend)."""
    plt, _ = _mpl()
    out = []
    for key, pts in data.pareto.items():
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        _style(ax)
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
                        color="#374151")
        ax.set_xlabel("measured median latency (ms)", fontsize=9)
        ax.set_ylabel("accuracy (%)", fontsize=9)
        ax.legend(fontsize=8, frameon=False, loc="lower right")
        out.append({"title": f"{key[0]} · {key[3]} on {key[2]}/{key[1]}", "png": _fig_to_b64(fig)})
    return out


def lut_figures(data: ReportData) -> list[dict[str, str]]:
    plt, _ = _mpl()
    out = []
    for c in data.luts:
        fig, ax = plt.subplots(figsize=(6.2, 3.0))
        _style(ax)
        ax.step(c.widths, c.ms, where="post", color="#7c3aed", lw=1.3, alpha=0.6)
        ax.plot(c.widths, c.ms, "o", color="#7c3aed", ms=3)
        ax.set_xlabel(c.axis, fontsize=9)
        ax.set_ylabel("latency (ms)", fontsize=9)
        for w in range(LANE_MARKS, max(c.widths) + 1, LANE_MARKS):
            if w >= min(c.widths):
                ax.axvline(w, color="#e5e7eb", lw=0.6, zorder=0)
        out.append({"title": c.title, "png": _fig_to_b64(fig)})
    return out
