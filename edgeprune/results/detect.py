"""Is the new measurement slower than its baseline? SLOWER / FASTER / SAME / UNKNOWN.

What goes wrong with the usual rules on a shared machine: the per-inference times of
one benchmark run are many samples of the *same* machine state, and the next run
(another process, another night, other neighbours on the box) sits higher or lower as
a whole. A Mann–Whitney U test on pooled samples sees thousands of samples and calls a
1 % run-to-run wobble "significant" (compare.py's rule raises false alarms); guarding it
with a 10 % factor (asv's rule) silences the false alarms and the 5 % regressions too.

This detector compares a per-run *location statistic* and models the noise at each
level explicitly:

- **statistic** (``DetectSettings.statistic``): by default the 10th percentile of a run's
  per-inference times. Interference from other processes only ever *adds* time, so the
  fast end of the distribution is far steadier than the median on a busy machine
  (measured here, sd between runs: p10 0.7 %, median 3.3 %; see
  ``benchmarks/regression_detection.py``). ``median`` is available for quiet devices.
- **within a run**: the uncertainty ``w`` of the run's statistic, from a moving-block
  bootstrap of its time series (blocks keep the autocorrelation);
- **between sessions** ``σ_b²``: the spread of independent runs (the baseline's earlier
  nights) beyond ``w``, shrunk toward a prior ``run_noise`` worth ``prior_runs`` runs
  (a scaled-inverse-χ² update), because five runs estimate a variance poorly;
- **re-measurements** ``σ_rep²``: batches taken back to back in one session share its
  machine state; their spread estimates only the part of ``σ_b²`` that measuring again
  averages away.

On the log scale the effect is ``d = centre(current) - centre(baseline)`` (the median of
the baseline runs' log statistics, the mean of the current batches'), and

    var(d) = c_k (σ_b² + mean w_base) / k_base + (σ_b² - σ_rep²) + (σ_rep² + mean w_cur) / k_cur

with ``c_k = π/2`` for a median of ≥ 3 runs. The interval of the ratio is
``exp(d ± t_q sqrt(var d))`` with Student's t on the degrees of freedom of ``σ_b²``; a
Mann–Whitney U test on the pooled samples must agree.

Verdict, with ``t`` the minimum effect (default 3 %):

- **SLOWER**: ratio ≥ 1 + t, the ``confidence`` (99 %) interval above 1, and U's p < alpha;
- **FASTER**: the mirror image;
- **SAME**: the ``same_confidence`` (90 %) interval inside (1/(1+t), 1+t): whatever
  changed is smaller than anyone cares about;
- **UNKNOWN**: the data cannot tell (e.g. ratio 1.04 with interval 0.99–1.09). The
  nightly runner measures the cell again and decides on all batches together.

:func:`compare` is the *history* method: tonight against samples of other nights, which
a busy night shifts as a whole (an unchanged model once came out ``SLOWER +6.8 %``). The
nightly runner's default is the *paired* method (:mod:`edgeprune.results.paired`): the
baseline's artifact timed in the same batches as tonight's. Both share the per-run
statistic (:func:`run_stats`) and the verdict rule (:func:`decide`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

import numpy as np


#: per-run location statistics: name -> quantile of the per-inference times
STATISTICS = {"median": 0.5, "p25": 0.25, "p10": 0.10, "p5": 0.05, "min": 0.0}


class Verdict(str, Enum):
    SLOWER = "SLOWER"
    FASTER = "FASTER"
    SAME = "SAME"
    UNKNOWN = "UNKNOWN"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class DetectSettings:
    """How sure the detector must be, and of how large a change."""

    min_effect: float = 0.03  # relative change below which nobody cares (0.03 = 3 %)
    confidence: float = 0.99  # of the ratio interval that must exclude 1 for SLOWER/FASTER
    same_confidence: float = 0.90  # of the interval that must sit inside the band for SAME
    alpha: float = 0.01  # Mann–Whitney U significance, a second gate for SLOWER/FASTER
    run_noise: float = 0.01  # prior between-session sd of the log statistic (1 %)
    prior_runs: float = 6.0  # weight of that prior, in pseudo-runs (degrees of freedom)
    bootstrap: int = 400  # block-bootstrap replicates per run
    seed: int = 0
    statistic: str = "p10"  # per-run location: median, p25, p10, p5 or min (see STATISTICS)
    # the paired method (edgeprune.results.paired): the baseline's artifact timed beside tonight's
    pair_noise: float = 0.005  # prior sd of the log ratio of two artifacts timed in one batch (0.5 %)
    busy_noise: float = 0.03  # a batch whose pairs scatter more than this (sd beyond sampling noise) is busy
    busy_shift: float = 0.25  # ... or whose baseline artifact ran this much slower than its own history

    def __post_init__(self) -> None:
        if not 0 < self.min_effect < 1:
            raise ValueError("min_effect must be in (0, 1), e.g. 0.03 for 3 %")
        for name in ("confidence", "same_confidence", "alpha"):
            v = getattr(self, name)
            if not 0 < v < 1:
                raise ValueError(f"{name} must be in (0, 1)")
        if self.run_noise < 0 or self.prior_runs < 1 or self.bootstrap < 50:
            raise ValueError("run_noise >= 0, prior_runs >= 1 and bootstrap >= 50 are required")
        if self.pair_noise < 0 or self.busy_noise <= 0 or self.busy_shift <= 0:
            raise ValueError("pair_noise >= 0, busy_noise > 0 and busy_shift > 0 are required")
        if self.statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {', '.join(STATISTICS)}, not '{self.statistic}'")

    @property
    def quantile(self) -> float:
        return STATISTICS[self.statistic]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Comparison:
    """The answer of :func:`compare`, with everything needed to explain it."""

    verdict: Verdict
    ratio: float  # current / baseline (of the per-run statistic); > 1 is slower
    ci_low: float
    ci_high: float
    p_value: float  # Mann–Whitney U, two-sided, pooled samples
    baseline_ms: float
    current_ms: float
    baseline_runs: int
    current_runs: int
    baseline_samples: int
    current_samples: int
    run_noise: float  # estimated between-session sd of the log statistic (posterior)
    reason: str
    statistic: str = "p10"  # what baseline_ms / current_ms / ratio are of
    #: "history": tonight against earlier nights; "paired": against the baseline's artifact
    #: timed in the same batches (edgeprune.results.paired)
    method: str = "history"
    busy: str = ""  # why the device was too busy for a verdict ("" = it was not)
    drift: float | None = None  # paired: the baseline artifact tonight / its own history
    batches: int = 0  # batches the verdict is judged on (paired: paired batches)

    @property
    def change(self) -> float:
        return self.ratio - 1.0

    @property
    def regression(self) -> bool:
        return self.verdict is Verdict.SLOWER

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict.value
        return d

    def describe(self) -> str:
        return (f"{self.change:+.1%} (ratio {self.ratio:.3f}, CI {self.ci_low:.3f}–{self.ci_high:.3f}, "
                f"U p={self.p_value:.2g})")


Series = Sequence[float] | np.ndarray


def _as_runs(x: Sequence[Series] | Series) -> list[np.ndarray]:
    """Accept one run (a flat sequence of times) or several runs (a sequence of them)."""
    if isinstance(x, np.ndarray) and x.ndim == 1:
        runs = [x]
    elif len(x) > 0 and np.ndim(x[0]) == 0:  # type: ignore[index]
        runs = [np.asarray(x, dtype=np.float64)]
    else:
        runs = [np.asarray(r, dtype=np.float64).ravel() for r in x]  # type: ignore[union-attr]
    runs = [r[np.isfinite(r) & (r > 0)] for r in runs]
    runs = [r for r in runs if r.size]
    if not runs:
        raise ValueError("no positive, finite latency samples to compare")
    return runs


def block_bootstrap(x: np.ndarray, reps: int, rng: np.random.Generator, q: float = 0.5) -> np.ndarray:
    """The ``q`` quantile of ``reps`` moving-block bootstrap resamples of the time series ``x``.

    Block length ~ n^(1/3) (at least 1): long enough to keep short-range correlation
    (thermal or scheduler phases), short enough to leave many blocks.
    """
    n = x.size
    if n == 1:
        return np.full(reps, x[0])
    b = max(1, int(round(n ** (1 / 3))))
    nblocks = math.ceil(n / b)
    starts = rng.integers(0, n - b + 1, size=(reps, nblocks))
    idx = (starts[:, :, None] + np.arange(b)[None, None, :]).reshape(reps, -1)[:, :n]
    return np.quantile(x[idx], q, axis=1)


_RUN_CACHE: dict[bytes, tuple[float, float]] = {}


def run_stats(r: np.ndarray, s: DetectSettings) -> tuple[float, float]:
    """log(location) of one run and the within-run variance of it (block bootstrap).

    Deterministic per run (the bootstrap is seeded from the run's contents), and cached:
    the nightly runner and the benchmarks judge the same baseline runs many times.
    """
    key = hashlib.blake2b(r.tobytes() + f"{s.quantile}/{s.bootstrap}/{s.seed}".encode(), digest_size=16).digest()
    hit = _RUN_CACHE.get(key)
    if hit is not None:
        return hit
    q = s.quantile
    rng = np.random.default_rng([s.seed, int.from_bytes(key[:8], "little")])
    out = (math.log(float(np.quantile(r, q))), float(np.var(np.log(block_bootstrap(r, s.bootstrap, rng, q)), ddof=1)))
    if len(_RUN_CACHE) > 20000:
        _RUN_CACHE.clear()
    _RUN_CACHE[key] = out
    return out


def _group(runs: list[np.ndarray], s: DetectSettings) -> tuple[np.ndarray, np.ndarray]:
    """Per run: log of its location statistic, and the within-run variance of that."""
    st = [run_stats(r, s) for r in runs]
    return np.array([a for a, _ in st]), np.array([b for _, b in st])


def _centre(logm: np.ndarray) -> tuple[float, float]:
    """Centre of a group's log run medians, and the variance factor of that estimator."""
    if logm.size >= 3:
        return float(np.median(logm)), math.pi / 2
    return float(np.mean(logm)), 1.0


def _excess(logm: np.ndarray, w: np.ndarray) -> float:
    """Variance of a group's log run statistics beyond what within-run noise explains."""
    return max(0.0, float(np.var(logm, ddof=1)) - float(np.mean(w)))


def between_run_variance(groups: list[tuple[np.ndarray, np.ndarray]], s: DetectSettings) -> tuple[float, float]:
    """Posterior variance between independent runs (sessions) and its degrees of freedom.

    Each group of independent runs with k >= 2 contributes its excess variance with k-1
    degrees of freedom; the prior ``run_noise``² counts as ``prior_runs`` degrees of
    freedom (a scaled-inverse-chi² update).
    """
    ss, df = s.prior_runs * s.run_noise**2, s.prior_runs
    for logm, w in groups:
        k = logm.size
        if k >= 2:
            ss += (k - 1) * _excess(logm, w)
            df += k - 1
    return ss / df, df


def compare(
    baseline: Sequence[Series] | Series,
    current: Sequence[Series] | Series,
    settings: DetectSettings = DetectSettings(),
    baseline_same_session: bool = False,
    current_same_session: bool = True,
) -> Comparison:
    """Compare latency samples of ``current`` against ``baseline``.

    Each argument is one run (a sequence of per-inference times) or a list of runs.
    By default the baseline runs are independent sessions (earlier nights) and the
    current runs are re-measurements taken back to back in one session. Runs of one
    session share that session's machine state: their spread estimates only the
    re-measurement noise ``σ_rep²``, and the session offset (``σ_b² - σ_rep²``) does
    not average out by measuring again, so a group of k runs of one session has variance
    ``(σ_b² - σ_rep²) + (σ_rep² + mean w) / k``.
    """
    from scipy import stats

    s = settings
    base_runs, cur_runs = _as_runs(baseline), _as_runs(current)
    gb, gc = _group(base_runs, s), _group(cur_runs, s)
    groups = [(gb, baseline_same_session), (gc, current_same_session)]
    sigma2, df = between_run_variance([g for g, same in groups if not same], s)
    rep = [g for g, same in groups if same and g[0].size >= 2]
    rep_df = sum(g[0].size - 1 for g in rep)
    if rep_df:
        # runs of different sessions differ at least as much as re-measurements of one
        sigma_rep2 = sum((g[0].size - 1) * _excess(*g) for g in rep) / rep_df
        sigma2 = max(sigma2, sigma_rep2)
    else:
        sigma_rep2 = sigma2

    def group_var(g: tuple[np.ndarray, np.ndarray], same: bool) -> tuple[float, float]:
        logm, w = g
        k = logm.size
        if same:
            return float(np.mean(logm)), (sigma2 - sigma_rep2) + (sigma_rep2 + float(np.mean(w))) / k
        centre, factor = _centre(logm)
        return centre, factor * (sigma2 + float(np.mean(w))) / k

    cb, vb = group_var(gb, baseline_same_session)
    cc, vc = group_var(gc, current_same_session)
    kb, kc = gb[0].size, gc[0].size
    se = math.sqrt(max(vb + vc, 1e-18))
    d = cc - cb
    q_hi = float(stats.t.ppf(1 - (1 - s.confidence) / 2, df))
    q_same = float(stats.t.ppf(1 - (1 - s.same_confidence) / 2, df))
    lo, hi = math.exp(d - q_hi * se), math.exp(d + q_hi * se)
    lo_s, hi_s = math.exp(d - q_same * se), math.exp(d + q_same * se)
    ratio = math.exp(d)

    pooled_b, pooled_c = np.concatenate(base_runs), np.concatenate(cur_runs)
    if np.ptp(np.concatenate([pooled_b, pooled_c])) == 0:
        p = 1.0
    else:
        p = float(stats.mannwhitneyu(pooled_c, pooled_b, alternative="two-sided").pvalue)

    verdict, why = decide(ratio, (lo, hi), (lo_s, hi_s), p, s)
    return Comparison(
        verdict=verdict, ratio=ratio, ci_low=lo, ci_high=hi, p_value=p,
        baseline_ms=math.exp(cb), current_ms=math.exp(cc),
        baseline_runs=kb, current_runs=kc,
        baseline_samples=int(pooled_b.size), current_samples=int(pooled_c.size),
        run_noise=math.sqrt(sigma2), reason=why, statistic=s.statistic, batches=kc,
    )


def decide(ratio: float, ci: tuple[float, float], ci_same: tuple[float, float], p: float, s: DetectSettings,
           paired: bool = False) -> tuple[Verdict, str]:
    """The verdict on a ratio, its ``confidence`` interval ``ci``, its ``same_confidence``
    interval ``ci_same`` and the U test's ``p``, and the reason in words.

    Significance (the interval excludes 1, U agrees) is required either way; how large the
    change must be differs. Against history the *estimate* must reach ``min_effect``:
    between-night noise is modelled with a prior, and the point rule keeps a shifted night
    from paging anyone. A paired estimate's interval is measured, not assumed, so the
    interval only has to *reach* ``min_effect``: a true +3 % is then caught instead of half
    the time (its estimate falls below +3 % in half the nights).
    """
    lo, hi = ci
    lo_s, hi_s = ci_same
    up, down = 1 + s.min_effect, 1 / (1 + s.min_effect)
    big_up, big_down = (hi >= up, lo <= down) if paired else (ratio >= up, ratio <= down)
    if big_up and lo > 1 and p < s.alpha:
        size = f"reaches +{s.min_effect:.0%}" if paired else f"{ratio - 1:+.1%} ≥ +{s.min_effect:.0%}"
        return Verdict.SLOWER, f"{ratio - 1:+.1%}: the {s.confidence:.0%} interval excludes 1 and {size}" if paired \
            else f"{size} and the {s.confidence:.0%} interval excludes 1"
    if big_down and hi < 1 and p < s.alpha:
        size = f"reaches -{1 - down:.1%}" if paired else f"{ratio - 1:+.1%} ≤ -{1 - down:.1%}"
        return Verdict.FASTER, f"{ratio - 1:+.1%}: the {s.confidence:.0%} interval excludes 1 and {size}" if paired \
            else f"{size} and the {s.confidence:.0%} interval excludes 1"
    if down < lo_s and hi_s < up:
        return Verdict.SAME, (f"the {s.same_confidence:.0%} interval {lo_s:.3f}–{hi_s:.3f} is inside "
                              f"±{s.min_effect:.0%}")
    if (big_up or big_down) and lo <= 1 <= hi:
        return Verdict.UNKNOWN, f"{ratio - 1:+.1%} but the {s.confidence:.0%} interval {lo:.3f}–{hi:.3f} includes 1"
    if big_up or big_down:
        return Verdict.UNKNOWN, f"{ratio - 1:+.1%} but the U test is not significant (p={p:.2g})"
    return Verdict.UNKNOWN, (f"{ratio - 1:+.1%}, but a change beyond ±{s.min_effect:.0%} is not ruled out "
                             f"({lo_s:.3f}–{hi_s:.3f})")

# --------------------------------------------------------------------------- other rules
@dataclass(frozen=True)
class RuleResult:
    flagged: bool  # the rule says "changed"
    slower: bool  # ... and the change is a slowdown
    ratio: float
    p_value: float


def _pool(x: Sequence[Series] | Series) -> np.ndarray:
    return np.concatenate(_as_runs(x))


def _median_ci99(y: np.ndarray) -> tuple[float, float]:
    """asv's nonparametric 99 % CI of the median (order statistics of Bin(n, 1/2))."""
    from scipy import stats

    y = np.sort(y)
    n = y.size
    lo_k = int(stats.binom.ppf(0.005, n, 0.5))
    hi_k = int(stats.binom.ppf(0.995, n, 0.5))
    lo = y[lo_k - 1] if lo_k >= 1 else -math.inf
    hi = y[hi_k] if hi_k < n else math.inf
    return float(lo), float(hi)


def asv_rule(baseline: Sequence[Series] | Series, current: Sequence[Series] | Series,
             factor: float = 1.1, p_threshold: float = 0.002) -> RuleResult:
    """airspeed velocity's ``asv compare``: changed when the medians differ by more
    than ``factor`` *and* ``is_different`` (Mann–Whitney U p < 0.002 on the samples,
    or non-overlapping 99 % median CIs when the samples are too few for that p)."""
    from scipy import stats

    a, b = _pool(baseline), _pool(current)
    ratio = float(np.median(b) / np.median(a))
    p_min = 1 / math.comb(a.size + b.size, min(a.size, b.size))
    if p_min < p_threshold:
        p = float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)
        different = p < p_threshold
    else:
        p = math.nan
        (a0, a1), (b0, b1) = _median_ci99(a), _median_ci99(b)
        different = not (a1 >= b0 and a0 <= b1)
    flagged = different and (ratio > factor or ratio < 1 / factor)
    return RuleResult(flagged=flagged, slower=flagged and ratio > 1, ratio=ratio, p_value=p)


