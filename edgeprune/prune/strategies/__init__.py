"""Search strategies: choose a width per channel group under a latency budget.

``STRATEGIES`` maps names to classes (the CLI's ``--strategy`` choices come from it):

- ``knapsack``: maximise kept importance s.t. predicted latency <= budget, widths
  snapped to the fast side of latency steps (HALP-like DP + exact repair/refill);
- ``greedy``: NetAdapt-like iterations with short fine-tunes between steps;
- ``genetic``: evolutionary search over per-group keep ratios, fitness = accuracy;
- ``uniform``: the same ratio everywhere by magnitude (the hardware-agnostic baseline).
"""

from edgeprune.prune.strategies.base import STRATEGIES, SearchContext, SearchResult, Strategy
from edgeprune.prune.strategies import genetic, greedy, knapsack, uniform  # noqa: F401  (registration)


__all__ = ["STRATEGIES", "SearchContext", "SearchResult", "Strategy"]
