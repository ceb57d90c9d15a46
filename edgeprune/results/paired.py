"""Tonight's artifact against the baseline's artifact, timed in the same batches.

Why: judged against *history*, a night is compared with other nights. A busy host (a
build on the other cores, a noisy neighbour on the VM) shifts every inference of the
night, and an unchanged model was once reported ``SLOWER +6.8 % [+0.5 %, +13.6 %]``,
confirmed by a second batch, because both batches ran in the same busy hour. The shift
is the machine's, not the model's, so it hits any artifact timed at that moment.

The nightly runner therefore keeps each cell's artifact and times the baseline's
artifact **interleaved** with tonight's in one bundle (rounds in alternating order:
``new base``, ``base new``, ...). Round ``k`` gives a pair of runs taken seconds apart;
the effect is judged on the paired log differences ``d_k = log q(new_k) - log q(base_k)``
(``q`` the per-run statistic, p10 by default), so what both artifacts share cancels.

Noise model, per batch ``b`` of ``K_b`` pairs with within-run variances ``w`` (block
bootstrap, as in :mod:`edgeprune.results.detect`):

- ``σ_p²``: the spread of a batch's pairs beyond ``w`` (the machine changing between
  the two halves of a round), shrunk toward the prior ``pair_noise``;
- ``σ_B²``: the spread of the batch means beyond what ``σ_p²`` explains (a runner process
  that happens to favour one artifact), with the same prior: one batch cannot show it,
  which is why a first SLOWER is confirmed by a batch in a fresh process.

``var(mean d) = σ_B² / B + (σ_p² + mean w) / K``, Student's t on the pooled degrees of
freedom; the verdict rule is :func:`edgeprune.results.detect.decide` in its paired form.

**Outliers**: a burst of load that hits one half of a round moves that pair alone; a pair
further than 4 robust sds (MAD, at least the sampling noise and ``pair_noise``) from the
batch's median pair is left out. Such bursts hit either artifact alike, so leaving them out
in both directions biases nothing.

**Busy**: a batch is refused (it gives no verdict, "busy" with a hint) when its pairs
scatter by more than ``busy_noise`` beyond sampling noise (the machine's state changes
faster than the rounds alternate), when more than a third of its rounds were outliers,
or when the baseline's artifact, re-timed, ran more than ``busy_shift`` slower than its
own history (the machine is not the one the history knows). The verdict is made on the batches that were not busy; when none is left it is
``UNKNOWN`` and says why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edgeprune.results.detect import Comparison, DetectSettings, Series, Verdict, compare, decide, run_stats

#: a pair further than this many robust sds (MAD) from the batch's median pair is an outlier
OUTLIER_SCALES = 4.0

#: busy batches still give SLOWER / FASTER when the change is this many times their scatter
BUSY_OVERRIDE = 5.0

#: what a busy verdict tells the user to do
BUSY_HINT = ("re-run when the device is idle, give the benchmark cores of its own (cpu_affinity), "
             "or set bench.steady_gate: true")


@dataclass
class PairedBatch:
    """One runner process that timed tonight's artifact and the baseline's in rounds:
    per round, (tonight's per-inference times, the baseline artifact's)."""

    rounds: list[tuple[list[float], list[float]]] = field(default_factory=list)

    @property
    def current_times(self) -> list[float]:
        return [t for c, _ in self.rounds for t in c]

    @property
    def baseline_times(self) -> list[float]:
        return [t for _, b in self.rounds for t in b]


@dataclass(frozen=True)
class BatchStats:
    """One batch, reduced: its pairs' log differences and within-run variances, and why
    it is busy ("" if it is not)."""

    d: np.ndarray  # the pairs judged (outliers left out)
    w: np.ndarray
    scatter: float  # sd of the pairs beyond sampling noise
    drift: float | None  # baseline artifact in this batch / its history (None: no history)
    busy: str
    dropped: int = 0  # outlier pairs left out


def _clean(x: Series) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    return a[np.isfinite(a) & (a > 0)]


def batch_stats(batch: PairedBatch, s: DetectSettings, history: Sequence[Series] = ()) -> BatchStats:
    """The pairs of ``batch`` and whether the device was too busy in it; ``history``: the
    baseline artifact's earlier runs (independent sessions), for the drift check."""
    d, w = [], []
    for cur, base in batch.rounds:
        c, b = _clean(cur), _clean(base)
        if c.size and b.size:
            (lc, wc), (lb, wb) = run_stats(c, s), run_stats(b, s)
            d.append(lc - lb)
            w.append(wc + wb)
    if not d:
        raise ValueError("a paired batch without a round where both artifacts were timed")
    d_a, w_a = np.array(d), np.array(w)
    dropped = 0
    if d_a.size >= 4:  # a burst of load that hit one half of a round: that pair says nothing about the model
        med = float(np.median(d_a))
        scale = max(1.4826 * float(np.median(np.abs(d_a - med))), math.sqrt(float(np.median(w_a))), s.pair_noise)
        ok = np.abs(d_a - med) <= OUTLIER_SCALES * scale
        dropped = int(d_a.size - ok.sum())
        d_a, w_a = d_a[ok], w_a[ok]
    scatter = math.sqrt(max(0.0, float(np.var(d_a, ddof=1)) - float(np.mean(w_a)))) if d_a.size >= 2 else 0.0
    drift = None
    hist = [h for h in (_clean(x) for x in history) if h.size]
    if hist:
        drift = compare(hist, _clean(batch.baseline_times), s).ratio
    reasons = []
    if d_a.size >= 3 and scatter > s.busy_noise:
        reasons.append(f"its rounds disagree by {scatter:.1%} (sd) beyond sampling noise, more than "
                       f"{s.busy_noise:.0%}")
    if dropped * 3 > dropped + d_a.size:
        reasons.append(f"{dropped} of its {dropped + d_a.size} rounds were hit by bursts of load")
    if drift is not None and drift >= 1 + s.busy_shift:
        reasons.append(f"the baseline's artifact ran {drift - 1:+.0%} against its own history "
                       f"(more than +{s.busy_shift:.0%})")
    return BatchStats(d=d_a, w=w_a, scatter=scatter, drift=drift, busy="; ".join(reasons), dropped=dropped)


