"""The device latency model: predicts any layer's or op's latency from its signature.

Fitted once per measurement context (target, device, backend + version, threads, timing
mode) from every point measured there (the calibration suite and every model's table),
so a new model needs only the few points it cannot predict. Nothing is pickled: the
model is refitted from the stored points when needed (unpickling runs code, and the
points are the source of truth). Fitting costs about 5 x 50 tree iterations per kind
(~1 ms each on this host), i.e. a few seconds for a suite of ~20 kinds
(:class:`FitSettings`); predicting is batched numpy (:meth:`DeviceModel.predict_many`).

**Per op kind** (:func:`~edgeprune.latency.features.op_kind`), in log space:

``log ms = log baseline(shape) + residual(features)``

* the *baseline* is a non-negative least-squares fit of
  ``ms ~ a + b * MACs + c * activation bytes + d * weight bytes`` weighted to relative
  error: a fixed dispatch cost plus compute plus memory traffic. All coefficients are
  >= 0, so it grows with the shape and extrapolates sensibly to shapes larger or
  smaller than any in the suite (trees alone predict a constant there);
* the *residual* ``log ms - log baseline`` is learned by gradient-boosted trees
  (scikit-learn's ``HistGradientBoostingRegressor``) on the kind's features: with the
  *lattice* set it learns the staircase (channels off the SIMD lattice cost a block, or
  a slower kernel), with the *smooth* set it can only follow sizes;
* ``members`` such (baseline, trees) pairs are fitted on bootstrap resamples of the
  kind's points (seeded: the same points and seed give the same model). The prediction
  is the mean of their log predictions; their spread is the model's own uncertainty.

**Uncertainty** (:class:`Prediction`): a relative 1-sigma error, so ``0.10`` means
"expect about ±10 %" (``|log(measured / predicted)|`` below it about two times in
three), combining in quadrature

* the members' standard deviation of log ms (where the points disagree or are few);
* the kind's *floor*: the robust sigma (1.4826 x median) of its out-of-bag log
  residuals, i.e. how well the kind's points predict each other (label noise
  included), or ``FEW_POINTS_FLOOR`` when it has too few points to say;
* ``OFF_SUITE_PER_OCTAVE`` per octave from the query's shape to the nearest training
  point of its kind (:func:`~edgeprune.latency.features.axes_matrix`: channels, spatial
  size, kernel, stride, groups, rows ... in log2, Euclidean), so a shape far off the
  suite is uncertain even where the members agree (they extrapolate alike).

Chosen on held-out shapes of this host's table (docs/device-model-fit.md): with 0.20
per octave, 90 % of held-out points fell within their 1-sigma (at least 82 % in every
hold-out scheme, from random points to a spatial size or channel range never
measured); 0.10 covered only 55 % of an unmeasured spatial size and of shapes twice as
wide as any fitted. A training point itself gets about its kind's floor.

A caller measures a point when its uncertainty is above its threshold (the profiler:
~0.10), and always when ``known_kind`` is False (``ms`` nan, ``uncertainty`` inf).
``in_range`` says every axis lies inside the kind's training range (a box: a point can
be in range and still far from every training point, which the distance term sees).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeprune.latency import features as F

if TYPE_CHECKING:
    from edgeprune.latency.entry import LatencyEntry

#: uncertainty added per octave between a query and its kind's nearest training point
#: (chosen on held-out shapes of this host's tables: docs/device-model-fit.md)
OFF_SUITE_PER_OCTAVE = 0.20
#: below this many points a kind gets no trees (the baseline alone: too few to split)
MIN_TREE_POINTS = 12
#: the error floor of a kind with too few points to estimate its own (< 5 out-of-bag)
FEW_POINTS_FLOOR = 0.25


@dataclass(frozen=True)
class Prediction:
    """``ms`` in the table's unit; ``uncertainty`` a relative 1-sigma error (see the
    module docstring); ``known_kind`` False when no point of this op kind was fitted;
    ``in_range`` True when the shape lies inside its kind's training range on every axis."""

    ms: float
    uncertainty: float
    known_kind: bool
    in_range: bool


UNKNOWN = Prediction(ms=math.nan, uncertainty=math.inf, known_kind=False, in_range=False)


