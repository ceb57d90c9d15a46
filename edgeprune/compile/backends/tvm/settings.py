"""How to tune: budgets, MetaSchedule knobs, and where candidates are timed."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgeprune.compile.backends.tvm.records import TuningError

if TYPE_CHECKING:
    from edgeprune.config.targets import Target

#: per candidate build. MetaSchedule's own LocalBuilder needs minutes because every batch
#: starts a worker that imports TVM; edgeprune's workers are long-lived (the import is paid
#: once, in the initializer), and a candidate still compiling after 3 min is a pathological
#: schedule (measured: one ResNet-18 candidate held the session idle-but-one-core for 5+ min)
BUILDER_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class RpcSettings:
    """Measure on a board of a TVM RPC tracker (``python -m tvm.exec.rpc_server --tracker ... --key ...``)."""

    tracker: str  # HOST:PORT
    key: str
    session_timeout_s: float = 120.0

    def host_port(self) -> tuple[str, int]:
        host, _, port = self.tracker.rpartition(":")
        if not host or not port.isdigit():
            raise TuningError(f"RPC tracker address {self.tracker!r} is not HOST:PORT")
        return host, int(port)


def _default_builder_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class TuneSettings:
    """How much to tune and how to measure.

    ``trials`` is the model's *total* budget: trials already in the database for this
    model's kernels count towards it, so rerunning an interrupted tune resumes and a
    finished one does nothing. ``time_budget_s`` bounds the wall time of this session
    (checked after every measured batch, so it may overrun by one batch). With neither,
    64 trials per kernel.
    """

    trials: int | None = None
    time_budget_s: float | None = None
    trials_per_task: int | None = None
    trials_per_iter: int | None = None  # None: sized so every kernel gets a first round
    population: int = 512  # evolutionary search population (MetaSchedule default)
    builder_timeout_s: float = BUILDER_TIMEOUT_S
    #: candidates are built in parallel, then timed alone: MetaSchedule joins the runner before
    #: the next batch is built, so building on every core never overlaps a measurement
    builder_workers: int = field(default_factory=_default_builder_workers)
    runner_timeout_s: float = 60.0
    threads: int | None = None  # TVM threads while timing candidates (default: target cores)
    rpc: RpcSettings | None = None
    seed: int | None = 0
    verbose: bool = False  # show MetaSchedule's own tables and cost-model logs
    #: tune only the ``focus`` kernels with the most lag (see ``lag.kernel_lag_us``); None: all
    focus: int | None = None


def check_measurable(target: "Target", rpc: RpcSettings | None) -> str:
    """Where candidates will be timed ('local' or 'rpc://tracker/key'); refuses cross-target tuning
    without a device, because timings from this host would tune for the wrong hardware."""
    if rpc is not None:
        return f"rpc://{rpc.tracker}/{rpc.key}"
    if target.is_native:
        return "local"
    what = f"{target.arch}" + (f" + {target.accelerator} GPU" if target.accelerator != "none" else "")
    raise TuningError(
        f"cannot tune for target '{target.name}' ({what}) on this {platform.machine()} host without its device: "
        "MetaSchedule picks schedules by timing candidate kernels on the target hardware, and timings taken here "
        "would tune for the wrong processor. Builds for this target stay untuned (dlight defaults on GPUs)",
        "start `python -m tvm.exec.rpc_server --tracker HOST:9190 --key KEY` on the board and pass "
        "--rpc-tracker HOST:9190 --rpc-key KEY",
    )
