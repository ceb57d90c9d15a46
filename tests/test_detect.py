"""Regression detection on synthetic samples whose answer is known: against history, and paired
(the baseline's artifact timed beside tonight's)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeprune.results.detect import (
    DetectSettings, Verdict, asv_rule, block_bootstrap, check_accuracy, compare, compare_py_rule, decide,
)
from edgeprune.results.paired import PairedBatch, batch_stats, compare_paired


def batch(rng: np.random.Generator, level: float = 1.0, n: int = 300, run_sd: float = 0.01,
          spikes: float = 0.08) -> np.ndarray:
    """One benchmark run as this shared machine produces it: a per-run offset (process,
    neighbours), right-skewed jitter, and interference spikes that only ever add time."""
    offset = np.exp(rng.normal(0, run_sd))
    t = level * offset * (1 + np.abs(rng.standard_t(4, n)) * 0.01)
    hit = rng.random(n) < spikes
    t[hit] *= rng.uniform(1.2, 3.0, hit.sum())
    return t


def nightly_verdict(rng, factor: float, settings: DetectSettings, max_remeasure: int = 2) -> Verdict:
    """What the nightly runner concludes: 5 baseline runs, re-measure while UNKNOWN."""
    base = [batch(rng) for _ in range(5)]
    cur = [batch(rng, factor)]
    v = compare(base, cur, settings).verdict
    while v is Verdict.UNKNOWN and len(cur) <= max_remeasure:
        cur.append(batch(rng, factor))
        v = compare(base, cur, settings).verdict
    return v


def test_five_percent_slowdown_is_found_and_aa_noise_is_not():
    rng = np.random.default_rng(7)
    s = DetectSettings(bootstrap=200)
    trials = 150
    aa = [nightly_verdict(rng, 1.00, s) for _ in range(trials)]
    ab = [nightly_verdict(rng, 1.05, s) for _ in range(trials)]
    false_alarms = sum(v in (Verdict.SLOWER, Verdict.FASTER) for v in aa) / trials
    detected = sum(v is Verdict.SLOWER for v in ab) / trials
    assert false_alarms <= 0.01, false_alarms
    assert detected >= 0.95, detected
    assert sum(v is Verdict.SAME for v in aa) / trials >= 0.7  # A/A mostly resolves to SAME, not UNKNOWN


def test_ten_percent_faster_is_faster():
    rng = np.random.default_rng(1)
    c = compare([batch(rng) for _ in range(5)], batch(rng, 0.9))
    assert c.verdict is Verdict.FASTER
    assert 0.86 < c.ratio < 0.94 and c.ci_high < 1


def test_noisy_data_is_unknown_not_a_guess():
    rng = np.random.default_rng(3)
    # one baseline run, one current run, 4 % apart, with 3 % between-run noise: nobody can tell
    base = batch(rng, 1.0, run_sd=0.0)
    cur = batch(rng, 1.04, run_sd=0.0)
    c = compare(base, cur, DetectSettings(run_noise=0.03))
    assert c.verdict is Verdict.UNKNOWN
    assert c.ci_low < 1 < c.ci_high


def test_small_real_change_below_threshold_is_same():
    rng = np.random.default_rng(4)
    base = [batch(rng, 1.0, run_sd=0.002) for _ in range(8)]
    cur = [batch(rng, 1.005, run_sd=0.002) for _ in range(3)]
    c = compare(base, cur, DetectSettings(min_effect=0.03, run_noise=0.002))
    assert c.verdict is Verdict.SAME


def test_between_run_noise_is_estimated_from_baseline_runs():
    rng = np.random.default_rng(5)
    quiet = compare([batch(rng, run_sd=0.001) for _ in range(8)], batch(rng, run_sd=0.001), DetectSettings())
    noisy = compare([batch(rng, run_sd=0.05) for _ in range(8)], batch(rng, run_sd=0.05), DetectSettings())
    assert noisy.run_noise > 2 * quiet.run_noise
    assert (noisy.ci_high - noisy.ci_low) > 2 * (quiet.ci_high - quiet.ci_low)


def test_pooled_u_test_rules_on_the_same_data():
    rng = np.random.default_rng(6)
    base = [batch(rng) for _ in range(5)]
    # 1.5 % run offset, no real change: compare.py's rule (U test on pooled samples) fires
    shifted = batch(rng, 1.015, run_sd=0.0)
    assert compare_py_rule(base, shifted).flagged
    assert compare(base, shifted).verdict is not Verdict.SLOWER
    # 5 %: asv's 1.1 factor hides it
    assert not asv_rule(base, batch(rng, 1.05)).flagged
    assert asv_rule(base, batch(rng, 1.25)).slower


def test_block_bootstrap_keeps_autocorrelation_visible():
    rng = np.random.default_rng(8)
    # a run with a slow phase in its second half: i.i.d. resampling underestimates the spread
    x = np.concatenate([np.full(200, 1.0), np.full(200, 1.1)]) + rng.normal(0, 0.001, 400)
    blocks = np.std(block_bootstrap(x, 400, np.random.default_rng(0), 0.5))
    assert blocks > 0.005


def test_settings_are_validated():
    with pytest.raises(ValueError):
        DetectSettings(min_effect=0)
    with pytest.raises(ValueError):
        DetectSettings(statistic="mode")
    with pytest.raises(ValueError):
        compare([], [1.0])


def test_accuracy_drop_beyond_tolerance_is_a_regression():
    assert check_accuracy([97.0, 97.2, 97.1], 96.0, tolerance=0.5).regression
    ok = check_accuracy([97.0, 97.2, 97.1], 96.8, tolerance=0.5)
    assert not ok.regression and ok.drop == pytest.approx(0.3)
    assert not check_accuracy([], 90.0, 0.5).regression


# ---------------------------------------------------------------- the paired method
def paired_batch(rng: np.random.Generator, factor: float = 1.0, level: float = 1.0, rounds: int = 6,
                 state_sd: float = 0.03, n: int = 150) -> PairedBatch:
    """One paired batch as a busy shared host produces it: every round has its own machine
    state (``state_sd`` spread around ``level``) that both artifacts, timed seconds apart,
    share; tonight's artifact is ``factor`` x slower."""
    out = []
    for _ in range(rounds):
        state = level * np.exp(rng.normal(0, state_sd))
        out.append((batch(rng, factor * state, n=n, run_sd=0.002), batch(rng, state, n=n, run_sd=0.002)))
    return PairedBatch(rounds=out)