@dataclass(frozen=True)
class FitSettings:
    """Hyper-parameters of the residual trees, chosen by held-out error on this host's
    real ONNX Runtime table (416 points; docs/device-model-fit.md has the numbers):

    * ``full_weight_rounds`` 3: bootstrap members draw points with weight
      ``min(rounds, 3) / 3``, so a 1-round point counts a third, and ``loss`` absolute
      error: a point measured in the host's slow state (one or two rounds, no fast
      state confirmed) can be 2x off, and a median fit ignores it. Held-out median / p95
      error (random 20 %, five draws): squared error 3.7 / 17 %, weighted 3.4 / 14 %,
      weighted absolute error 3.1 / 12 %;
    * small, shallow trees (``max_leaf_nodes`` 7, ``max_iter`` 50 at ``learning_rate``
      0.2, ``max_bins`` 64): the residual is small next to the baseline; 15 leaves,
      100-400 iterations or 255 bins were no better on held-out shapes (within 0.3 %)
      and cost 2-8x the fit time (every iteration has a fixed cost, ~1-3 ms here);
    * ``min_samples_leaf`` 2 % of the kind's points, at least 2 and at most 20 (the
      library's default, 20, cannot see a step a few widths wide);
    * no early stopping: it would hold out a random 10 % of few points and make the fit
      depend on which; a light L2 penalty (0.1).
    """

    max_iter: int = 50
    learning_rate: float = 0.2
    max_leaf_nodes: int = 7
    max_bins: int = 64
    min_leaf_fraction: float = 0.02
    l2_regularization: float = 0.1
    loss: str = "absolute_error"
    full_weight_rounds: int = 3

    def min_samples_leaf(self, n: int) -> int:
        return max(2, min(20, int(n * self.min_leaf_fraction)))


def _usable(entries: Mapping[str, "LatencyEntry"]) -> dict[str, float]:
    """Points a fit can trust: complete (no rounds still owed) and positive."""
    return {s: float(e.ms) for s, e in entries.items()
            if not getattr(e, "partial", 0) and math.isfinite(e.ms) and e.ms > 0}


def _weight(e: "LatencyEntry", full: int) -> float:
    """A point's draw weight: its rounds up to ``full`` (fewer rounds, less sure)."""
    return min(max(1, len(e.rounds)), full) / full


