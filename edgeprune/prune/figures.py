"""The pruning part of a compile summary: original beside pruned, as measured.

``compile`` measures the original model's artifacts in the same bundle run as the
pruned ones (interleaved, same runner, threads and settings), so the measured ratio
compares like with like; this module turns those measurements and the
:class:`PruneResult` into the summary's ``original`` / ``pruned`` figures and notes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgeprune.bench.bundle import JobResult
from edgeprune.bench.stats import LatencyStats
from edgeprune.compile.summary import CompileSummary, ModelFigures
from edgeprune.prune.options import PruneResult

#: tolerance for measurement noise when a measured ratio is judged against the budget
BUDGET_TOLERANCE = 0.05


def apply_pruning(
    summary: CompileSummary, result: PruneResult, original: ModelFigures, original_errors: Mapping[str, str],
    results: Mapping[str, JobResult], original_prefix: str, gate_error: str | None, saved: Mapping[str, str],
) -> None:
    """Set ``summary.original`` / ``summary.pruned`` and add the pruning notes.

    ``summary.original`` holds, on entry, the figures of the model that was built and
    chosen between (the pruned one); ``original`` the original model's cost and
    PyTorch accuracy; ``results`` the merged job results by id.
    """
    deployed = summary.original
    chosen = summary.backend
    extra: dict[str, Any] = dict(result.extra())
    extra["accuracy_pytorch"] = deployed.accuracy
    pruned = ModelFigures(params=deployed.params, macs=deployed.macs, accuracy=deployed.accuracy,
                          latency_ms=deployed.latency_ms, extra=extra)
    orig = ModelFigures(params=original.params, macs=original.macs, accuracy=original.accuracy)
    notes: list[str] = list(result.notes)  # the search's and the profile's (how many points it measured)
    jr = results.get(original_prefix + chosen) if chosen else None
    if jr is not None and jr.ok and jr.times_ms:
        orig.latency_ms = LatencyStats.from_times(jr.times_ms).to_dict()
        if jr.accuracy is not None:
            orig.accuracy = jr.accuracy
            orig.extra["accuracy_pytorch"] = original.accuracy
    elif chosen:
        why = (jr.error if jr is not None else None) or original_errors.get(chosen) or "not run"
        notes.append(f"original model not measured with {chosen}: {why}")
    pj = results.get(chosen) if chosen else None
    if pj is not None and pj.ok and pj.accuracy is not None:
        pruned.accuracy = pj.accuracy  # the compiled artifact's accuracy is the result
    o_ms = (orig.latency_ms or {}).get("median")
    p_ms = (pruned.latency_ms or {}).get("median")
    if o_ms and p_ms:
        ratio = p_ms / o_ms
        # a fraction is kept as the user gave it (no fraction -> ms -> fraction round trip)
        budget_ratio = (result.budget_fraction if result.budget_fraction is not None
                        else result.budget_ms / result.original_predicted_ms)
        extra["measured_ratio"] = round(ratio, 4)
        extra["budget_ratio"] = round(budget_ratio, 4)
        extra["predicted_ratio"] = round(result.predicted_latency_ms / result.original_predicted_ms, 4)
        # a fraction is judged against the original as measured now, side by side;
        # milliseconds against the clock
        if result.budget_fraction is not None:
            met = ratio <= budget_ratio * (1 + BUDGET_TOLERANCE)
        else:
            met = p_ms <= result.budget_ms * (1 + BUDGET_TOLERANCE)
        extra["budget_met"] = bool(met)
        notes.append(f"pruned ({result.strategy}/{result.importance}): measured {p_ms:.3f} ms vs original "
                     f"{o_ms:.3f} ms ({ratio:.2f}x; budget {budget_ratio:.2f}x, predicted {extra['predicted_ratio']:.2f}x)")
    if gate_error:
        notes.append(gate_error)
    if saved:
        notes.append(f"pruned torch model: {saved['model']} (torch.jit.load)")
    summary.original, summary.pruned = orig, pruned
    summary.notes += notes
