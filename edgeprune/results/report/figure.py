"""What every figure of the report shares: matplotlib set up headless (imported only
when a report draws), one axis style, the palette, and PNG encoding for the
self-contained page."""

from __future__ import annotations

import base64
import io
from typing import Any

COLORS = ["#2563eb", "#7c3aed", "#d97706", "#059669", "#db2777", "#0891b2", "#65a30d", "#475569"]
INK, MUTED, GRID = "#374151", "#6b7280", "#e5e7eb"
RED, GREEN, AMBER = "#dc2626", "#059669", "#d97706"
#: colour of a cell's status where a panel names it (the banner's palette)
STATUS_COLOR = {"regression": RED, "failed": RED, "unknown": AMBER, "skipped": AMBER, "improved": GREEN,
                "ok": GREEN, "new-series": "#2563eb", "no-baseline": MUTED}


def mpl() -> Any:
    """pyplot on the Agg backend (no display needed: reports are drawn by cron and CI)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def style(ax: Any) -> None:
    ax.grid(True, color=GRID, linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color("#9ca3af")
    ax.tick_params(colors=INK, labelsize=8.5)


def to_b64(fig: Any, dpi: int = 110) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    mpl().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")
