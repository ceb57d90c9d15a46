"""Per-layer latency staircases as PNGs: one figure per layer table of a reported model,
one panel per varying axis (output and input channels of most convs).

Why the noise is drawn: a point of a latency table is the fast-state median of a few
interleaved rounds, and on a shared machine neighbouring widths can differ by more
than a SIMD step does. A bare line through the points reads as a saw-tooth of steps
that are not there. So each panel shows every round behind each point (grey dots, with
a bar over their range), the curve the predictor actually uses with its noise
tolerance as a band (differences inside the band are treated as the same step), the
intervals no measurement confirmed (dashed: estimated), and the points that stick out
from two agreeing neighbours, told apart by their own rounds: amber rings where they
disagree (likely noise), teal squares where several agree (real, e.g. a faster kernel
at widths that are a multiple of 4).
"""

from __future__ import annotations

from typing import Any

from edgeprune.results.report.data import LayerStairs, StairAxis, StairSet
from edgeprune.results.report.figure import AMBER, GRID, INK, MUTED, mpl, style, to_b64

LINE = "#7c3aed"
CONFIRMED = "#0891b2"
#: rounds above this multiple of the tallest point are drawn at the top edge (a slow
#: episode of the machine would otherwise squash the staircase into the bottom)
CLIP = 1.35


def _draw_axis(ax: Any, a: StairAxis, lanes: int) -> None:
    style(ax)
    top = max(a.ms) * CLIP
    for w in range(lanes, max(a.widths) + 1, lanes):
        if w >= min(a.widths):
            ax.axvline(w, color=GRID, lw=0.7, zorder=0)
    cw, cm = a.curve_widths, a.curve_ms
    ax.fill_between(cw, [v * (1 - a.tol) for v in cm], [v * (1 + a.tol) for v in cm], color=LINE, alpha=0.10, lw=0,
                    label="noise tolerance")
    ax.annotate(f"±{a.tol:.0%} counts as noise", (0.01, 0.98), xycoords="axes fraction", fontsize=7, color=MUTED,
                ha="left", va="top")
    est = set(a.estimated)
    first_solid = first_dash = True
    for x0, x1, y0, y1 in zip(a.widths, a.widths[1:], a.ms, a.ms[1:]):
        dashed = (x0, x1) in est
        lab = None
        if dashed and first_dash:
            lab, first_dash = "estimated (unconfirmed)", False
        elif not dashed and first_solid:
            lab, first_solid = "curve the predictor uses", False
        ax.plot([x0, x1], [y0, y1], color=MUTED if dashed else LINE, lw=1.1 if dashed else 1.6,
                ls=(0, (3, 2)) if dashed else "-", label=lab)
    rx, ry, ox = [], [], []
    for w, rounds in zip(a.widths, a.rounds):
        if len(rounds) > 1:
            ax.vlines(w, min(min(rounds), top), min(max(rounds), top), color="#9ca3af", lw=0.8, zorder=2)
        for v in rounds:
            (rx if v <= top else ox).append(w)
            if v <= top:
                ry.append(v)
    ax.scatter(rx, ry, s=7, color="#9ca3af", alpha=0.7, lw=0, zorder=3, label="each round")
    if ox:
        ax.scatter(ox, [top] * len(ox), s=14, marker="^", color="#9ca3af", zorder=3, clip_on=False)
    ax.scatter(a.widths, a.ms, s=16, color=LINE, zorder=4, lw=0, label="point (fast-state median)")
    for which, color, marker, label in ((a.spikes, AMBER, "o", "likely noise"),
                                        (a.confirmed, CONFIRMED, "s", "real (its rounds agree)")):
        pts = [(w, m) for w, m in zip(a.widths, a.ms) if w in set(which)]
        if pts:
            ax.scatter([w for w, _ in pts], [m for _, m in pts], s=62, marker=marker, facecolors="none", edgecolors=color,
                       lw=1.3, zorder=5, label=label)
    ax.axvline(a.full, color=INK, ls=":", lw=1.0)
    ax.annotate("model", (a.full, 0.0), xycoords=("data", "axes fraction"), fontsize=7, color=INK, ha="right",
                va="bottom", xytext=(-2, 2), textcoords="offset points")
    ax.set_ylim(0, top)
    ax.set_xlim(min(a.widths) - 0.5, max(max(a.widths), a.full) + 0.5)
    ax.set_xlabel(a.label, fontsize=8.5, color=INK)
    ax.set_ylabel("ms", fontsize=8.5, color=INK)


def layer_figure(layer: LayerStairs, lanes: int) -> str:
    plt = mpl()
    n = len(layer.axes)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 2.9), squeeze=False, layout="constrained")
    for ax, a in zip(axes[0], layer.axes):
        _draw_axis(ax, a, lanes)
    seen: dict[str, Any] = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen), loc="outside upper center", ncol=min(len(seen), 4 if n == 1 else 8),
               fontsize=7, frameon=False, handlelength=1.6, columnspacing=1.2)
    return to_b64(fig)


def stair_figures(sets: list[StairSet]) -> list[dict[str, Any]]:
    """For each model and table: its heading and one figure per layer table."""
    out = []
    for s in sets:
        figs = []
        for layer in s.layers:
            figs.append({"title": layer.title, "png": layer_figure(layer, s.lanes), "sub": _sub(layer)})
        out.append({"model": s.model, "context": s.context, "updated": s.updated, "figs": figs,
                    "hidden": s.total_layers - len(s.layers), "total": s.total_layers})
    return out


def _sub(layer: LayerStairs) -> str:
    bits = []
    if layer.full_ms is not None:
        bits.append(f"{layer.full_ms:.3g} ms at full width")
    if len(layer.layers) > 1:
        bits.append("same shape: " + ", ".join(layer.layers[1:6]) + (" …" if len(layer.layers) > 6 else ""))
    for a in layer.axes:
        noisy = f", {len(a.spikes)} likely noise" if a.spikes else ""
        est = sum(q - p - 1 for p, q in a.estimated)
        bits.append(f"{a.label.split(' (')[0]}: {len(a.widths)} widths measured{noisy}"
                    + (f", {est} estimated" if est else ""))
    return " · ".join(bits)
