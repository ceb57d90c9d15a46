"""What pruning is asked to do and what it produced: the typed records every pruning
path shares (``edgeprune prune``, the pruning stage of ``compile``, benchmarks).

The orchestration that fills them (profile -> search -> cut -> fine-tune -> gate) is
:func:`edgeprune.flows.prune.prune_model`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeprune.errors import PruneError
from edgeprune.models.base import LoadedModel
from edgeprune.prune.recipe import DEFAULT_DISTILL, DEFAULT_FINETUNE_EPOCHS, default_lr

if TYPE_CHECKING:
    from torch import nn

    from edgeprune.prune.graph import TracedSpace
    from edgeprune.prune.space import PruneSpace


#: the accuracy limit (points of validation accuracy) of a run whose user set none: large
#: enough for the noise of a few hundred validation samples and a short fine-tune, small
#: enough that a collapse (97.5 % -> 74.7 % on a MobileNetV3 at a 0.5 budget, issue 17)
#: never exits 0. Stated in ``--help`` of prune / compile and in docs/pruning.md.
DEFAULT_MAX_ACCURACY_DROP = 2.0
#: the defaults of the search (one place: the CLI's defaults and ``--help`` read them here)
DEFAULT_STRATEGY = "knapsack"
#: ``--depth``: no depth pruning, blocks only, blocks where they are cheaper than channels
DEPTH_MODES = ("off", "only", "auto")


@dataclass(frozen=True)
class PruneOptions:
    """What to prune for. Exactly one of ``budget`` (fraction of the original latency,
    0 < b <= 1) and ``latency_ms`` must be set.

    ``strategy`` / ``importance``: the defaults are defined here and on the strategy
    class (``importance=None`` uses the strategy's ``default_importance``: taylor for
    knapsack, l1 otherwise), nowhere else; the CLI reads them from here.

    The accuracy gate: ``max_accuracy_drop`` (points) is the user's limit; left ``None``,
    :data:`DEFAULT_MAX_ACCURACY_DROP` applies whenever the model has validation data, so
    a run that meets its budget by ruining the model fails (exit code 8, results kept)
    instead of exiting 0. ``accuracy_gate=False`` (``--max-accuracy-drop none``) turns
    every limit off: the user has said they judge the accuracy themselves.
    ``gradual_steps`` > 1 prunes in that many steps of geometrically shrinking budget,
    fine-tuning ``finetune_epochs / gradual_steps`` after each. ``search_eval_samples``
    caps the validation samples strategies score candidates on (the final accuracy is
    always on the whole validation split). ``strategy_options`` go to the strategy (e.g.
    ``{"generations": 4}`` for genetic, ``{"ratio": 0.5}`` for uniform).
    """

    budget: float | None = None
    latency_ms: float | None = None
    strategy: str = DEFAULT_STRATEGY
    importance: str | None = None
    max_accuracy_drop: float | None = None  # None: DEFAULT_MAX_ACCURACY_DROP when there is validation data
    accuracy_gate: bool = True  # False: no accuracy limit at all (--max-accuracy-drop none)
    keep_layers: tuple[str, ...] = ()
    finetune_epochs: float = DEFAULT_FINETUNE_EPOCHS
    distill: bool = DEFAULT_DISTILL  # from the unpruned model (it is at hand: nothing to train)
    seed: int = 0
    gradual_steps: int = 1
    lr: float | None = None  # None: default_lr(the model's layer kinds)
    batch_size: int = 64
    shift: int = 0
    search_eval_samples: int | None = 512
    strategy_options: Mapping[str, Any] = field(default_factory=dict)
    backend: str | None = None  # whose latency table drives the search (default: the target's first)
    #: where layer latencies come from: "model" (the device latency model + the few points
    #: this model needs) or "full" (a measured table of every layer)
    tables: str = "model"
    profile_budget_s: float = 180.0  # device seconds the "model" profile may spend on this model
    #: the pruned model is timed end to end after the search; a miss beyond
    #: BUDGET_TOLERANCE is fed back and searched again at most this many times
    budget_retries: int = 3
    allow_budget_miss: bool = False  # a measured miss is a note, not a failed run
    #: depth pruning (edgeprune.flows.depth): "off", "only" (drop residual blocks until the
    #: budget is met) or "auto" (drop blocks cheaper per ms than channels, then width)
    depth: str = "off"

    def validate(self) -> None:
        if (self.budget is None) == (self.latency_ms is None):
            raise PruneError("give exactly one latency budget: a fraction (--latency-budget) or milliseconds (--latency-ms)")
        if self.budget is not None and not 0 < self.budget <= 1:
            raise PruneError(f"--latency-budget must be a fraction in (0, 1], got {self.budget}")
        if self.latency_ms is not None and self.latency_ms <= 0:
            raise PruneError(f"--latency-ms must be positive, got {self.latency_ms}")
        if self.gradual_steps < 1:
            raise PruneError("gradual_steps must be at least 1")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise PruneError("--max-accuracy-drop must be >= 0 (accuracy points)")
        if self.max_accuracy_drop is not None and not self.accuracy_gate:
            raise PruneError("a --max-accuracy-drop limit and no accuracy gate contradict each other",
                             "give either a number of points or 'none'")
        if self.tables not in ("model", "full"):
            raise PruneError(f"--tables must be 'model' or 'full', not {self.tables!r}")
        if not self.profile_budget_s > 0:
            raise PruneError(f"--profile-budget must be positive, got {self.profile_budget_s} s")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise PruneError(f"--lr must be a positive number, got {self.lr}")
        if self.budget_retries < 0:
            raise PruneError("budget_retries must be >= 0")
        if self.depth not in DEPTH_MODES:
            raise PruneError(f"--depth must be one of {', '.join(DEPTH_MODES)}, not {self.depth!r}")

    def learning_rate(self, space: "PruneSpace") -> float:
        """The fine-tuning learning rate: the user's, else the default for the kinds of
        the model's layers (:func:`edgeprune.prune.recipe.default_lr`)."""
        return self.lr if self.lr is not None else default_lr(layer.kind for layer in space.layers)

    def accuracy_limit(self, has_validation: bool) -> float | None:
        """The accuracy drop (points) this run may lose, or None for no gate: the user's
        limit, else the default one when accuracy can be measured, unless turned off."""
        if not self.accuracy_gate:
            return None
        if self.max_accuracy_drop is not None:
            return self.max_accuracy_drop
        return DEFAULT_MAX_ACCURACY_DROP if has_validation else None