def test_a_busy_night_shifts_history_but_not_the_pairs():
    """The issue's false regression: history measured on quiet nights, tonight every
    inference +7 % slower because the host is busy. Against history that is SLOWER; the
    baseline's artifact timed in the same batches sees the same +7 %, so paired it is not."""
    rng = np.random.default_rng(11)
    s = DetectSettings(bootstrap=200)
    history = [batch(rng) for _ in range(5)]
    busy = [paired_batch(rng, 1.0, level=1.068, state_sd=0.01) for _ in range(2)]
    against_history = compare(history, [b.current_times for b in busy], s)
    assert against_history.verdict is Verdict.SLOWER and 1.04 < against_history.ratio < 1.10  # the old answer
    c = compare_paired(busy, s, history)
    assert c.verdict is Verdict.SAME, c.reason
    assert c.method == "paired" and not c.busy and 0.98 < c.ratio < 1.02
    assert 1.04 < c.drift < 1.10  # the device's shift is measured and shown, not blamed on the model


def test_a_real_ten_percent_slowdown_on_a_busy_night_is_slower():
    rng = np.random.default_rng(12)
    history = [batch(rng) for _ in range(5)]
    c = compare_paired([paired_batch(rng, 1.10, level=1.068)], DetectSettings(bootstrap=200), history)
    assert c.verdict is Verdict.SLOWER, c.reason
    assert 1.07 < c.ratio < 1.13 and c.ci_low > 1 and c.p_value < 0.01


