"""Judging one cell of a run against its baseline: latency, accuracy, parity.

A *cell* is (model, target, device, backend, variant). Its *baseline* is either the last
``baseline_runs`` runs with a good measurement of the same cell **in the same series**
(same machine fingerprint, backend version and threads; see
:mod:`edgeprune.results.fingerprint`), or the cell's measurement in a pinned run.

- A cell whose series has no earlier runs but whose cell does is a ``NEW_SERIES``: the
  environment changed (what changed is listed), so latency is not compared — never a
  false regression. The cross-series ratio is kept as information.
- Baselines are *good* measurements (measured, parity not failed). A detected step
  (SLOWER or FASTER) starts a new level: later runs compare with the runs from that
  step on, so a slowdown is reported the night it lands, not every night after; pin a
  baseline run to keep comparing against a fixed point instead.
- Accuracy and parity are judged apart from latency: accuracy may not drop more than
  ``accuracy_tolerance`` points below the baseline's; a parity failure is a regression
  on its own.

Latency is judged one of two ways, and the verdict says which (``data["method"]``):

- **paired** (the nightly default): the artifact of a baseline run was kept and timed
  again *interleaved with tonight's* in the same batches (:mod:`edgeprune.results.paired`).
  What a busy or drifting machine does to the night cancels; a batch in which the device
  was too busy is refused (UNKNOWN, "device busy", with a hint). The baseline's artifact
  is the one that started the current level (the oldest kept since the last detected
  change, or the pinned run's), so a slowdown that creeps in over several nights adds up
  against one fixed artifact.
- **history** (the fallback, when no baseline artifact is kept, and for ``compile`` /
  ``bench`` runs): tonight's batches against the earlier nights' samples
  (:func:`edgeprune.results.detect.compare`), judged only once ``min_baseline_runs``
  earlier runs exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgeprune.results import fingerprint
from edgeprune.results.detect import Comparison, DetectSettings, Verdict, check_accuracy, compare
from edgeprune.results.paired import PairedBatch, compare_paired
from edgeprune.results.records import Measurement, VerdictRecord
from edgeprune.results.store import ResultsStore

#: latency verdicts besides detect.Verdict
NEW_SERIES = "NEW_SERIES"
NO_BASELINE = "NO_BASELINE"
SKIPPED = "SKIPPED"
FAILED = "FAILED"


@dataclass(frozen=True)
class Policy:
    """How cells are judged (the ``detection`` and ``baseline`` sections of a matrix)."""

    detect: DetectSettings = field(default_factory=DetectSettings)
    baseline_runs: int = 5
    min_baseline_runs: int = 3  # fewer earlier runs: latency is shown, not judged
    pin: int | None = None
    accuracy_tolerance: float = 0.5  # points
    max_remeasure: int = 2
    fail_on_unknown: bool = False
    retime: bool = True  # nightly: time the baseline's kept artifact beside tonight's (the paired method)
    pair_rounds: int = 6  # rounds of a paired batch (even: each artifact goes first equally often)


@dataclass
class Paired:
    """What the nightly runner has for the paired method: the baseline measurement whose
    artifact it re-timed and the batches that timed it beside tonight's, or why not."""

    reference: Measurement | None = None
    batches: list[PairedBatch] = field(default_factory=list)
    note: str = ""  # why there are no paired batches (the history is judged instead)


@dataclass
class CellOutcome:
    cell: tuple[str, str, str, str, str]
    measurements: list[Measurement]
    verdicts: list[VerdictRecord] = field(default_factory=list)

    def get(self, kind: str) -> VerdictRecord | None:
        return next((v for v in self.verdicts if v.kind == kind), None)

    @property
    def latency(self) -> VerdictRecord | None:
        return self.get("latency")

    @property
    def regression(self) -> bool:
        return any(v.regression for v in self.verdicts)

    @property
    def failed(self) -> bool:
        return any(v.kind == "run" and v.verdict == FAILED for v in self.verdicts)

    @property
    def unknown(self) -> bool:
        lat = self.latency
        return lat is not None and lat.verdict == Verdict.UNKNOWN.value

    @property
    def slower(self) -> bool:
        lat = self.latency
        return lat is not None and lat.verdict == Verdict.SLOWER.value