@dataclass
class PruneResult:
    """A pruned model and the figures that describe it. ``widths`` are per group id;
    ``channels`` per layer: ``[original, kept]`` output channels (hidden units for RNNs)."""

    module: "nn.Module"
    space: "TracedSpace"
    widths: dict[str, int]
    channels: dict[str, list[int]]
    strategy: str
    importance: str
    budget_ms: float
    budget_fraction: float | None  # set when the budget was given as a fraction
    original_predicted_ms: float
    predicted_latency_ms: float
    accuracy_before: float | None
    accuracy_after: float | None
    accuracy_after_search: float | None
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    max_accuracy_drop: float | None = None  # the limit that applied (None: no gate)
    #: the limit was the default one (the user set none): messages say how to change it
    accuracy_limit_default: bool = False
    seed: int = 0
    search_seconds: float = 0.0
    finetune_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    latency_model: str = ""
    #: the pruned model timed end to end against the budget (flows.budget.BudgetOutcome.to_dict)
    budget_check: dict[str, Any] | None = None
    allow_budget_miss: bool = False
    #: how the latency model was profiled: table_source, profile_seconds, points_measured, ...
    profile: dict[str, Any] | None = None

    @property
    def budget_missed(self) -> bool:
        """Measured end to end and beyond the tolerance (False when not measured)."""
        return bool(self.budget_check) and self.budget_check.get("met") is False  # type: ignore[union-attr]

    @property
    def accuracy_drop(self) -> float | None:
        if self.accuracy_before is None or self.accuracy_after is None:
            return None
        return self.accuracy_before - self.accuracy_after

    @property
    def gate_passed(self) -> bool | None:
        if self.max_accuracy_drop is None or self.accuracy_drop is None:
            return None
        return self.accuracy_drop <= self.max_accuracy_drop + 1e-9

    def extra(self) -> dict[str, Any]:
        """The keys ``CompileSummary.pruned.extra`` carries (summary.json contract)."""
        return {
            "predicted_latency_ms": round(self.predicted_latency_ms, 4),
            "original_predicted_latency_ms": round(self.original_predicted_ms, 4),
            "budget_ms": round(self.budget_ms, 4),
            "strategy": self.strategy,
            "importance": self.importance,
            "channels": self.channels,
            "widths": self.widths,
            "accuracy_before_finetune": self.accuracy_after_search,
            "accuracy_gate": None if self.max_accuracy_drop is None else {
                "max_drop": self.max_accuracy_drop, "drop": self.accuracy_drop, "passed": self.gate_passed,
                "default": self.accuracy_limit_default},
            "seed": self.seed,
            "search_seconds": round(self.search_seconds, 2),
            "finetune_seconds": round(self.finetune_seconds, 2),
            "latency_model": self.latency_model,
            "budget_check": self.budget_check,
            "measured_fraction": (self.budget_check or {}).get("measured_fraction"),
            "profile": self.profile,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": {"original": self.params_before, "pruned": self.params_after},
            "macs": {"original": self.macs_before, "pruned": self.macs_after},
            "accuracy": {"original": self.accuracy_before, "pruned": self.accuracy_after},
            **self.extra(),
            "history": self.history,
            "notes": self.notes,
        }


