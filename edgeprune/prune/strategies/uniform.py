"""``uniform``: the same keep ratio in every prunable group, channels ranked by weight
magnitude: the baseline most pruning tools ship. It knows nothing about the hardware:
widths are ``round(ratio * size)``, not snapped to latency steps. The ratio is the
largest one (on a fine grid) whose predicted latency fits the budget."""

from __future__ import annotations

import numpy as np

from edgeprune.errors import PruneError
from edgeprune.prune.strategies.base import STRATEGIES, SearchContext, SearchResult, Strategy, Widths


def uniform_widths(ctx: SearchContext, ratio: float) -> Widths:
    """``round(ratio * size)`` per group, in whole blocks of the group's ``unit`` (conv
    groups, heads), within [min_size, size]."""
    out: Widths = {}
    for g in ctx.space.prunable_groups():
        unit = max(1, g.unit)
        lo = -(-max(1, g.min_size, unit) // unit) * unit
        out[g.id] = int(min(g.size, max(lo, round(ratio * g.size / unit) * unit)))
    return out


@STRATEGIES.register("uniform")
class Uniform(Strategy):
    name = "uniform"
    default_importance = "l1"
    description = "same keep ratio in every layer, channels by magnitude (hardware-agnostic baseline)"

    def __init__(self, steps: int = 400) -> None:
        self.steps = steps

    def search(self, ctx: SearchContext) -> SearchResult:
        ratio = ctx.options.get("ratio")
        if ratio is not None:  # a fixed ratio (benchmarks sweep it)
            w = uniform_widths(ctx, float(ratio))
            return SearchResult(widths=w, predicted_ms=ctx.predict(w), history=[{"ratio": float(ratio)}])
        for r in np.linspace(1.0, 0.0, self.steps + 1):
            w = uniform_widths(ctx, float(r))
            lat = ctx.predict(w)
            if lat <= ctx.budget_ms:
                return SearchResult(widths=w, predicted_ms=lat, history=[{"ratio": float(r), "predicted_ms": lat}])
        raise PruneError("uniform pruning cannot meet the budget even at one channel per group")