def paired_variance(stats: Sequence[BatchStats], s: DetectSettings) -> tuple[float, float, float]:
    """(variance of the mean paired difference, its degrees of freedom, σ_p)."""
    prior_ss, prior_df = s.prior_runs * s.pair_noise**2, s.prior_runs
    ss_w = sum(float(np.sum((b.d - b.d.mean()) ** 2)) for b in stats)
    df_w = sum(b.d.size - 1 for b in stats)
    w_bar = float(np.mean(np.concatenate([b.w for b in stats])))
    excess_w = max(0.0, ss_w / df_w - w_bar) if df_w else 0.0
    sigma_p2 = (prior_ss + df_w * excess_w) / (prior_df + df_w)
    nb = len(stats)
    sigma_b2, df_b = s.pair_noise**2, 0
    if nb >= 2:
        means = np.array([b.d.mean() for b in stats])
        expected = float(np.mean([(sigma_p2 + b.w.mean()) / b.d.size for b in stats]))
        excess_b = max(0.0, float(np.var(means, ddof=1)) - expected)
        df_b = nb - 1
        sigma_b2 = (prior_ss + df_b * excess_b) / (prior_df + df_b)
    k = sum(b.d.size for b in stats)
    var = sigma_b2 / nb + (sigma_p2 + w_bar) / k
    return var, prior_df + df_w + df_b, math.sqrt(sigma_p2)


