"""A model's kernels as MetaSchedule tasks, what the database knows of each, and the
report a tune session (or ``tune --status``) returns."""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from edgeprune.compile.backends.tvm.relax import import_relax, lower_for_tuning
from edgeprune.compile.backends.tvm.targets import target_dict

if TYPE_CHECKING:
    from edgeprune.config.targets import Target


@dataclass
class TaskInfo:
    """One kernel (MetaSchedule task) of the model and what the database knows about it."""

    name: str
    weight: int
    flop: float | None
    trials_before: int = 0
    trials_after: int = 0
    best_us: float | None = None  # best measured latency of one call
    tuned_now: bool = False
    lag_us: float | None = None  # time per inference above the model's best FLOP rate (lag.kernel_lag_us)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


StoppedBy = Literal["trials", "time-budget", "already-tuned", "interrupted", "status", "error"]


@dataclass
class TuneReport:
    """What a tune session did (also what ``--status`` shows without tuning)."""

    model: str
    target: str
    database: str
    tasks: list[TaskInfo]
    trials_requested: int | None
    time_budget_s: float | None
    trials_run: int = 0
    seconds: float = 0.0
    stopped_by: StoppedBy = "trials"
    stop_signal: int | None = None  # stopped_by "interrupted": which signal (the CLI exits 128 + it)
    measured_on: str = "local"
    estimated_ms_before: float | None = None
    estimated_ms_after: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def trials_total(self) -> int:
        return sum(t.trials_after for t in self.tasks)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["trials_total"] = self.trials_total
        for t in d["tasks"]:  # strict JSON has no Infinity: an untuned kernel's lag is null (trials_after 0 says why)
            if t["lag_us"] is not None and not math.isfinite(t["lag_us"]):
                t["lag_us"] = None
        return d


def extract(onnx_path: Path, target: "Target"):
    """(lowered module, tvm target, extracted tasks) of an ONNX model for ``target``.

    Lowered exactly as ``build`` lowers before applying records (:mod:`.relax`), so the
    kernels tuned here are the kernels a build looks up.
    """
    import tvm
    from tvm.s_tir import meta_schedule as ms

    mod = import_relax(Path(onnx_path))
    tvm_target = tvm.target.Target(target_dict(target))
    lowered = lower_for_tuning(mod, tvm_target)
    tasks = ms.relax_integration.extract_tasks(lowered, tvm_target)
    return lowered, tvm_target, tasks


def task_stats(db, tasks) -> list[tuple[int, float | None]]:
    """(records, best seconds) per extracted task, from an open MetaSchedule database."""
    out = []
    for t in tasks:
        mod = t.dispatched[0]
        if not db.has_workload(mod):
            out.append((0, None))
            continue
        recs = db.get_top_k(db.commit_workload(mod), 1 << 30)
        best = None
        for r in recs:
            secs = [float(s) for s in (r.run_secs or [])]
            if secs:
                m = sum(secs) / len(secs)
                best = m if best is None or m < best else best
        out.append((len(recs), best))
    return out


def task_infos(tasks, stats: list[tuple[int, float | None]]) -> list[TaskInfo]:
    """One :class:`TaskInfo` per task, with its FLOP estimate and database state."""
    infos = []
    for t, (n, best) in zip(tasks, stats):
        flop = None
        with contextlib.suppress(Exception):  # an estimate only; some kernels have none
            from tvm.s_tir.analysis import estimate_tir_flops

            flop = float(estimate_tir_flops(t.dispatched[0]))
        infos.append(TaskInfo(t.task_name, int(t.weight), flop, n, n, None if best is None else best * 1e6))
    return infos


def estimate_ms(infos: list[TaskInfo]) -> float | None:
    """MetaSchedule's own estimate of one inference: sum of weight x best kernel latency
    (kernels without records excluded, so only comparable when all are tuned)."""
    if not infos or any(t.best_us is None for t in infos):
        return None
    return sum(t.weight * t.best_us for t in infos) / 1e3  # type: ignore[operator]