def baseline_for(store: ResultsStore, current: Measurement, run_id: int, policy: Policy) -> tuple[list[Measurement], str]:
    """(baseline measurements, description) for a measured cell."""
    cell = current.cell
    if policy.pin is not None:
        pinned = [m for m in store.measurements(run_id=policy.pin, cell=cell) if m.good]
        return pinned, f"pinned run {policy.pin}"
    hist = store.history(cell, before_run=run_id, series=current.series, limit=policy.baseline_runs)
    # a detected step (SLOWER/FASTER) starts a new level: older runs are not the baseline any more
    changes = store.change_runs(cell, {int(m.run_id) for m in hist if m.run_id is not None})
    cut = ""
    if changes:
        newest_change = max(changes)
        hist = [m for m in hist if int(m.run_id) >= newest_change]  # type: ignore[arg-type]
        cut = f" since the change detected in run {newest_change}"
    runs = sorted({m.run_id for m in hist})
    return hist, f"last {len(runs)} good run(s) of this series{cut}" if hist else "none"


def series_change(store: ResultsStore, current: Measurement, run_id: int) -> tuple[Measurement | None, list[str]]:
    """The cell's latest good measurement in *another* series, and what changed."""
    prev = store.history(current.cell, before_run=run_id, limit=1)
    prev = [m for m in prev if m.series != current.series]
    if not prev:
        return None, []
    p = prev[0]
    lines = fingerprint.diff(p.env, current.env)
    if p.backend_version != current.backend_version:
        lines.append(f"{current.backend} {p.backend_version} -> {current.backend_version}")
    if p.threads != current.threads:
        lines.append(f"threads {p.threads} -> {current.threads}")
    return p, lines or ["environment fingerprint changed"]


def _changes(current: Measurement, base: list[Measurement]) -> str:
    """What differs from the baseline besides the machine: the model, the artifact."""
    notes = []
    if current.model_hash and base and all(b.model_hash and b.model_hash != current.model_hash for b in base):
        notes.append(f"model.onnx changed (sha256 {base[0].model_hash[:8]} -> {current.model_hash[:8]})")
    elif current.artifact_hash and base and all(b.artifact_hash and b.artifact_hash != current.artifact_hash for b in base):
        notes.append("same model, rebuilt artifact differs")
    return "; " + "; ".join(notes) if notes else ""


def reference_candidates(store: ResultsStore, current: Measurement, run_id: int, policy: Policy) -> list[Measurement]:
    """Baseline measurements whose artifact may be re-timed beside ``current``, best first,
    one per artifact: the pinned run's; else this series' runs since the last detected
    change (the current level), oldest first, so a slowdown creeping in over several
    nights adds up against the artifact that started the level."""
    if policy.pin is not None:
        pinned = store.measurements(run_id=policy.pin, cell=current.cell)
        ms = [m for m in pinned if m.good and m.series == current.series]
    else:
        ms = store.history(current.cell, before_run=run_id, series=current.series)
        changes = store.change_runs(current.cell, {int(m.run_id) for m in ms if m.run_id is not None})
        if changes:
            ms = [m for m in ms if int(m.run_id) >= max(changes)]  # type: ignore[arg-type]
        ms = ms[::-1]
    out, seen = [], set()
    for m in ms:
        if m.artifact_hash and m.artifact_hash not in seen:
            seen.add(m.artifact_hash)
            out.append(m)
    return out


def _sessions(ms: list[Measurement]) -> list[list[float]]:
    """One sample list per run (its re-measurements pooled): runs are independent sessions."""
    sessions: dict[int, list[float]] = {}
    for m in sorted(ms, key=lambda m: (m.run_id or 0, m.attempt)):
        sessions.setdefault(int(m.run_id or 0), []).extend(m.times_ms)
    return list(sessions.values())


def _paired_verdict(m0: Measurement, base: list[Measurement], how: str, c_hist: Comparison, paired: Paired,
                    policy: Policy) -> VerdictRecord:
    """The latency verdict of the paired method, with the history's view beside it."""
    ref = paired.reference
    assert ref is not None
    # the busy check compares the re-timed artifact with its own earlier runs (else the baseline's)
    own = [m for m in base if m.artifact_hash == ref.artifact_hash] or base
    c = compare_paired(paired.batches, policy.detect, _sessions(own))
    same = ref.artifact_hash == m0.artifact_hash
    against = (f"paired with the artifact of run {ref.run_id}"
               + (" (the same artifact: an A/A check of the device)" if same else ""))
    drift = f"; the baseline's artifact ran {c.drift - 1:+.1%} against its history tonight" if c.drift else ""
    info = f"; tonight vs history {c_hist.change:+.1%} (informational)"
    return VerdictRecord(
        cell=m0.cell, kind="latency", verdict=c.verdict.value, regression=c.verdict is Verdict.SLOWER,
        ratio=c.ratio, ci_low=c.ci_low, ci_high=c.ci_high, p_value=c.p_value,
        baseline_ids=[int(ref.id)] if ref.id is not None else [], measurement_id=m0.id,
        detail=f"{c.describe()}; {c.reason}; {against}{drift}{info}{_changes(m0, [ref])}",
        data=c.to_dict() | {"attempts": c.batches, "settings": policy.detect.to_dict(), "why": f"{c.reason}; {against}",
                            "reference_run": ref.run_id, "reference_artifact": ref.artifact_hash,
                            "history": {"ratio": c_hist.ratio, "ci_low": c_hist.ci_low, "ci_high": c_hist.ci_high,
                                        "verdict": c_hist.verdict.value, "baseline": how}},
    )


