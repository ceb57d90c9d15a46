"""``knapsack``: keep the most importance the latency budget can pay for (HALP-like).

Every prunable group may take any of its *snapped* widths (the fast side of a latency
step, from the latency table). Keeping the ``c`` best channels of group g is worth
``v_g(c)`` (the sum of their importances) and costs latency. The choice is a
multiple-choice knapsack:

1. **DP** on a linearisation: each group's latency saving is measured with the other
   groups at their current widths, savings are binned, and a dynamic programme picks
   one width per group that saves enough latency while losing the least importance.
   Savings of coupled groups are not additive (a conv whose input *and* output shrink
   saves less than the sum), so the plan is re-linearised around its own solution and
   the DP's target is raised until the *exact* prediction of the whole configuration is
   within budget (a few rounds).
2. **Exact repair / refill**: greedy steps on the true predictor: while over budget,
   drop the snapped step that loses the least importance per millisecond saved; then,
   while some slack remains, add back the step that regains the most importance per
   millisecond spent. Staircase latencies make the refill matter: a width just below a
   step can often grow for free.
3. **Slivers are weighed against their accuracy** (with validation data): a group left
   below :data:`SLIVER_FRACTION` of its width is where summed importances mislead most —
   importance is estimated one channel at a time, so it misses that a residual stream or
   an expansion cut to a few channels is a bottleneck for everything after it, and
   per-channel scores of groups of very different sizes and positions (squeeze-
   excitation gates among them) are not comparable enough to trade 80 % of one against
   10 % of another. Measured on a MobileNetV3-like net (SE, hardswish, BN momentum 0.01)
   trained on digits at a 0.5 budget: knapsack/Taylor cut its residual streams to 8/24
   and 8/40 channels. So each sliver is tried at :data:`SLIVER_FRACTION` of its width,
   the latency paid elsewhere by the exact repair; the trial is kept when its accuracy on
   the search's validation split, after a brief recovery (BatchNorm recalibrated and
   :data:`SLIVER_RECOVERY_STEPS` distilled SGD steps, for the sliver and the trial alike),
   beats the sliver's by more than :data:`SLIVER_MARGIN` points. Why the recovery:
   without it both are judged at their collapsed accuracy right after the cut (47 % on
   a MobileNetV3-Small at 64x64) — where a 1024-unit classifier cut to 16 looked no worse,
   and the fine-tuned model then stalled at 70 % (98.9 % for Torch-Pruning's cut at the
   same MACs). Every keep changes the widths the others were judged at (its latency was
   paid by cutting them), so every remaining sliver is weighed again after it. A sliver
   that costs nothing stays: the rule is a measurement, not a floor.
   ``strategy_options={"slivers": 0}`` turns it off (another fraction: ``{"slivers": 0.5}``).
"""

from __future__ import annotations

import numpy as np

from edgeprune.errors import PruneError
from edgeprune.prune.strategies.base import STRATEGIES, SearchContext, SearchResult, Strategy, Widths, kept_value

#: a group kept below this fraction of its width is a sliver: its accuracy cost is measured
SLIVER_FRACTION = 0.25
#: accuracy points (on the search's validation split) a wider trial must win by to be kept:
#: above the noise of one recalibrated evaluation of a few hundred samples
SLIVER_MARGIN = 1.0
#: distilled SGD steps each sliver trial is recovered with before it is scored
SLIVER_RECOVERY_STEPS = 20


@STRATEGIES.register("knapsack")
class Knapsack(Strategy):
    name = "knapsack"
    default_importance = "taylor"
    description = "maximise kept importance under the latency budget (multiple-choice knapsack DP + exact repair)"

    def __init__(self, bins: int = 400, rounds: int = 6, neighbours: int = 6, slivers: float = SLIVER_FRACTION,
                 sliver_margin: float = SLIVER_MARGIN) -> None:
        self.bins = bins
        self.rounds = rounds
        self.neighbours = neighbours  # snapped steps considered per move in the exact phase
        self.slivers = slivers  # 0: never weigh slivers against their accuracy
        self.sliver_margin = sliver_margin

    def search(self, ctx: SearchContext) -> SearchResult:
        groups = [g.id for g in ctx.space.prunable_groups()]
        cands = {g: ctx.candidates(g) for g in groups}
        values = {g: kept_value(ctx.scores[g]) for g in groups}
        full = ctx.full()
        history: list[dict] = []
        w: Widths = {g: full[g] for g in groups}
        lat = ctx.predict(w)
        if lat <= ctx.budget_ms:
            return SearchResult(widths=w, predicted_ms=lat, history=[{"phase": "none", "predicted_ms": lat}])

        # 1. DP on linearised savings, re-linearised around its own solution
        need_scale = 1.0
        best: Widths | None = None
        for r in range(self.rounds):
            around = w if r else {g: full[g] for g in groups}
            plan = self._dp(ctx, groups, cands, values, around, need_scale)
            if plan is None:
                break
            p_lat = ctx.predict(plan)
            history.append({"phase": "dp", "round": r, "predicted_ms": p_lat, "scale": need_scale})
            if p_lat <= ctx.budget_ms:
                best = plan
                break
            base = ctx.predict(around)
            need = max(1e-9, base - ctx.budget_ms)
            need_scale *= 1.0 + min(1.0, (p_lat - ctx.budget_ms) / need)
            w = plan
        w = best if best is not None else w

        # 2. exact greedy repair (over budget) and refill (slack left)
        w = self._repair(ctx, groups, cands, values, w, history)
        w = self._refill(ctx, groups, cands, values, w, history)
        notes: list[str] = []
        evaluations = 0
        fraction = float(ctx.options.get("slivers", self.slivers))  # strategy_options={"slivers": 0} turns it off
        if fraction > 0 and ctx.data is not None and ctx.eval_split is not None:
            w, evaluations = self._weigh_slivers(ctx, groups, cands, values, w, history, notes, fraction)
        lat = ctx.predict(w)
        if lat > ctx.budget_ms * (1 + 1e-9):
            raise PruneError(f"knapsack could not meet the budget ({lat:.3f} ms > {ctx.budget_ms:.3f} ms)")
        return SearchResult(widths=w, predicted_ms=lat, history=history, evaluations=evaluations, notes=notes)

    def _accuracy(self, ctx: SearchContext, w: Widths, steps: int = 0) -> float:
        """Validation accuracy of the cut, BatchNorm recalibrated (a cut shifts the
        statistics after it; uncalibrated, every candidate would look collapsed), after
        ``steps`` recovery steps (distilled when the context has a teacher)."""
        from edgeprune.prune.finetune import recover

        m = ctx.cut(w)
        assert ctx.data is not None
        recover(m, ctx.data, steps, seed=ctx.seed, teacher=ctx.teacher)  # steps=0: BN recalibration only
        return ctx.evaluate(m)

    def _weigh_slivers(self, ctx, groups, cands, values, w: Widths, history, notes,
                       fraction: float) -> tuple[Widths, int]:
        """Step 3 of the module docstring: give a sliver width back where it is costly."""
        size = {g: ctx.space.groups[g].size for g in groups}
        steps = int(ctx.options.get("sliver_recovery_steps", SLIVER_RECOVERY_STEPS))
        acc = self._accuracy(ctx, w, steps)
        evaluations, kept = 1, set()
        while True:  # each pass weighs every sliver at the current widths; a keep changes them
            slivers = [g for g in groups if g not in kept and w[g] < fraction * size[g]
                       and any(c >= fraction * size[g] for c in cands[g])]
            if not slivers:
                break
            best = None
            for g in slivers:
                up = min(c for c in cands[g] if c >= fraction * size[g])
                others = [x for x in groups if x != g and x not in kept]  # who pays: never a kept one
                trial = self._repair(ctx, others, cands, values, {**w, g: up}, [])
                if ctx.predict(trial) > ctx.budget_ms * (1 + 1e-9):
                    continue  # the others cannot pay for it
                t_acc = self._accuracy(ctx, trial, steps)
                evaluations += 1
                if t_acc > acc + self.sliver_margin and (best is None or t_acc > best[0]):
                    best = (t_acc, g, trial)
            if best is None:
                break
            t_acc, g, trial = best
            notes.append(f"knapsack: group {g} cut to {w[g]}/{size[g]} channels cost accuracy on the search split "
                         f"({acc:.1f}% vs {t_acc:.1f}% at {trial[g]}); kept {trial[g]} and cut elsewhere")
            history.append({"phase": "sliver", "group": g, "from": w[g], "to": trial[g], "accuracy": [acc, t_acc]})
            w, acc = trial, t_acc
            kept.add(g)
        if kept:  # the repairs may have overpaid: slack goes back
            w = self._refill(ctx, groups, cands, values, w, history)
        return w, evaluations

    def _dp(self, ctx, groups, cands, values, around: Widths, scale: float) -> Widths | None:
        base = ctx.predict(around)
        need = (base - ctx.budget_ms) * scale
        if need <= 0:
            return dict(around)
        unit = need / self.bins
        nb = self.bins
        # dp[s] = best kept importance with savings bin s (the last bin means "enough");
        # per group: which option reached each bin, and from which bin
        dp = np.full(nb + 1, -np.inf)
        dp[0] = 0.0
        back: list[tuple[list[tuple[int, int, float]], np.ndarray, np.ndarray]] = []
        bins = np.arange(nb + 1)
        for g in groups:
            opts = []
            for c in cands[g]:
                trial = dict(around)
                trial[g] = c
                saving = base - ctx.predict(trial)
                b = int(np.clip(np.floor(max(0.0, saving) / unit), 0, nb))
                opts.append((c, b, float(values[g][c])))
            new = np.full(nb + 1, -np.inf)
            ptr = np.full(nb + 1, -1, dtype=np.int64)
            pred = np.full(nb + 1, -1, dtype=np.int64)
            for k, (c, b, v) in enumerate(opts):
                shifted = np.full(nb + 1, -np.inf)
                src = np.full(nb + 1, -1, dtype=np.int64)
                shifted[b:nb] = dp[: nb - b] + v
                src[b:nb] = bins[: nb - b]
                j = nb - b + int(np.argmax(dp[nb - b:]))  # saturating into the last bin
                shifted[nb] = dp[j] + v
                src[nb] = j
                better = shifted > new
                new[better] = shifted[better]
                ptr[better] = k
                pred[better] = src[better]
            back.append((opts, ptr, pred))
            dp = new
        if not np.isfinite(dp[nb]):
            return None
        plan: Widths = {}
        s = nb
        for g, (opts, ptr, pred) in zip(reversed(groups), reversed(back)):
            plan[g] = opts[int(ptr[s])][0]
            s = int(pred[s])
        return plan

    def _moves(self, cands: list[int], cur: int, down: bool) -> list[int]:
        if down:
            smaller = [c for c in cands if c < cur]
            return smaller[-self.neighbours:]
        return [c for c in cands if c > cur][: self.neighbours]

    def _repair(self, ctx, groups, cands, values, w: Widths, history) -> Widths:
        w = dict(w)
        lat = ctx.predict(w)
        steps = 0
        while lat > ctx.budget_ms:
            best = None
            for g in groups:
                for c in self._moves(cands[g], w[g], down=True):
                    trial = {**w, g: c}
                    t_lat = ctx.predict(trial)
                    saved = lat - t_lat
                    lost = values[g][w[g]] - values[g][c]
                    if saved <= 0:
                        continue
                    # savings beyond the budget are worth nothing: cap them
                    key = (lost / min(saved, lat - ctx.budget_ms), -saved)
                    if best is None or key < best[0]:
                        best = (key, g, c, t_lat)
            if best is None:
                break
            _, g, c, lat = best
            w[g] = c
            steps += 1
        history.append({"phase": "repair", "steps": steps, "predicted_ms": lat})
        return w

    def _refill(self, ctx, groups, cands, values, w: Widths, history) -> Widths:
        w = dict(w)
        lat = ctx.predict(w)
        steps = 0
        while True:
            best = None
            for g in groups:
                for c in self._moves(cands[g], w[g], down=False):
                    trial = {**w, g: c}
                    t_lat = ctx.predict(trial)
                    if t_lat > ctx.budget_ms:
                        continue
                    gain = values[g][c] - values[g][w[g]]
                    cost = t_lat - lat
                    ratio = np.inf if cost <= 1e-12 else gain / cost
                    key = (ratio, gain)
                    if best is None or key > best[0]:
                        best = (key, g, c, t_lat)
            if best is None or best[0][1] <= 0:
                break
            _, g, c, lat = best
            w[g] = c
            steps += 1
        history.append({"phase": "refill", "steps": steps, "predicted_ms": lat})
        return w