def _nnls_baseline(A: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Coefficients >= 0 of ``y ~ A @ c`` minimising relative error."""
    from scipy.optimize import nnls

    coef, _ = nnls(A / y[:, None], np.ones(len(y)), maxiter=50 * A.shape[1])
    if not np.any(coef > 0):  # degenerate: a constant at the median
        coef = np.zeros(A.shape[1])
        coef[0] = float(np.median(y))
    return coef


def _log_base(A: np.ndarray, coef: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(A @ coef, 1e-9))


class KindModel:
    """The fitted sub-model of one op kind."""

    def __init__(self, kind: str, raw: np.ndarray, ms: np.ndarray, w: np.ndarray, lanes: int, feature_set: str,
                 members: int, seed: int, settings: FitSettings) -> None:
        from sklearn.ensemble import HistGradientBoostingRegressor
        from sklearn.neighbors import KDTree

        self.kind, self.lanes, self.feature_set, self.n = kind, lanes, feature_set, len(ms)
        A = F.baseline_matrix(kind, raw)
        X = F.feature_matrix(kind, raw, lanes, feature_set)
        axes = F.axes_matrix(kind, raw)
        self.lo, self.hi = axes.min(axis=0), axes.max(axis=0)
        self.tree = KDTree(axes)
        y = np.log(ms)
        rng = np.random.default_rng([seed, sum(kind.encode())])
        self.members: list[tuple[np.ndarray, Any]] = []
        oob_sum, oob_n = np.zeros(self.n), np.zeros(self.n)
        for m in range(members):
            idx = rng.choice(self.n, self.n, p=w / w.sum()) if members > 1 else np.arange(self.n)
            coef = _nnls_baseline(A[idx], ms[idx])
            trees = None
            if self.n >= MIN_TREE_POINTS:
                trees = HistGradientBoostingRegressor(
                    max_iter=settings.max_iter, learning_rate=settings.learning_rate,
                    max_leaf_nodes=settings.max_leaf_nodes, min_samples_leaf=settings.min_samples_leaf(self.n),
                    l2_regularization=settings.l2_regularization, early_stopping=False, random_state=seed + m,
                    loss=settings.loss, max_bins=settings.max_bins)
                trees.fit(X[idx], y[idx] - _log_base(A[idx], coef))
            self.members.append((coef, trees))
            out = np.ones(self.n, dtype=bool)
            out[idx] = False
            if out.any():
                oob_sum[out] += self._member_log(m, A[out], X[out])
                oob_n[out] += 1
        fit_log = self._log_predictions(A, X).mean(axis=0)
        self.in_sample = _errors(np.exp(fit_log), ms)
        has = oob_n > 0
        self.oob = _errors(np.exp(oob_sum[has] / oob_n[has]), ms[has]) if has.any() else {}
        #: the kind's own error level: robust sigma of the out-of-bag log residuals
        res = np.abs(oob_sum[has] / oob_n[has] - y[has])
        self.floor = float(1.4826 * np.median(res)) if len(res) >= 5 else FEW_POINTS_FLOOR

    def _member_log(self, m: int, A: np.ndarray, X: np.ndarray) -> np.ndarray:
        coef, trees = self.members[m]
        base = _log_base(A, coef)
        return base + trees.predict(X) if trees is not None else base

    def _log_predictions(self, A: np.ndarray, X: np.ndarray) -> np.ndarray:
        return np.stack([self._member_log(m, A, X) for m in range(len(self.members))])

    def components(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(mean log ms, members' std of log ms, octaves to the nearest training point,
        in range) for stacked raw rows of this kind."""
        A = F.baseline_matrix(self.kind, raw)
        X = F.feature_matrix(self.kind, raw, self.lanes, self.feature_set)
        axes = F.axes_matrix(self.kind, raw)
        logs = self._log_predictions(A, X)
        spread = logs.std(axis=0) if len(self.members) > 1 else np.zeros(len(raw))
        dist, _ = self.tree.query(axes, k=1)
        tol = 1e-9
        in_range = np.all((axes >= self.lo - tol) & (axes <= self.hi + tol), axis=1)
        return logs.mean(axis=0), spread, dist[:, 0], in_range

    def predict_raw(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ms, uncertainty, in_range) for stacked raw rows of this kind."""
        mean, spread, dist, in_range = self.components(raw)
        unc = np.sqrt(spread ** 2 + self.floor ** 2 + (OFF_SUITE_PER_OCTAVE * dist) ** 2)
        return np.exp(mean), unc, in_range

    def describe(self) -> dict[str, Any]:
        return {"points": self.n, "trees": self.members[0][1] is not None, "in_sample": self.in_sample,
                "out_of_bag": self.oob, "uncertainty_floor": round(self.floor, 4),
                "baseline_ms_per": dict(zip(("call", "mmac", "mb_activations", "mb_weights"),
                                            (round(float(c), 6) for c in np.median(
                                                [m[0] for m in self.members], axis=0))))}


@functools.lru_cache(maxsize=1)
def _threadpools() -> Any:
    """The process's thread pools, found once (``threadpool_limits`` searches the loaded
    libraries on every call, ~4 ms: most of a single prediction). Created after
    scikit-learn is imported, so its OpenMP runtime is among them."""
    import sklearn.ensemble  # noqa: F401  (loads the OpenMP runtime)
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _one_thread() -> Any:
    """OpenMP and BLAS limited to one thread: a kind has at most a few thousand points,
    where scikit-learn's per-iteration thread start-up costs more than it saves, and on
    a 2-core host that is also timing something two threads wait on each other
    (measured: 0.46 s vs 0.71 s for 200 iterations on 300 points, far worse under load).
    ``threadpoolctl`` comes with scikit-learn (its own thread control)."""
    return _threadpools().limit(limits=1)


def _errors(pred: np.ndarray, true: np.ndarray) -> dict[str, Any]:
    """n, median / p95 absolute % error and the fraction within ±10 %."""
    if len(true) == 0:
        return {"n": 0}
    ape = np.abs(pred / true - 1.0) * 100
    return {"n": int(len(true)), "median_abs_pct": round(float(np.median(ape)), 3),
            "p95_abs_pct": round(float(np.percentile(ape, 95)), 3),
            "within_10pct": round(float(np.mean(ape <= 10.0)), 4)}


class DeviceModel:
    """Per-kind :class:`KindModel` s fitted on one measurement context's points."""

    def __init__(self, kinds: dict[str, KindModel], lanes: int, feature_set: str, members: int, seed: int,
                 settings: FitSettings, skipped: int) -> None:
        self._kinds, self.lanes, self.feature_set = kinds, lanes, feature_set
        self.members, self.seed, self.settings, self.skipped = members, seed, settings, skipped
        self._cache: dict[str, Prediction] = {}

    @classmethod
    def fit(cls, entries: Mapping[str, "LatencyEntry"], lanes: int, *, features: str = "lattice",
            members: int = 5, seed: int = 0, settings: FitSettings | None = None) -> "DeviceModel":
        """Fit on ``entries`` (signature -> point). Points with rounds still owed
        (``partial``) or without a positive latency are skipped, as are signatures no
        kind parses (:attr:`skipped` counts both). ``lanes``: the target's fp32 SIMD width."""
        if features not in F.FEATURE_SETS:
            raise ValueError(f"feature set {features!r} (known: {', '.join(F.FEATURE_SETS)})")
        if members < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        settings = settings or FitSettings()
        usable = _usable(entries)
        sigs = sorted(usable)  # fitting order independent of the mapping's
        groups = F.parse_many(sigs)
        kinds = {}
        with _one_thread():
            for kind in sorted(groups):
                idx, raw = groups[kind]
                ms = np.array([usable[sigs[i]] for i in idx])
                w = np.array([_weight(entries[sigs[i]], settings.full_weight_rounds) for i in idx])
                kinds[kind] = KindModel(kind, raw, ms, w, lanes, features, members, seed, settings)
        fitted = sum(k.n for k in kinds.values())
        return cls(kinds, lanes, features, members, seed, settings, skipped=len(entries) - fitted)

    def kinds(self) -> dict[str, int]:
        """Points fitted per op kind."""
        return {k: m.n for k, m in self._kinds.items()}

    def predict(self, sig: str) -> Prediction:
        hit = self._cache.get(sig)
        if hit is None:
            hit = self.predict_many([sig])[0]
            if len(self._cache) > 200_000:
                self._cache.clear()
            self._cache[sig] = hit
        return hit

    def predict_many(self, sigs: Sequence[str]) -> list[Prediction]:
        out: list[Prediction] = [UNKNOWN] * len(sigs)
        parsed = {k: v for k, v in F.parse_many(sigs).items() if k in self._kinds}
        if not parsed:
            return out
        with _one_thread():
            results = {k: self._kinds[k].predict_raw(raw) for k, (_, raw) in parsed.items()}
        for kind, (idx, _) in parsed.items():
            ms, unc, inr = results[kind]
            for j, i in enumerate(idx):
                out[i] = Prediction(ms=float(ms[j]), uncertainty=float(unc[j]), known_kind=True,
                                    in_range=bool(inr[j]))
        return out

    def describe(self) -> dict[str, Any]:
        """JSON-able: what was fitted, how, and how well (in-sample and out-of-bag)."""
        return {"feature_set": self.feature_set, "lanes": self.lanes, "members": self.members, "seed": self.seed,
                "points": sum(self.kinds().values()), "skipped": self.skipped,
                "hyper_parameters": asdict(self.settings) | {
                    "min_tree_points": MIN_TREE_POINTS, "off_suite_per_octave": OFF_SUITE_PER_OCTAVE,
                    "few_points_floor": FEW_POINTS_FLOOR},
                "kinds": {k: m.describe() for k, m in self._kinds.items()}}


