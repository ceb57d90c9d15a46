"""PNG plots of latency vs channel count, one per layer, so the staircase is visible."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgeprune.latency.records import ProfileResult


def _fname(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".png"


def plot_layers(result: "ProfileResult", out_dir: Path, title_suffix: str = "") -> list[Path]:
    """Write ``<layer>.png`` for every prunable layer into ``out_dir``; returns the paths.

    Each varying axis gets a panel (the other axis at full width): measured points as
    dots, the table's value at every width as a line, unconfirmed (estimated) intervals
    shaded, located steps as dotted lines and the group's pruning candidates as ticks.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    pred = result.predictor
    paths: list[Path] = []
    for layer in pred.space.layers:
        t = result.table.table(layer.name)
        axes = list(t.axes.items())
        if not axes:
            continue
        fig, panels = plt.subplots(1, len(axes), figsize=(6.2 * len(axes), 3.8), squeeze=False)
        for ax, (name, st) in zip(panels[0], axes):
            f = t.family
            xs = list(range(st.lo, st.hi + 1))
            if name == "out":
                ys = [t.ms(f.n_in, c) for c in xs]
                group = layer.out_group
                label = f"output channels (input {f.n_in})"
            elif name == "in":
                ys = [t.ms(c, f.n_out) for c in xs]
                group = layer.in_group
                label = f"input channels (output {f.n_out})"
            else:
                ys = [t.ms(c, c) for c in xs]
                group = layer.out_group or layer.in_group
                label = "channels (input = output)"
            for p, q in st.unconfirmed():
                ax.axvspan(p, q, color="orange", alpha=0.15, lw=0)
            ax.plot(xs, ys, color="tab:blue", lw=1, label="table")
            ax.plot(st.xs, st.ys, "o", ms=3, color="black", label="measured")
            for s in st.steps():
                ax.axvline(s + 0.5, color="tab:red", ls=":", lw=0.8)
            if group and group in pred.space.groups:
                cands = pred.candidates(group)
                ax.plot(cands, [min(st.ys) * 0.97] * len(cands), "|", color="tab:green", ms=8, label="candidates")
            ax.set_xlabel(label)
            ax.set_ylabel("ms")
            ax.grid(alpha=0.3)
        panels[0][0].legend(loc="upper left", fontsize=7)
        shape = f"{layer.in_channels}->{layer.out_channels}" + (
            f" @{layer.input_hw[0]}x{layer.input_hw[1]}" if layer.input_hw else "")
        fig.suptitle(f"{layer.name} ({layer.kind}{' dw' if layer.depthwise else ''} {shape}){title_suffix}", fontsize=10)
        fig.tight_layout()
        path = out_dir / _fname(layer.name)
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths
