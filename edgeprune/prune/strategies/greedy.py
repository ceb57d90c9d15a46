"""``greedy``: NetAdapt-like iterative pruning (Yang et al., ECCV 2018).

The latency target shrinks in ``iterations`` equal steps from the model's predicted
latency to the budget. In each step, every prunable group makes a *proposal*: the
widest snapped width that alone meets this step's target, keeping its most important
channels. Each proposal is briefly recovered (BN recalibration + a few SGD steps) and
scored on validation data; the most accurate one is kept, fine-tuned a little longer,
and becomes the model the next step starts from (importance is recomputed on it).
If no single group can reach a step's target, the proposal that loses the least
accuracy per millisecond saved is taken instead and the step is repeated.
"""

from __future__ import annotations

from edgeprune.errors import PruneError
from edgeprune.prune.strategies.base import STRATEGIES, SearchContext, SearchResult, Strategy


@STRATEGIES.register("greedy")
class Greedy(Strategy):
    name = "greedy"
    default_importance = "l1"
    needs_data = True
    description = "NetAdapt-like: per step, the group whose cut meets the step target with the best accuracy"

    def __init__(self, iterations: int = 6, proposal_steps: int = 8, step_finetune: int = 40,
                 max_rounds: int | None = None) -> None:
        self.iterations = iterations
        self.proposal_steps = proposal_steps
        self.step_finetune = step_finetune
        self.max_rounds = max_rounds or 4 * iterations

    def search(self, ctx: SearchContext) -> SearchResult:
        opts = ctx.options
        iterations = int(opts.get("iterations", self.iterations))
        proposal_steps = int(opts.get("proposal_steps", self.proposal_steps))
        step_finetune = int(opts.get("step_finetune", self.step_finetune))
        if ctx.data is None:
            raise PruneError("greedy pruning fine-tunes between steps and needs training data", "pass --data")
        import copy

        from edgeprune.prune.finetune import progress_bar, recover

        module = copy.deepcopy(ctx.module).eval()
        space = ctx.space
        scores = ctx.scores
        widths = space.full_widths()
        l0 = ctx.predict(widths)
        history: list[dict] = []
        evaluations = 0
        step = 1
        rounds = 0
        lat = l0
        with progress_bar(ctx.progress, "greedy search", iterations) as bar:
            while lat > ctx.budget_ms and rounds < self.max_rounds:
                rounds += 1
                target = l0 - (l0 - ctx.budget_ms) * min(1.0, step / iterations)
                proposals = []
                for g in space.prunable_groups():
                    cands = [c for c in ctx.candidates(g.id, space) if c < widths[g.id]]
                    if not cands:
                        continue
                    fits = [c for c in cands if ctx.predict({**widths, g.id: c}, space) <= target]
                    c = fits[-1] if fits else cands[0]
                    p_lat = ctx.predict({**widths, g.id: c}, space)
                    if p_lat >= lat:
                        continue
                    cand = ctx.cut({g.id: c}, module=module, space=space, scores=scores)
                    recover(cand, ctx.data, proposal_steps, seed=ctx.seed + rounds, teacher=ctx.teacher)
                    acc = ctx.evaluate(cand)
                    evaluations += 1
                    proposals.append({"group": g.id, "width": c, "predicted_ms": p_lat, "accuracy": acc,
                                      "meets": p_lat <= target, "module": cand})
                if not proposals:
                    break
                meeting = [p for p in proposals if p["meets"]]
                if meeting:
                    best = max(meeting, key=lambda p: (p["accuracy"], -p["predicted_ms"]))
                    step += 1
                    bar(f"{best['predicted_ms']:.3f} ms, acc {best['accuracy']:.1f}%")
                else:  # no single group reaches the target: best accuracy per ms saved
                    best = max(proposals, key=lambda p: (p["accuracy"] - 100.0) / max(1e-9, lat - p["predicted_ms"]))
                module = best["module"]
                if step_finetune > 0:
                    recover(module, ctx.data, step_finetune, seed=ctx.seed + 1000 + rounds, teacher=ctx.teacher)
                widths = {**widths, best["group"]: best["width"]}
                lat = best["predicted_ms"]
                history.append({k: v for k, v in best.items() if k != "module"} | {"round": rounds, "target_ms": target})
                ctx.log(f"  greedy step {rounds}: {best['group']} -> {best['width']} channels, "
                        f"predicted {lat:.3f} ms (target {target:.3f}), proposal accuracy {best['accuracy']:.2f}%")
                space = space.rebuild(module)
                scores = ctx.rescore(module, space) if ctx.rescore else scores
        if lat > ctx.budget_ms:
            raise PruneError(f"greedy search stopped at {lat:.3f} ms, above the budget {ctx.budget_ms:.3f} ms")
        return SearchResult(widths=widths, predicted_ms=lat, module=module, space=space, history=history,
                            evaluations=evaluations)
