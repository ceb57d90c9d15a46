"""``build_device_model`` and ``show``: the orchestrators behind ``edgeprune device-model``.

build: load the table file of the measurement context -> complete the suite points an
interrupted build cut short -> measure the missing suite points in priority order
(:func:`edgeprune.latency.suite.suite_points`) until done or the time budget is spent
-> one more look at this build's noisy points, budget allowing -> fit the device model
on every point of the file and report its error on the held-out shapes -> write the
sidecar (:mod:`edgeprune.latency.devmodel_store`). The shared machinery (the plan, the
fit, the sidecar) is :mod:`edgeprune.flows.devmodel_build`; several boards of one kind
split the suite in :mod:`edgeprune.flows.farm`.

Devices are reached only through the measurer's bundles, so an SSH board builds its
device model with no extra code.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeprune.durations import format_duration
from edgeprune.errors import ConfigError
from edgeprune.flows.devmodel_build import (BATCH_S, DeviceModelBuild, DeviceModelInterrupted, OneBar, bar_total,
                                            check_budget, context_of, describe_plan, finish_build, fit_plan,
                                            noisy_points, owed_batches, plan_build, record_interrupted)
from edgeprune.latency import devmodel_store as dms
from edgeprune.latency.measurer import BundleMeasurer, warn_if_busy
from edgeprune.latency.points import REMEASURE_ROUNDS
from edgeprune.latency.settings import ProfileSettings, ProgressSink
from edgeprune.latency.store import LUTStore
from edgeprune.latency.suite import SUITE_VERSION, SuitePoint, suite_points

if TYPE_CHECKING:
    from edgeprune.config.devices import Device
    from edgeprune.config.targets import Target

__all__ = ["DeviceModelBuild", "DeviceModelInterrupted", "DeviceModelView", "build_device_model", "show"]

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_device_model(target: "Target", device: "Device", backend: str, settings: ProfileSettings = ProfileSettings(),
                       *, time_budget_s: float | None = None, store: LUTStore | None = None,
                       progress: ProgressSink | None = None, log: Log = _stderr, size: str = "full",
                       ) -> DeviceModelBuild:
    """Measure the calibration suite of ``target`` on ``device`` with ``backend`` into
    the context's table file (what is there is kept), fit the device model and write its
    sidecar. ``time_budget_s`` (None: no limit) bounds the measuring: the build stops
    between batches, in priority order, and says how many points remain (state
    ``budget``); fitting adds seconds. ``size="tiny"`` is the tests' suite. Several boards
    of one kind: :func:`edgeprune.flows.farm.build_on_farm`.

    Interrupted: raises :class:`DeviceModelInterrupted` (exit 130/143/129) after writing
    the sidecar (state ``interrupted``, the seconds spent added)."""
    settings.check_drift()
    check_budget(time_budget_s)
    progress = progress or ProgressSink()
    bar = OneBar(progress, "device-model suite", 0)
    measurer = BundleMeasurer(target, device, backend, settings, progress=bar, log=log)
    local = device.kind == "local"
    plan = plan_build(target, device, measurer, backend, settings, store, size, log,
                      busy_probe=(lambda: warn_if_busy(device, lambda m: None)) if local else None)
    rec, entries, est, todo, cut = plan.rec, plan.entries, plan.est, plan.todo, plan.cut
    log(describe_plan(plan, target, device.name, backend))
    if todo or cut:
        warn_if_busy(device, log)
    bar.total = bar_total(plan, settings)
    series = settings.series()
    failed = plan.failed
    state = {"scale": 1.0, "spent": 0.0, "est": 0.0}
    stopped = False

    def run(batch: list[SuitePoint], mode: str, rounds: int, what: str) -> None:
        s0 = time.perf_counter()
        errs = rec.measure([p.job(plan.key.timing) for p in batch], mode, rounds, series, what)
        state["spent"] += time.perf_counter() - s0
        state["est"] += sum(est(p, rounds) for p in batch)
        state["scale"] = max(0.2, state["spent"] / state["est"]) if state["est"] > 0 else 1.0
        for k, e in errs.items():
            log(f"could not measure {k}: {e}")
        failed.update(errs)

    def left() -> float:
        return math.inf if time_budget_s is None else time_budget_s - (time.perf_counter() - plan.t0)

    try:
        for rounds, batch in owed_batches(plan, settings):  # only the rounds each still owes
            run(batch, "complete", rounds, "points cut short")
        i = 0
        while i < len(todo):
            room = min(left(), BATCH_S)
            batch, acc = [], 0.0
            while i + len(batch) < len(todo):
                cost = est(todo[i + len(batch)]) * state["scale"]
                if acc + cost > room and (batch or cost > left()):
                    break
                batch.append(todo[i + len(batch)])
                acc += cost
            if not batch:
                stopped = True
                break
            run(batch, "new", settings.rounds, "suite points")
            i += len(batch)
            bar.status(0, 0, len(rec.measured), len(todo) + len(cut))
            rest = sum(est(p) for p in todo[i:]) * state["scale"]
            log(f"  device model: {i}/{len(todo)} suite point(s) measured in {format_duration(state['spent'])}"
                + (f", ~{format_duration(rest)} left" if i < len(todo) else ""))
        noisy = noisy_points([p for p in todo[:i] if p.signature in entries], entries)
        if noisy and sum(est(p, REMEASURE_ROUNDS) for p in noisy) * state["scale"] <= left():
            log(f"re-measuring {len(noisy)} noisy point(s)")
            run(noisy, "remeasure", REMEASURE_ROUNDS, "noisy points")
        progress.close()
        fit = fit_plan(plan, log)
    except KeyboardInterrupt as exc:  # measuring or fitting: the points are in the table file
        progress.close()
        raise record_interrupted(plan, exc, log) from None
    return finish_build(plan, fit, stopped)


@dataclass
class DeviceModelView:
    """``show``: the sidecar, and what the table file holds of the current suite now."""

    info: dms.DeviceModelInfo
    table_path: Path
    table_points: int
    suite_points: int
    suite_measured: int
    current_suite_version: str = SUITE_VERSION
    #: op kinds of the current suite with no measured point in the table (e.g. the attention
    #: core in a model built before it existed): predicted as unknown, so profile measures them
    unmeasured_kinds: tuple[str, ...] = ()

    @property
    def stale_suite(self) -> bool:
        return self.info.suite_version != self.current_suite_version

    def to_dict(self) -> dict[str, Any]:
        return {"device_model": self.info.to_dict(), "sidecar": str(self.info.path), "table": str(self.table_path),
                "table_points": self.table_points, "suite_points_now": self.suite_points,
                "suite_measured_now": self.suite_measured, "current_suite_version": self.current_suite_version,
                "stale_suite": self.stale_suite, "unmeasured_kinds": list(self.unmeasured_kinds)}


def show(target: "Target", device: "Device", backend: str, settings: ProfileSettings = ProfileSettings(),
         store: LUTStore | None = None) -> DeviceModelView:
    """The device model of this context (nothing is measured or fitted; the device is
    not contacted). :class:`ConfigError` if none was built."""
    store, key = context_of(target, device, backend, settings, store)
    info = dms.find(store, key)
    if info is None:
        where = f"board kind {device.board_kind}" if device.board_kind else device.name
        raise ConfigError(f"no device model for {target.name} on {where} with {backend} "
                          f"{key.backend_version} ({key.threads} thread(s), {key.timing} timing) under {store.root}",
                          f"build one: edgeprune device-model build --target {target.name} "
                          + (f"--kind {device.board_kind}" if device.board_kind else f"--device {device.name}")
                          + f" --backend {backend}")
    path = store.path_for(key)
    entries = store.load(key).entries if path.exists() else {}
    points = suite_points(info.lanes, info.suite_size)
    have = {p.signature for p in points if (e := entries.get(p.signature)) is not None and not e.partial}
    missing = tuple(sorted({p.kind for p in points} - {p.kind for p in points if p.signature in have}))
    return DeviceModelView(info=info, table_path=path, table_points=len(entries), suite_points=len(points),
                           suite_measured=len(have), unmeasured_kinds=missing)

