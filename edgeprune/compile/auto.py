"""Which backends ``--backend auto`` builds for a target.

Every backend the target lists, except one that cannot win: an *untuned* TVM build on a
CPU target. Without MetaSchedule records TVM lowers every kernel with its default
schedule, and on a CPU that is far slower than ONNX Runtime (issue 18 measured 53.7 ms,
0.01x ONNX Runtime's speed); building it costs seconds to minutes and it is never chosen.
So ``auto`` leaves TVM out on a CPU target unless

* tuning records exist for the target (``edgeprune tune`` ran: the build applies them), or
* the target prefers TVM (lists it first, e.g. ``rpi4``: its author deploys TVM there), or
* it is asked for by name (``--backend tvm``: then this module is not consulted).

Accelerator targets (CUDA, OpenCL) keep TVM: there it is the only GPU code path.
What was left out, and why, becomes a note of the run.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from edgeprune.errors import EdgepruneError

if TYPE_CHECKING:
    from edgeprune.config.targets import Target

TVM = "tvm"


def tune_command(model_spec: str, target: "Target", device: str | None = None) -> str:
    """The ``edgeprune tune`` command that makes TVM worth building for this model and target
    (quoted for a POSIX shell: it is shown to be copied, never run by us)."""
    args = ["edgeprune", "tune", "--model", model_spec, "--target", target.name]
    if device and device != "local":
        args += ["--device", device]
    return shlex.join(args + ["--time-budget", "30m"])


def has_tuning_records(target: "Target") -> bool:
    """Whether a TVM build for ``target`` would find MetaSchedule records (cheap: reads
    file sizes, imports no TVM). No TVM installed counts as no records."""
    from edgeprune.compile.backends.tvm.records import records_for

    try:
        return records_for(target) is not None
    except EdgepruneError:
        return False


def skip_reason(name: str, target: "Target", model_spec: str | None = None) -> str | None:
    """Why ``auto`` does not build ``name`` for ``target`` (None: it builds it)."""
    if name != TVM or target.accelerator != "none" or target.backends[0] == TVM:
        return None
    if has_tuning_records(target):
        return None
    cmd = f"`{tune_command(model_spec, target)}`" if model_spec else "`edgeprune tune`"
    return (f"tvm skipped: no tuning records for target {target.name}, and an untuned TVM build is much slower than "
            f"ONNX Runtime on a CPU (it is never chosen); run {cmd} first or pass --backend tvm")


def auto_backends(target: "Target", model_spec: str | None = None) -> tuple[list[str], list[str]]:
    """(the backends ``auto`` builds, in the target's order of preference; a note for each left out)."""
    names, notes = [], []
    for n in target.backends:
        why = skip_reason(n, target, model_spec)
        if why is None:
            names.append(n)
        else:
            notes.append(why)
    return names, notes