def test_paired_finds_three_and_five_percent_without_false_alarms():
    """The aim of issue 18 on nights with 3 % round-to-round state changes: <= 1 % false
    alarms, >= 95 % of 5 % and of 3 % slowdowns found (the nightly loop: re-measure while
    UNKNOWN, confirm a first SLOWER)."""
    rng = np.random.default_rng(13)
    s = DetectSettings(bootstrap=200)
    history = [batch(rng) for _ in range(5)]

    def night(factor: float) -> Verdict:
        level = np.exp(rng.normal(0, 0.05))  # tonight's host: anything from quiet to busy
        batches = [paired_batch(rng, factor, level=level, n=100)]
        c = compare_paired(batches, s, history)
        while (c.verdict is Verdict.UNKNOWN or (c.verdict is Verdict.SLOWER and len(batches) == 1)) \
                and len(batches) < 3:
            batches.append(paired_batch(rng, factor, level=level, n=100))
            c = compare_paired(batches, s, history)
        return c.verdict

    trials = 100
    aa = [night(1.00) for _ in range(trials)]
    assert sum(v in (Verdict.SLOWER, Verdict.FASTER) for v in aa) / trials <= 0.01
    assert sum(night(1.05) is Verdict.SLOWER for _ in range(trials)) / trials >= 0.95
    assert sum(night(1.03) is Verdict.SLOWER for _ in range(trials)) / trials >= 0.95


def test_a_device_far_slower_than_its_history_gets_no_verdict():
    rng = np.random.default_rng(14)
    history = [batch(rng) for _ in range(5)]
    s = DetectSettings(bootstrap=200)
    c = compare_paired([paired_batch(rng, 1.10, level=1.5)], s, history)  # everything +50 %: not the machine we know
    assert c.verdict is Verdict.UNKNOWN and "baseline's artifact ran +" in c.busy
    assert c.reason.startswith("device busy:") and "steady_gate" in c.reason
    assert 1.35 < c.drift < 1.6  # (a batch's pooled p10 sits a little below its rounds' level)
    # a busy batch is left out, a quiet one beside it is judged
    calm = compare_paired([paired_batch(rng, 1.10, level=1.5), paired_batch(rng, 1.10)], s, history)
    assert calm.verdict is Verdict.SLOWER and "busy batch(es) left out" in calm.reason and calm.batches == 2


def test_a_change_far_beyond_a_busy_devices_scatter_is_still_reported():
    """Busy is a reason to doubt a few percent, not a model that grew 10x: that is SLOWER,
    and the reason says the device was busy (the end-to-end nightly test's grown model)."""
    rng = np.random.default_rng(16)
    history = [batch(rng) for _ in range(5)]
    c = compare_paired([paired_batch(rng, 10.0, level=1.5)], DetectSettings(bootstrap=200), history)
    assert c.verdict is Verdict.SLOWER and "scatter of a busy device" in c.reason, c.reason
    assert 9 < c.ratio < 11


def test_pairs_that_scatter_mean_a_busy_device():
    rng = np.random.default_rng(15)
    s = DetectSettings(bootstrap=200)
    out = []
    for _ in range(6):  # load that comes and goes between the two halves of a round
        out.append((batch(rng, np.exp(rng.normal(0, 0.10))), batch(rng, np.exp(rng.normal(0, 0.10)))))
    c = compare_paired([PairedBatch(rounds=out)], s)
    assert c.verdict is Verdict.UNKNOWN and "rounds disagree" in c.busy
    assert batch_stats(PairedBatch(rounds=out), s).scatter > s.busy_noise


def test_paired_rule_needs_only_the_interval_to_reach_the_threshold():
    s = DetectSettings()
    # +2.8 %, 99 % interval 1.015-1.041: a real slowdown of about the size that matters
    assert decide(1.028, (1.015, 1.041), (1.020, 1.036), 1e-9, s, paired=True)[0] is Verdict.SLOWER
    # the history rule wants the estimate itself past +3 %
    assert decide(1.028, (1.015, 1.041), (1.020, 1.036), 1e-9, s)[0] is Verdict.UNKNOWN
    # a significant but small change is SAME either way
    assert decide(1.010, (1.004, 1.016), (1.006, 1.014), 1e-9, s, paired=True)[0] is Verdict.SAME
    # and the U test must agree
    assert decide(1.05, (1.02, 1.08), (1.03, 1.07), 0.2, s, paired=True)[0] is Verdict.UNKNOWN