class PruneGateError(PruneError):
    """The accuracy gate failed, or the pruned model measured end to end missed its
    latency budget. ``result`` holds everything that was produced, so the caller can
    still write it out (nothing is lost)."""

    def __init__(self, message: str, result: PruneResult, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.result = result


def layer_channels(original: "nn.Module", pruned: "nn.Module") -> dict[str, list[int]]:
    """``{layer: [original, kept]}`` output channels of every conv / linear / RNN layer."""
    from torch import nn

    def width(m) -> int | None:
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return int(m.out_channels)
        if isinstance(m, nn.Linear):
            return int(m.out_features)
        if isinstance(m, (nn.LSTM, nn.GRU)):
            return int(m.hidden_size)
        return None

    after = {n: width(m) for n, m in pruned.named_modules()}
    out: dict[str, list[int]] = {}
    for n, m in original.named_modules():
        w = width(m)
        if w is not None and after.get(n) is not None:
            out[n] = [w, int(after[n])]
    return out


def eval_batch_size(module: "nn.Module", model: LoadedModel) -> int:
    """Batch for PyTorch-side accuracy: 256 when the module accepts it (eval mode makes the
    result independent of the batch, and batch 1 is slow), else the deployment batch."""
    import torch

    if model.batch_size >= 256:
        return model.batch_size
    try:
        with torch.no_grad():
            module.eval()(*[torch.from_numpy(np.repeat(x[:1], 4, axis=0)) for x in model.example_inputs])
        return 256
    except Exception:
        return model.batch_size


def torch_inputs(model: LoadedModel):
    import torch

    return [torch.from_numpy(np.ascontiguousarray(x)) for x in model.example_inputs]


def pruned_loaded_model(model: LoadedModel, result: PruneResult) -> LoadedModel:
    """``model`` with its module replaced by the pruned one (same inputs, data, names)."""
    return dataclasses.replace(model, name=f"{model.name}-pruned", module=result.module,
                               notes=list(model.notes), meta={**model.meta, "pruned": True})
