"""What every search strategy gets (:class:`SearchContext`) and returns (:class:`SearchResult`)."""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edgeprune.errors import PruneError
from edgeprune.models.base import DataSplit, ModelData
from edgeprune.prune.space import LatencyModel
from edgeprune.registry import Registry

if TYPE_CHECKING:  # torch is imported lazily: the CLI lists strategies without paying for it
    from torch import nn

    from edgeprune.prune.graph import TracedSpace

Log = Callable[[str], None]
Widths = dict[str, int]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class SearchContext:
    """Everything a strategy may use. ``module`` is never modified.

    ``scores`` are the channel importances of ``space`` (comparable across groups);
    ``eval_split`` is the (small) validation subset searches score candidates on;
    ``rescore(module, space)`` recomputes importances for an already pruned model
    (strategies that prune iteratively need it).
    """

    module: "nn.Module"
    space: "TracedSpace"
    latency: LatencyModel
    budget_ms: float
    scores: Mapping[str, np.ndarray]
    data: ModelData | None = None
    eval_split: DataSplit | None = None
    eval_batch: int = 256
    teacher: "nn.Module | None" = None
    rescore: "Callable[[nn.Module, TracedSpace], Mapping[str, np.ndarray]] | None" = None
    seed: int = 0
    log: Log = _stderr
    progress: bool = True
    options: Mapping[str, Any] = field(default_factory=dict)

    # -- latency --------------------------------------------------------------------
    def full(self, space: "TracedSpace | None" = None) -> Widths:
        return (space or self.space).full_widths()

    def predict(self, widths: Mapping[str, int], space: "TracedSpace | None" = None) -> float:
        w = self.full(space)
        w.update({k: int(v) for k, v in widths.items()})
        return float(self.latency.predict(w))

    def candidates(self, gid: str, space: "TracedSpace | None" = None) -> list[int]:
        """Snapped widths for ``gid`` within [min_size, current size], ascending, always
        including the current size. A group whose channels come in blocks (``unit``: conv
        groups, heads) gets only multiples of ``unit``; if the latency model offers none
        below full size (a table measured without the blocks in mind), every multiple."""
        g = (space or self.space).groups[gid]
        unit = max(1, g.unit)
        lo = max(1, g.min_size, unit)
        try:
            cands = [int(c) for c in self.latency.candidates(gid)]
        except (KeyError, LookupError):
            cands = []
        out = sorted({c for c in cands if lo <= c <= g.size and c % unit == 0} | {g.size})
        if unit > 1 and len(out) == 1:
            out = list(range(-(-lo // unit) * unit, g.size + 1, unit)) or [g.size]
        return out

    def min_widths(self, space: "TracedSpace | None" = None) -> Widths:
        sp = space or self.space
        return {g.id: self.candidates(g.id, sp)[0] for g in sp.prunable_groups()}

    # -- models ---------------------------------------------------------------------
    def cut(self, widths: Mapping[str, int], module: "nn.Module | None" = None, space: "TracedSpace | None" = None,
            scores: Mapping[str, np.ndarray] | None = None) -> "nn.Module":
        """A pruned copy keeping the ``widths[g]`` most important channels of each group."""
        from edgeprune.prune.graph import apply_widths, keep_by_importance

        sp = space or self.space
        keep = keep_by_importance(sp, scores if scores is not None else self.scores, widths)
        return apply_widths(module if module is not None else self.module, sp, keep)

    def evaluate(self, module: "nn.Module") -> float:
        from edgeprune.models.train import evaluate

        if self.eval_split is None or self.data is None:
            raise PruneError("this strategy scores candidates on validation data, and the model has none",
                             "pass --data, or use --strategy knapsack / uniform")
        return float(evaluate(module, self.eval_split, self.data.task, batch_size=self.eval_batch))


@dataclass
class SearchResult:
    """Widths chosen by a strategy. ``module`` is set when the strategy already built
    (and possibly fine-tuned) the pruned model; otherwise the caller cuts it."""

    widths: Widths
    predicted_ms: float
    module: "nn.Module | None" = None
    space: "TracedSpace | None" = None
    history: list[dict[str, Any]] = field(default_factory=list)
    evaluations: int = 0
    notes: list[str] = field(default_factory=list)


class Strategy(ABC):
    """Chooses a width per group so that predicted latency <= budget."""

    name: ClassVar[str] = ""
    default_importance: ClassVar[str] = "l1"
    needs_data: ClassVar[bool] = False
    description: ClassVar[str] = ""

    @abstractmethod
    def search(self, ctx: SearchContext) -> SearchResult:
        ...


STRATEGIES: Registry[type[Strategy]] = Registry("pruning strategy", PruneError)


def kept_value(scores: np.ndarray) -> np.ndarray:
    """``v[c]`` = total importance kept when the ``c`` best channels stay (v[0] = 0)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    return np.concatenate([[0.0], np.cumsum(s)])