def compare_py_rule(baseline: Sequence[Series] | Series, current: Sequence[Series] | Series,
                    alpha: float = 0.05) -> RuleResult:
    """Google Benchmark's ``tools/compare.py``: a two-sided Mann–Whitney U test on the
    repetitions; changed when p < alpha (0.05)."""
    from scipy import stats

    a, b = _pool(baseline), _pool(current)
    ratio = float(np.median(b) / np.median(a))
    p = float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)
    flagged = p < alpha
    return RuleResult(flagged=flagged, slower=flagged and ratio > 1, ratio=ratio, p_value=p)


# --------------------------------------------------------------------------- accuracy
@dataclass(frozen=True)
class AccuracyCheck:
    regression: bool
    baseline: float | None
    current: float | None
    drop: float | None  # points lost (positive = worse)
    reason: str


def check_accuracy(baseline: Sequence[float | None], current: float | None, tolerance: float) -> AccuracyCheck:
    """Accuracy (percent) must not fall more than ``tolerance`` points below the
    baseline (median of the baseline runs' accuracies)."""
    vals = [float(v) for v in baseline if v is not None]
    if current is None or not vals:
        return AccuracyCheck(False, float(np.median(vals)) if vals else None, current, None,
                             "no accuracy to compare" if current is None else "no baseline accuracy")
    ref = float(np.median(vals))
    drop = ref - float(current)
    if drop > tolerance:
        return AccuracyCheck(True, ref, current, drop,
                             f"accuracy {current:.2f}% is {drop:.2f} points below the baseline {ref:.2f}% "
                             f"(tolerance {tolerance:g})")
    return AccuracyCheck(False, ref, current, drop, f"accuracy {current:.2f}% vs baseline {ref:.2f}% (Δ {-drop:+.2f})")