def judge_latency(store: ResultsStore, run_id: int, current: list[Measurement], policy: Policy,
                  paired: Paired | None = None) -> VerdictRecord:
    last = current[-1]
    good = [m for m in current if m.ok and m.times_ms]
    if not good:
        return VerdictRecord(cell=last.cell, kind="latency", verdict=FAILED, measurement_id=last.id,
                             detail=last.error or "not measured")
    m0 = good[-1]
    if m0.emulated:
        return VerdictRecord(cell=m0.cell, kind="latency", verdict=SKIPPED, measurement_id=m0.id,
                             detail="emulated device: timings are meaningless, latency not compared")
    base, how = baseline_for(store, m0, run_id, policy)
    if policy.pin is not None and base and base[0].series != m0.series:
        p, lines = base[0], fingerprint.diff(base[0].env, m0.env)
        return VerdictRecord(cell=m0.cell, kind="latency", verdict=NEW_SERIES, measurement_id=m0.id,
                             ratio=m0.median_ms / p.median_ms if p.median_ms and m0.median_ms else None,
                             baseline_ids=[int(p.id)] if p.id else [],
                             detail=f"pinned run {policy.pin} was measured in another environment: " + "; ".join(lines),
                             data={"changes": lines})
    if not base:
        prev, lines = series_change(store, m0, run_id)
        if prev is not None:
            ratio = m0.median_ms / prev.median_ms if prev.median_ms and m0.median_ms else None
            return VerdictRecord(
                cell=m0.cell, kind="latency", verdict=NEW_SERIES, measurement_id=m0.id, ratio=ratio,
                baseline_ids=[int(prev.id)] if prev.id else [],
                detail="environment changed, a new series starts: " + "; ".join(lines)
                + (f" (median {ratio:.3f}x the previous series, informational)" if ratio else ""),
                data={"changes": lines, "previous_series": prev.series},
            )
        return VerdictRecord(cell=m0.cell, kind="latency", verdict=NO_BASELINE, measurement_id=m0.id,
                             detail=f"no earlier measurement of this cell ({how}); this run starts the history")
    return latency_verdict(good, base, how, policy, paired)


def latency_verdict(good: list[Measurement], base: list[Measurement], how: str, policy: Policy,
                    paired: Paired | None = None) -> VerdictRecord:
    """The latency verdict on tonight's measured batches ``good`` (oldest first) against
    the baseline's measurements ``base`` (described by ``how``): paired when ``paired`` has
    batches, else the history's. The part of :func:`judge_latency` that needs no database,
    so ``benchmarks/regression_detection.py`` judges its nights with it."""
    m0 = good[-1]
    # one baseline session per earlier run (its re-measurements pooled); tonight's batches
    # are re-measurements of one session
    sessions = _sessions(base)
    c = compare(sessions, [m.times_ms for m in good], policy.detect)
    if paired is not None and paired.reference is not None and paired.batches:
        return _paired_verdict(m0, base, how, c, paired, policy)
    changed = _changes(m0, base)
    fallback = f"; not paired: {paired.note}" if paired is not None and paired.note else ""
    if policy.pin is None and len(sessions) < policy.min_baseline_runs:
        return VerdictRecord(
            cell=m0.cell, kind="latency", verdict=NO_BASELINE, measurement_id=m0.id, ratio=c.ratio,
            baseline_ids=[int(m.id) for m in base if m.id is not None],
            detail=f"history has {len(sessions)} of the {policy.min_baseline_runs} runs needed to judge latency "
                   f"({how}); {c.change:+.1%} vs them (informational){changed}{fallback}",
            data=c.to_dict() | {"attempts": len(good), "settings": policy.detect.to_dict(),
                                "why": f"building the baseline: {len(sessions)}/{policy.min_baseline_runs} runs"},
        )
    return VerdictRecord(
        cell=m0.cell, kind="latency", verdict=c.verdict.value, regression=c.verdict is Verdict.SLOWER,
        ratio=c.ratio, ci_low=c.ci_low, ci_high=c.ci_high, p_value=c.p_value,
        baseline_ids=[int(m.id) for m in base if m.id is not None], measurement_id=m0.id,
        detail=f"{c.describe()}; {c.reason}; baseline: {how} (history method){changed}{fallback}",
        data=c.to_dict() | {"attempts": len(good), "settings": policy.detect.to_dict(), "why": f"{c.reason}; {how}"},
    )


