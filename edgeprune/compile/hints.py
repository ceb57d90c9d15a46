"""Hints: why a number in the results is bad, and what fixes it.

A table that shows ``53.7 ms  0.01x`` or ``CV 243 %`` without a word makes the user
guess (an untuned TVM? a busy device? a broken compiler?). Each condition that makes a
figure untrustworthy or surprising is detected here, from what ``summarize`` already
knows, and written as one ``"<tag>: what is wrong; what to do"`` line:

* on the backend it concerns (``BackendResult.hints``): the CLI table shows the tags
  in its ``hint`` column and the full lines under the table; ``report.md`` lists them
  under its table; ``summary.json`` keeps them per backend;
* for the whole run (``CompileSummary.hints``): synthetic inputs that saturated the model.

Why the chosen backend is not the one with the lowest median goes on the row with the
lower median (``not chosen: ...``), right where the eye finds the contradiction.

The tag is the text before the first ``:`` (:func:`tag`), so the lines stay plain strings
in ``summary.json``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from edgeprune.bench.rounds import rounds_faster
from edgeprune.compile.summary import BackendResult
from edgeprune.compile.synthetic import InputCheck

#: how far the 90th percentile may sit above the median before a series is called noisy.
#: Not the CV: on a small model a handful of scheduler spikes (a 5 ms stall among 0.3 ms
#: runs) lift the CV to 100-900 % on a VM that is otherwise quiet, so a CV rule fired on
#: nearly every run here and a hint that always fires is read by nobody. The p90 moves
#: only when a tenth of the runs are slow, which is what a busy device does (two runs at
#: once: medians doubled, the CV 243 %); a quiet CPU keeps it within ~10 % of the median.
NOISY_SPREAD = 0.25


def spread(stats) -> float:
    """p90 over the median, minus one: the series' robust noise figure."""
    return stats.p90 / stats.median - 1 if stats.median > 0 else 0.0


def tag(hint: str) -> str:
    """The short label of a hint line (the text before its first ``:``)."""
    return hint.split(":", 1)[0]


def tuning_hint(name: str, options: Mapping[str, Any] | None, accelerator: str, tune_cmd: str) -> str | None:
    """TVM on a CPU built without (all) MetaSchedule records: why it is slow, and the tune command.

    ``options`` None: not built here (a prebuilt ``bench --artifact``), its tuning is unknown.
    """
    if name.split("-")[0] != "tvm" or accelerator != "none" or not options:
        return None
    tuned, total = (list(options.get("kernels_tuned") or [0, 0]) + [0, 0])[:2]
    if tuned == 0:
        return (f"untuned: TVM without MetaSchedule records runs every kernel on its default schedule, far slower "
                f"than ONNX Runtime; run `{tune_cmd}` once (records are kept), then compile again")
    if tuned < total:
        return (f"partly tuned: records for {tuned} of {total} kernels; run `{tune_cmd}` "
                "(it resumes where the records stop)")
    return None


def noise_hint(b: BackendResult) -> str | None:
    """A series whose spread says the device was not quiet while it was timed."""
    if b.latency_ms is None or spread(b.latency_ms) <= NOISY_SPREAD:
        return None
    cv = (f"p90 {spread(b.latency_ms):+.0%} above the median (> {NOISY_SPREAD:.0%}; "
          f"CV {b.latency_ms.cv:.0%})")
    if ((b.env or {}).get("timing") or {}).get("gate") is not None:
        return (f"noisy: {cv} even with --steady-gate: the device is busy; rerun when nothing else runs on it "
                "(the figures of this run are not comparable)")
    return f"noisy: {cv}: the device was busy? rerun with --steady-gate, or on a quiet device"


def saturation_hint(b: BackendResult, check: InputCheck | None) -> str | None:
    """A parity failure on outputs that synthetic inputs saturated says nothing about the artifact."""
    if check is None or b.verified is not False:
        return None
    return (f"parity not meaningful: it failed on outputs that synthetic inputs {check.verb} ({check.kind} "
            f"output '{check.output}'), where any rounding flips the result; pass --data FILE.npz with real samples")


def choice_hint(backends: list[BackendResult], chosen: str | None, rejected: Mapping[str, str],
                decision_ms: Callable[[BackendResult], float]) -> tuple[str | None, str | None]:
    """(the backend with the lowest median when it is not the chosen one, why it is not).

    The median column pools every run; the choice is made on the fast state of the
    interleaved round medians of verified artifacts (``summarize.choose_backend``). When
    they disagree, the reason is one of: the lower one was rejected (parity, accuracy,
    a failed run), or both are within this device's noise and the fast state decided.
    """
    measured = [b for b in backends if b.ok]
    best = next((b for b in backends if b.name == chosen), None)
    if best is None or best.latency_ms is None or not measured:
        return None, None
    low = min(measured, key=lambda b: b.latency_ms.median)  # type: ignore[union-attr]
    if low.name == best.name or low.latency_ms.median >= best.latency_ms.median:  # type: ignore[union-attr]
        return None, None
    medians = f"median {low.latency_ms.median:.3f} ms vs {best.latency_ms.median:.3f} ms"  # type: ignore[union-attr]
    if low.name in rejected:
        return low.name, f"not chosen: {low.name} has the lower {medians}, but {rejected[low.name]}"
    won, n = rounds_faster(low.round_medians_ms, best.round_medians_ms)
    text = (f"not chosen: {low.name} has the lower {medians} pooled over all runs, but {best.name} is faster in "
            f"the device's fast state ({decision_ms(best):.3f} ms vs {decision_ms(low):.3f} ms over {n} interleaved "
            "rounds), which a slow episode hitting one backend cannot tilt")
    if n > 1:
        text += f"; {low.name} won {won} of {n} rounds: a tie within this device's noise, rerun to separate them"
    return low.name, text


def add_hints(backends: list[BackendResult], chosen: str | None, rejected: Mapping[str, str], *,
              options: Mapping[str, Mapping[str, Any]], accelerator: str, tune_cmd: str,
              input_check: InputCheck | None, decision_ms: Callable[[BackendResult], float],
              emulated: bool = False) -> list[str]:
    """Append each backend's hints to it; return the run's hints.

    ``options`` are the built artifacts' runtime options by backend name (TVM records how
    many kernels its records covered there). On an ``emulated`` device timings mean
    nothing, so their noise is not worth a hint.
    """
    for b in backends:
        for h in (tuning_hint(b.name, options.get(b.name), accelerator, tune_cmd), None if emulated else noise_hint(b),
                  saturation_hint(b, input_check)):
            if h is not None and h not in b.hints:
                b.hints.append(h)
    run: list[str] = []
    if input_check is not None:
        run.append(input_check.hint())
    low, why = choice_hint(backends, chosen, rejected, decision_ms)
    if low is not None and why is not None:
        next(b for b in backends if b.name == low).hints.append(why)
    return run