def holdout_report(entries: Mapping[str, "LatencyEntry"], lanes: int, is_holdout: Callable[[str], bool], *,
                   members: int = 5, seed: int = 0) -> dict[str, Any]:
    """Fit on the points ``is_holdout`` rejects, with both feature sets, and predict the
    ones it accepts. Per kind and overall, for ``lattice`` and ``smooth``: n, median /
    p95 absolute % error, fraction within ±10 %, and the mean predicted uncertainty of
    held-out vs training points. Held-out signatures of a kind the rest lacks are
    counted under ``unpredicted``. JSON-able."""
    usable = _usable(entries)
    train = {s: entries[s] for s in usable if not is_holdout(s)}
    held = sorted(s for s in usable if is_holdout(s))
    true = np.array([usable[s] for s in held])
    kinds = [F.op_kind(s) or "?" for s in held]
    report: dict[str, Any] = {"lanes": lanes, "members": members, "seed": seed, "train_points": len(train),
                              "holdout_points": len(held)}
    for fs in F.FEATURE_SETS:
        model = DeviceModel.fit(train, lanes, features=fs, members=members, seed=seed)
        preds = model.predict_many(held)
        known = np.array([p.known_kind for p in preds], dtype=bool)
        pred_ms = np.array([p.ms for p in preds])
        unc_h = np.array([p.uncertainty for p in preds])
        tsigs = sorted(train)
        unc_t = np.array([p.uncertainty for p in model.predict_many(tsigs)])
        tkinds = [F.op_kind(s) or "?" for s in tsigs]
        per: dict[str, Any] = {}
        for kind in sorted(set(kinds)):
            sel = np.array([k == kind for k in kinds]) & known
            tsel = np.array([k == kind for k in tkinds], dtype=bool)
            if not sel.any():
                continue
            per[kind] = _errors(pred_ms[sel], true[sel]) | _mean_unc(unc_h[sel], unc_t[tsel] if tsel.any() else None)
        overall = _errors(pred_ms[known], true[known]) | _mean_unc(unc_h[known], unc_t[np.isfinite(unc_t)])
        report[fs] = {"overall": overall, "kinds": per, "unpredicted": int((~known).sum()),
                      "in_range": round(float(np.mean([p.in_range for p in preds])), 4) if preds else None}
    return report


def _mean_unc(held: np.ndarray, train: np.ndarray | None) -> dict[str, Any]:
    return {"mean_uncertainty_holdout": round(float(np.mean(held)), 4) if len(held) else None,
            "mean_uncertainty_train": round(float(np.mean(train)), 4) if train is not None and len(train) else None}