def compare_paired(batches: Sequence[PairedBatch], settings: DetectSettings = DetectSettings(),
                   baseline_history: Sequence[Series] = ()) -> Comparison:
    """Judge tonight's artifact against the baseline's on paired batches (see the module
    docstring); ``baseline_history``: the baseline artifact's runs on earlier nights, for
    the busy check (empty: that check is skipped). The ratio is tonight / baseline."""
    from scipy import stats as sps

    s = settings
    if not batches:
        raise ValueError("no paired batches to compare")
    all_stats = [batch_stats(b, s, baseline_history) for b in batches]
    busy = [st.busy for st in all_stats if st.busy]
    drifts = [st.drift for st in all_stats if st.drift is not None]
    drift = float(np.median(drifts)) if drifts else None
    used = [(b, st) for b, st in zip(batches, all_stats) if not st.busy]
    # every batch busy: the numbers are still worked out and shown, but give no verdict
    judged = used or list(zip(batches, all_stats))
    stats_used = [st for _, st in judged]
    var, df, sigma_p = paired_variance(stats_used, s)
    d = float(np.mean(np.concatenate([st.d for st in stats_used])))
    se = math.sqrt(max(var, 1e-18))
    q_hi = float(sps.t.ppf(1 - (1 - s.confidence) / 2, df))
    q_same = float(sps.t.ppf(1 - (1 - s.same_confidence) / 2, df))
    ci = (math.exp(d - q_hi * se), math.exp(d + q_hi * se))
    ci_same = (math.exp(d - q_same * se), math.exp(d + q_same * se))
    pooled_c = np.concatenate([_clean(b.current_times) for b, _ in judged])
    pooled_b = np.concatenate([_clean(b.baseline_times) for b, _ in judged])
    p = 1.0 if np.ptp(np.concatenate([pooled_c, pooled_b])) == 0 else float(
        sps.mannwhitneyu(pooled_c, pooled_b, alternative="two-sided").pvalue)
    ratio = math.exp(d)
    noise = max([st.scatter for st in stats_used] + [s.busy_noise])
    if not used:
        verdict, why = decide(ratio, ci, ci_same, p, s, paired=True)
        if verdict in (Verdict.SLOWER, Verdict.FASTER) and abs(d) > BUSY_OVERRIDE * noise:
            # a change many times what the busy device scatters (a model that grew 10x)
            # is not the machine's doing: say it, and say the device was busy
            why += f" — {abs(d) / noise:.0f}x the scatter of a busy device ({busy[-1]})"
        else:
            verdict, why = Verdict.UNKNOWN, f"device busy: {busy[-1]}; {BUSY_HINT}"
    else:
        verdict, why = decide(ratio, ci, ci_same, p, s, paired=True)
        if busy:
            why += f" ({len(busy)} busy batch(es) left out: {busy[-1]})"
    return _result(verdict, why, ratio, ci, p, [b for b, _ in judged], s, stats_used, drift,
                   "" if used else busy[-1], pair_noise=sigma_p, batches=len(batches))


def _result(verdict: Verdict, why: str, ratio: float, ci: tuple[float, float], p: float,
            judged: Sequence[PairedBatch], s: DetectSettings, stats: Sequence[BatchStats], drift: float | None,
            busy: str, pair_noise: float, batches: int) -> Comparison:
    cur = [_clean(b.current_times) for b in judged]
    base = [_clean(b.baseline_times) for b in judged]
    q = s.quantile
    pairs = sum(st.d.size for st in stats)
    return Comparison(
        verdict=verdict, ratio=ratio, ci_low=ci[0], ci_high=ci[1], p_value=p,
        baseline_ms=float(np.median([np.quantile(b, q) for b in base if b.size])),
        current_ms=float(np.median([np.quantile(c, q) for c in cur if c.size])),
        baseline_runs=pairs, current_runs=pairs,
        baseline_samples=int(sum(b.size for b in base)), current_samples=int(sum(c.size for c in cur)),
        run_noise=pair_noise, reason=why, statistic=s.statistic, method="paired", busy=busy, drift=drift,
        batches=batches,
    )
