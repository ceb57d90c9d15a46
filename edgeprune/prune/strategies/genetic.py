"""``genetic``: evolutionary search over per-group keep ratios.

An individual is one keep ratio per prunable group. It is *decoded* into snapped
widths (the widest snapped width not above ``ratio * size``) and *repaired* onto the
budget: while over budget, all ratios shrink by a common factor (bisection), so every
individual evaluated is feasible. Fitness = validation accuracy (on a fixed subset)
after a brief recovery (BN recalibration plus a few SGD steps), tie-broken by lower
predicted latency. Tournament selection, uniform crossover, Gaussian mutation and
elitism; everything draws from one seeded generator, and fitness is cached per width
configuration. The initial population contains the uniform ratio and the knapsack
solution (so the search starts from the hardware-aware answer and can only improve on
it by measured accuracy), plus random individuals.
"""

from __future__ import annotations

import numpy as np

from edgeprune.errors import PruneError
from edgeprune.prune.strategies.base import STRATEGIES, SearchContext, SearchResult, Strategy, Widths


@STRATEGIES.register("genetic")
class Genetic(Strategy):
    name = "genetic"
    default_importance = "l1"
    needs_data = True
    description = "population of per-layer keep ratios; fitness = validation accuracy under the latency budget"

    def __init__(self, population: int = 12, generations: int = 8, elite: int = 2, tournament: int = 3,
                 mutation_rate: float = 0.3, mutation_sigma: float = 0.12, recovery_steps: int = 5) -> None:
        self.population = population
        self.generations = generations
        self.elite = elite
        self.tournament = tournament
        self.mutation_rate = mutation_rate
        self.mutation_sigma = mutation_sigma
        self.recovery_steps = recovery_steps

    def search(self, ctx: SearchContext) -> SearchResult:
        from edgeprune.prune.finetune import progress_bar, recover

        if ctx.data is None:
            raise PruneError("genetic search scores individuals on validation data", "pass --data")
        opts = ctx.options
        pop_n = int(opts.get("population", self.population))
        gens = int(opts.get("generations", self.generations))
        steps = int(opts.get("recovery_steps", self.recovery_steps))
        rng = np.random.default_rng(ctx.seed)
        groups = ctx.space.prunable_groups()
        ids = [g.id for g in groups]
        sizes = np.array([g.size for g in groups], dtype=np.float64)
        cands = {g: ctx.candidates(g) for g in ids}
        lo = np.array([cands[g][0] for g in ids]) / sizes

        def snap(ratios: np.ndarray) -> Widths:
            w = {}
            for g, r, n in zip(ids, ratios, sizes):
                fit = [c for c in cands[g] if c <= r * n + 1e-9]
                w[g] = fit[-1] if fit else cands[g][0]
            return w

        def decode(ratios: np.ndarray) -> tuple[np.ndarray, Widths, float]:
            r = np.clip(ratios, lo, 1.0)
            w = snap(r)
            lat = ctx.predict(w)
            if lat <= ctx.budget_ms:
                return r, w, lat
            a, b = 0.0, 1.0  # shrink factor f: r' = lo + f * (r - lo)
            for _ in range(20):
                f = (a + b) / 2
                if ctx.predict(snap(lo + f * (r - lo))) <= ctx.budget_ms:
                    a = f
                else:
                    b = f
            r = lo + a * (r - lo)
            w = snap(r)
            return r, w, ctx.predict(w)

        cache: dict[tuple[int, ...], float] = {}
        history: list[dict] = []

        def fitness(w: Widths) -> float:
            key = tuple(w[g] for g in ids)
            if key not in cache:
                m = ctx.cut(w)
                recover(m, ctx.data, steps, seed=ctx.seed, teacher=ctx.teacher)
                cache[key] = ctx.evaluate(m)
            return cache[key]

        # initial population: uniform, the knapsack answer, random ratios
        from edgeprune.prune.strategies.knapsack import Knapsack

        seeds = [np.ones(len(ids))]
        try:
            kw = Knapsack().search(ctx).widths
            seeds.append(np.array([kw[g] for g in ids]) / sizes)
        except PruneError:
            pass
        pop = seeds + [rng.uniform(lo, 1.0) for _ in range(max(0, pop_n - len(seeds)))]
        decoded = [decode(p) for p in pop]
        pop = [d[0] for d in decoded]
        best = None
        with progress_bar(ctx.progress, "genetic search", gens + 1) as bar:
            for gen in range(gens + 1):
                fits = []
                for r, w, lat in (decode(p) for p in pop):
                    f = fitness(w)
                    fits.append((f, -lat))
                    if best is None or (f, -lat) > best[0]:
                        best = ((f, -lat), w, lat)
                history.append({"generation": gen, "best_accuracy": best[0][0], "best_predicted_ms": best[2],
                                "mean_accuracy": float(np.mean([f for f, _ in fits]))})
                bar(f"best {best[0][0]:.2f}% at {best[2]:.3f} ms")
                if gen == gens:
                    break
                order = sorted(range(len(pop)), key=lambda i: fits[i], reverse=True)
                nxt = [pop[i].copy() for i in order[: self.elite]]
                while len(nxt) < len(pop):
                    a = self._select(pop, fits, rng)
                    b = self._select(pop, fits, rng)
                    child = np.where(rng.random(len(ids)) < 0.5, a, b)
                    mutate = rng.random(len(ids)) < self.mutation_rate
                    child = child + mutate * rng.normal(0.0, self.mutation_sigma, len(ids))
                    nxt.append(decode(child)[0])
                pop = nxt
        assert best is not None
        return SearchResult(widths=best[1], predicted_ms=best[2], history=history, evaluations=len(cache))

    def _select(self, pop, fits, rng) -> np.ndarray:
        idx = rng.choice(len(pop), size=min(self.tournament, len(pop)), replace=False)
        return pop[max(idx, key=lambda i: fits[i])]