def judge_accuracy(store: ResultsStore, run_id: int, current: list[Measurement], policy: Policy) -> VerdictRecord | None:
    accs = [m.accuracy for m in current if m.ok and m.accuracy is not None]
    if not accs:
        return None
    m0 = current[-1]
    if policy.pin is not None:
        base = [m for m in store.measurements(run_id=policy.pin, cell=m0.cell) if m.good]
    else:
        base = store.history(m0.cell, before_run=run_id, limit=policy.baseline_runs)
    acc = float(np.median(accs))
    chk = check_accuracy([m.accuracy for m in base], acc, policy.accuracy_tolerance)
    verdict = "REGRESSION" if chk.regression else ("OK" if chk.baseline is not None else NO_BASELINE)
    return VerdictRecord(cell=m0.cell, kind="accuracy", verdict=verdict, regression=chk.regression,
                         ratio=None, measurement_id=m0.id, baseline_ids=[int(m.id) for m in base if m.id],
                         detail=chk.reason + (_changes(m0, base) if chk.regression else ""),
                         data={"baseline": chk.baseline, "current": acc, "drop": chk.drop,
                                                  "tolerance": policy.accuracy_tolerance})


def judge_parity(current: list[Measurement]) -> VerdictRecord | None:
    checked = [m for m in current if m.verified is not None]
    if not checked:
        return None
    bad = [m for m in checked if m.verified is False]
    m0 = bad[0] if bad else checked[-1]
    diff = f"max |diff| {m0.parity_max_diff:.2e}" if m0.parity_max_diff is not None else "max |diff| n/a"
    tol = f" vs tolerance {m0.parity_tolerance:.2e}" if m0.parity_tolerance is not None else ""
    return VerdictRecord(cell=m0.cell, kind="parity", verdict="FAIL" if bad else "PASS", regression=bool(bad),
                         measurement_id=m0.id, detail=f"outputs vs reference: {diff}{tol}",
                         data={"max_abs_diff": m0.parity_max_diff, "tolerance": m0.parity_tolerance})


def judge(store: ResultsStore, run_id: int, current: list[Measurement], policy: Policy,
          paired: Paired | None = None) -> CellOutcome:
    """Every verdict for one cell of ``run_id`` (``current``: its attempts, oldest first;
    ``paired``: the baseline artifact's batches beside tonight's, when the nightly runner
    has them)."""
    out = CellOutcome(cell=current[-1].cell, measurements=current)
    if not any(m.ok for m in current):
        out.verdicts.append(VerdictRecord(cell=out.cell, kind="run", verdict=FAILED, measurement_id=current[-1].id,
                                          detail=current[-1].error or "failed"))
    out.verdicts.append(judge_latency(store, run_id, current, policy, paired))
    for v in (judge_accuracy(store, run_id, current, policy), judge_parity(current)):
        if v is not None:
            out.verdicts.append(v)
    return out


def batches_judged(outcome: CellOutcome) -> int:
    """How many batches the latency verdict rests on: paired batches for the paired
    method, every measurement of the cell for the history method."""
    lat = outcome.latency
    if lat is not None and lat.data.get("method") == "paired":
        return int(lat.data.get("batches") or 0)
    return len(outcome.measurements)


def another_batch(outcome: CellOutcome, policy: Policy) -> str | None:
    """Why the cell should be measured once more before its verdict stands, or None.

    An UNKNOWN latency verdict (a busy device included: the load may pass) gets up to
    ``max_remeasure`` more batches, judged together with the first; a first SLOWER is
    confirmed by one more batch (a fresh runner process) before anyone is paged, so a slow
    episode of a shared machine, or a process that happens to favour one artifact, has to
    last across two processes to count.
    """
    n = batches_judged(outcome)
    if n > policy.max_remeasure:
        return None
    if outcome.unknown:
        return "measuring again"
    if outcome.slower and n == 1:
        return "confirming"
    return None
