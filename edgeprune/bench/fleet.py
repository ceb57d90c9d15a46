"""Benchmark one model on several devices at once (``edgeprune bench --device a --device b``).

Devices run in parallel threads, one per device; the per-board lock in each executor
keeps every single board to one benchmark at a time (also when two entries of
devices.yaml name the same board). Export and artifact builds inside
:func:`compile_model` are serialised by the pipeline itself (PyTorch's exporter is not
thread-safe), so only the device runs overlap: that is where the time goes.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgeprune.config.devices import Device
from edgeprune.errors import EdgepruneError

if TYPE_CHECKING:
    from edgeprune.compile.pipeline import CompileOptions
    from edgeprune.compile.summary import CompileSummary
    from edgeprune.config.targets import Target
    from edgeprune.models.base import LoadedModel

Log = Callable[[str], None]


@dataclass
class DeviceOutcome:
    """What happened on one device: a summary, or the error that stopped it."""

    device: Device
    out_dir: Path
    summary: "CompileSummary | None" = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.summary is not None and self.summary.backend is not None


def device_dir(out_dir: Path, device: Device) -> Path:
    return out_dir / re.sub(r"[^A-Za-z0-9_.-]", "_", device.name)


def bench_on_devices(
    model: "LoadedModel",
    target: "Target",
    devices: list[Device],
    out_dir: Path,
    options: "CompileOptions",
    log: Log,
    max_parallel: int | None = None,
) -> list[DeviceOutcome]:
    """Run :func:`compile_model` for every device, in parallel; results in ``out_dir/<device>``.

    One device failing (unreachable, runtime missing) does not stop the others.
    """
    from edgeprune.compile.pipeline import compile_model

    names = [d.name for d in devices]
    if len(set(names)) != len(names):
        raise EdgepruneError(f"device given twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    log_lock = threading.Lock()

    def run(dev: Device) -> DeviceOutcome:
        def dlog(msg: str) -> None:
            with log_lock:
                log(f"[{dev.name}] {msg}")

        outcome = DeviceOutcome(dev, device_dir(out_dir, dev))
        t0 = time.monotonic()
        try:
            outcome.summary = compile_model(model, target, dev, outcome.out_dir, options, log=dlog)
            if outcome.summary.backend is None:
                outcome.error = outcome.summary.choice_reason
        except EdgepruneError as exc:
            outcome.error = str(exc)
            dlog(f"failed: {exc}")
        outcome.seconds = time.monotonic() - t0
        return outcome

    with ThreadPoolExecutor(max_workers=max_parallel or len(devices)) as pool:
        return list(pool.map(run, devices))
