"""How a session spends its budget: trials per batch, which kernels fit a time budget.

Trials are the model's *total* (what the database already has counts), and MetaSchedule
gives every kernel one batch before it records anything (the first round), so both the
batch size and the set of kernels are chosen so that first round fits the session.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgeprune.compile.backends.tvm.records import TuningDatabase
    from edgeprune.compile.backends.tvm.settings import TuneSettings
    from edgeprune.compile.backends.tvm.tasks import TaskInfo

DEFAULT_TRIALS_PER_ITER = 64
#: ~seconds per batch (evolutionary search of one kernel + building and timing its candidates)
#: on the busy 2-core host, until a database has its own history
SECONDS_PER_BATCH_ESTIMATE = 110.0
#: "no trial budget": a time-budgeted session is stopped by the clock
UNBOUNDED_TRIALS = 1 << 20


def trial_plan(settings: "TuneSettings", infos: list["TaskInfo"]) -> tuple[int, int, int, list[int]]:
    """(session trials, per-kernel cap, trials per batch, kernels to tune).

    ``--trials`` is the model's total, so the session runs what the database lacks. The
    first round gives every kernel one batch, so batches are sized to fit that round in
    the session's trials: otherwise the kernels late in the order would get nothing.
    """
    n_all = max(len(infos), 1)
    if settings.trials is not None:
        total = int(settings.trials)
    elif settings.time_budget_s is not None:
        total = UNBOUNDED_TRIALS
    else:
        total = DEFAULT_TRIALS_PER_ITER * n_all
    per_task = int(settings.trials_per_task) if settings.trials_per_task else total
    selected = [i for i, t in enumerate(infos) if t.trials_before < per_task]
    existing = sum(t.trials_before for t in infos)
    session = total - existing if settings.trials is not None or settings.time_budget_s is None else total
    if settings.trials_per_iter:
        per_iter = int(settings.trials_per_iter)
    else:
        fit = session // max(len(selected), 1) if session < UNBOUNDED_TRIALS else DEFAULT_TRIALS_PER_ITER
        per_iter = max(4, min(DEFAULT_TRIALS_PER_ITER, fit))
        if settings.time_budget_s is not None:
            per_iter = min(per_iter, 32)  # a batch is the granularity of the time budget
    return session, per_task, per_iter, selected


def seconds_per_batch(db: "TuningDatabase") -> float:
    """What one batch (search + build + measure) took in this database's past sessions."""
    done = [(float(x.get("seconds", 0)), int(x.get("batches", 0))) for x in db.read_meta().get("sessions", [])]
    done = [(sec, n) for sec, n in done if n > 0 and sec > 0]
    if not done:
        return SECONDS_PER_BATCH_ESTIMATE
    return sum(sec for sec, _ in done) / sum(n for _, n in done)


def fit_first_round(selected: list[int], infos: list["TaskInfo"], budget_s: float,
                    batch_s: float) -> tuple[list[int], list[int]]:
    """(kept, skipped): the first round gives every kernel one batch and is measured before
    the time budget can stop anything, so when it would not fit in ~60 % of the budget, only
    the kernels that matter most (FLOPs x calls) are tuned this session; the rest keep
    their records, or TVM's default schedule if they have none."""
    room = max(1, int(0.6 * budget_s / max(batch_s, 1.0)))
    if len(selected) <= room:
        return selected, []
    ranked = sorted(selected, key=lambda i: -(infos[i].flop or 0.0) * infos[i].weight)
    kept = sorted(ranked[:room])
    return kept, sorted(ranked[room:])
