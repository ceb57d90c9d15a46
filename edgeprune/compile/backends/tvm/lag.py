"""Kernel lag: where more trials can still win time, and ``tune --focus K``.

After a few thousand trials most of a model's big kernels reach about the same GFLOP/s,
and the ones that did not (ResNet-18 here: the 7x7 stem, the stride-2 and 512-channel
convs) are where more trials can still win time. MetaSchedule's gradient scheduler looks
at recent improvement, not at this headroom, so ``--focus K`` spends a session on the K
kernels with the most lag.
"""

from __future__ import annotations

import math

from edgeprune.compile.backends.tvm.tasks import TaskInfo

#: kernels below this share of the model's largest kernel's FLOPs do not set the reference
#: rate: a tiny kernel's rate is dominated by its fixed cost and would flatter or shame the rest
LAG_REFERENCE_MIN_SHARE = 0.1


def kernel_lag_us(infos: list[TaskInfo]) -> list[float | None]:
    """Per kernel, the time per inference (us, x calls) it loses against the model's best
    tuned FLOP rate: ``calls x (best_us - flop / best_rate)``, floored at 0.

    Kernels without records get ``inf`` (they run untuned schedules, the worst lag of
    all); kernels without a FLOP estimate get None (not ranked).
    """
    rated = [(t.flop, t.best_us) for t in infos if t.flop and t.best_us]
    top = max((f for f, _ in rated), default=0.0)
    rates = [f / us for f, us in rated if f >= LAG_REFERENCE_MIN_SHARE * top]
    best_rate = max(rates, default=None)
    out: list[float | None] = []
    for t in infos:
        if not t.flop:
            out.append(None)
        elif t.best_us is None:
            out.append(math.inf)
        elif best_rate is None:
            out.append(None)
        else:
            out.append(t.weight * max(0.0, t.best_us - t.flop / best_rate))
    return out


def set_lag(infos: list[TaskInfo]) -> None:
    """Fill every ``TaskInfo.lag_us`` (the 'lag us' column of ``tune --status``)."""
    for info, lag in zip(infos, kernel_lag_us(infos)):
        info.lag_us = lag


def focus_kernels(selected: list[int], infos: list[TaskInfo], k: int) -> tuple[list[int], list[int]]:
    """(kept, skipped): the ``k`` kernels of ``selected`` with the most lag (unranked last)."""
    lags = kernel_lag_us(infos)
    ranked = sorted(selected, key=lambda i: -(lags[i] if lags[i] is not None else -1.0))
    return sorted(ranked[:k]), sorted(ranked[k:])
