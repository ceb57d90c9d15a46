"""Benchmark one model on several devices at once (``edgeprune bench --device a --device b``).

The model is prepared once (export and builds do not depend on the board: every device
is a board of the same target), the bundle is copied per device, and
:func:`~edgeprune.bench.measure.measure` times every device in parallel, one thread
per device; the per-board lock in each executor keeps every single board to one
benchmark at a time (also when two entries of devices.yaml name the same board).
Each device gets its own ``summary.json`` / ``report.md`` under ``out_dir/<device>``.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from edgeprune.bench.measure import Bundle, MeasureInterrupted, check_distinct, measure
from edgeprune.compile.prepare import Variant, prepare
from edgeprune.compile.summary import CompileSummary
from edgeprune.config.devices import Device
from edgeprune.config.targets import Target
from edgeprune.errors import EdgepruneError, Interrupted
from edgeprune.flows.compile import CompileOptions, can_measure, finish
from edgeprune.models.base import LoadedModel

Log = Callable[[str], None]


@dataclass
class DeviceOutcome:
    """What happened on one device: a summary, or the error that stopped it."""

    device: Device
    out_dir: Path
    summary: CompileSummary | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.summary is not None and self.summary.backend is not None


def device_dir(out_dir: Path, device: Device) -> Path:
    return out_dir / re.sub(r"[^A-Za-z0-9_.-]", "_", device.name)


def bench_on_devices(
    model: LoadedModel,
    target: Target,
    devices: list[Device],
    out_dir: Path,
    options: CompileOptions,
    log: Log,
    max_parallel: int | None = None,
) -> list[DeviceOutcome]:
    """Prepare ``model`` once, measure it on every device in parallel, summarize per
    device into ``out_dir/<device>``. One device failing does not stop the others."""
    check_distinct(devices)  # before the export and builds, not after
    if options.prune is not None:
        raise EdgepruneError("pruning on several devices at once is not supported", "prune with one --device")
    prepared = prepare([Variant(model=model)], target, out_dir, options.prepare_options(), log)
    outcomes = {d.name: DeviceOutcome(d, device_dir(out_dir, d)) for d in devices}
    bundles: dict[str, Bundle] = {}
    for d in devices:
        o = outcomes[d.name]
        o.out_dir.mkdir(parents=True, exist_ok=True)
        dest = o.out_dir / "bundle"
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(prepared.bundle.dir, dest)
        bundles[d.name] = Bundle(dest, list(prepared.bundle.jobs))
    runnable = [d for d in devices if can_measure(target, d) and prepared.bundle.jobs]
    s = options.bench
    stop = None
    try:
        measured = measure({n: bundles[n] for n in (d.name for d in runnable)}, runnable, rounds=s.rounds,
                           timeout_s=s.timeout_s, log=log, max_parallel=max_parallel,
                           wait=s.wait_for_device) if runnable else {}
    except MeasureInterrupted as halt:
        stop, measured = halt, halt.measurements
    for d in devices:
        o = outcomes[d.name]
        m = measured.get(d.name)
        o.seconds = m.seconds if m is not None else 0.0
        try:
            o.summary = finish(replace(prepared, bundle=bundles[d.name]), m, d, model, options, o.out_dir,
                               status="incomplete" if stop else "complete",
                               stopped=f"{stop} during measurement" if stop else None)
        except EdgepruneError as exc:
            o.error = str(exc)
            continue
        if o.summary.backend is None:
            o.error = m.error if m is not None and m.error else o.summary.choice_reason
    result = [outcomes[d.name] for d in devices]
    if stop is not None:
        raise FleetInterrupted(stop, result)
    return result


class FleetInterrupted(Interrupted):
    """A several-device bench stopped by a signal: ``outcomes`` are every device's
    summary (status ``incomplete``, written) with what that device had finished."""

    def __init__(self, stop: Interrupted, outcomes: list[DeviceOutcome]) -> None:
        measured = sum(1 for o in outcomes for b in (o.summary.backends if o.summary else []) if b.ok)
        super().__init__(stop.signum, f"{measured} backend result(s) on {len(outcomes)} device(s) kept")
        self.outcomes = outcomes
