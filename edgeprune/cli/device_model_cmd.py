"""``edgeprune device-model build / show``: measure a device's calibration suite once, fit
its latency model, and say what it holds.

The points go into the same latency table every ``profile`` of that context uses
(target, device, backend + version, threads, timing mode), so a device model and the
models' own tables share their measurements. ``--kind K`` (or several ``--device``) splits
the build over every reachable board of one ``board_kind``. See docs/device-model.md and
docs/board-farm.md.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from edgeprune.cli.common import (DeviceArgs, Duration, backend_option, device_options, json_option,
                                  steady_gate_option, target_option, threads_option)
from edgeprune.cli.output import log, out, print_json, table
from edgeprune.cli.profile_cmd import RichProgress


class SuiteProgress(RichProgress):
    """The profile command's progress bar, its status text about suite points."""

    def status(self, layers_done: int, layers_total: int, points_done: int, points_total: int) -> None:
        self._extra = f"suite points {points_done}/{points_total}"
        if self._task is not None:
            self._p.update(self._task, extra=self._extra)


def _selectors(f, multiple: bool = False):
    """The options that name a measurement context (the same on build and show)."""
    for option in reversed([
        target_option,
        backend_option(auto="the target's preferred (first) backend.",
                       help="Backend the suite is built and timed with."),
        device_options(multiple=multiple, help=(
            "Device the suite is measured on (see `edgeprune devices`); several boards of one board_kind split "
            "the suite between them." if multiple else "Device whose model to show (its board kind's, if it has one).")),
        click.option("--kind", "kind", metavar="KIND",
                     help="Board kind (devices.yaml `board_kind`): " + (
                         "split the suite over every reachable board of this kind." if multiple
                         else "show the model its boards share.")),
        threads_option(),
        click.option("--timing", type=click.Choice(["auto", "kernel", "wall"]), default="auto", show_default=True,
                     help="What a point's time is (as for `edgeprune profile`): auto = kernel for onnxruntime, "
                          "wall for openvino and tvm. Part of the context."),
        click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
                     help="Where tables live (default: $EDGEPRUNE_CACHE/lut or ~/.cache/edgeprune/lut)."),
        json_option(),
    ]):
        f = option(f)
    return f


def _resolve(target_name: str, backend: str, devices: DeviceArgs, threads: int | None, timing: str,
             cache_dir: Path | None):
    from edgeprune.config.targets import get_target
    from edgeprune.latency.settings import ProfileSettings
    from edgeprune.latency.store import LUTStore

    target = get_target(target_name)
    backend_name = target.backends[0] if backend == "auto" else backend
    settings = ProfileSettings(threads=threads, timing=timing)
    return target, backend_name, settings, LUTStore(cache_dir) if cache_dir else LUTStore()


def _boards(devices: DeviceArgs, kind: str | None) -> tuple[str | None, list]:
    """(kind, boards) of a farm build (``--kind``, or several ``--device``), else (None, [device])."""
    from edgeprune.flows.farm import select_boards

    names = () if devices.names == ("local",) else devices.names  # the default: no --device given
    if kind is None and len(names) < 2:
        return None, [devices.one()]
    return select_boards(devices.all(), kind, names)


@click.group("device-model")
def device_model_cmd() -> None:
    """Build and inspect a device's latency model (measured once, used for every model).

    \b
    Examples:
      edgeprune device-model build --target host --time-budget 30m
      edgeprune device-model build --target rpi4 --device pi-lab-1
      edgeprune device-model build --target rpi4 --kind rpi4      # split over every rpi4 board
      edgeprune device-model show --target host --json
    """


@device_model_cmd.command("build")
@functools.partial(_selectors, multiple=True)
@click.option("--time-budget", "time_budget", type=Duration(), metavar="30m",
              help="Stop measuring after about this long, in priority order (checked between batches of about "
                   "2 min); a rerun measures the rest. Default: measure the whole suite.")
@steady_gate_option(True, "Time every series in the device's steady state (as `edgeprune profile` does).")
@click.option("--suite-size", type=click.Choice(["full", "tiny"]), default="full", hidden=True,
              help="The calibration suite's size (tiny: ~40 small points, for tests).")
def build_cmd(target_name: str, backend: str, devices: DeviceArgs, kind: str | None, threads: int | None,
              timing: str, cache_dir: Path | None, as_json: bool, time_budget: float | None, steady_gate: bool,
              suite_size: str) -> None:
    """Measure the calibration suite on a device (or a farm of boards) and fit its latency model.

    \b
    Generic convs (kernel 1/3/5/7, stride 1/2, dense, grouped, depthwise), linear
    layers, LSTM/GRU and the cheap ops (add, pooling, concat, attention...) are timed
    like profile's layer points into the context's latency table; the suite points
    already there are skipped, so an interrupted or budget-stopped build resumes.
    With --kind K (or several --device of one board_kind) every reachable board of
    the kind measures a share; boards that disagree beyond noise are reported and
    kept out of the table.
    """
    from edgeprune.flows.device_model import build_device_model
    from edgeprune.flows.preflight import check_run

    target, backend_name, settings, store = _resolve(target_name, backend, devices, threads, timing, cache_dir)
    settings = replace(settings, gate=steady_gate)
    kind, boards = _boards(devices, kind)
    progress = SuiteProgress()
    if kind is None:
        check_run(target, boards, (backend_name,), lut=cache_dir or True, log=log)
        run = functools.partial(build_device_model, target, boards[0], backend_name, settings)
    else:
        from edgeprune.flows.farm import build_on_farm, reach_boards

        check_run(target, [], (backend_name,), lut=cache_dir or True, log=log)
        log(f"board kind {kind}: {len(boards)} board(s) ({', '.join(d.name for d in boards)}); connecting ...")
        up, down = reach_boards(boards, backend_name, target, log)
        run = functools.partial(build_on_farm, target, up, backend_name, settings, kind=kind, unreachable=down)
    try:
        result = run(time_budget_s=time_budget, store=store, progress=progress, log=log, size=suite_size)
    finally:
        progress.close()
    if as_json:
        print_json(result.to_dict())
        return
    print_info(result.info.to_dict(), str(result.table_path))
    line = (f"this build: {result.measured} point(s) measured, {result.completed} completed, {result.cached} already "
            f"in the table, {result.seconds:.0f} s")
    if result.failed:
        line += f"; {len(result.failed)} could not be measured (e.g. {next(iter(result.failed.items()))[1]})"
    out.print(line, highlight=False)
    if result.stopped_by_budget:
        out.print(f"stopped by the time budget: {result.remaining} suite point(s) left; run the same command "
                  "again to measure them", highlight=False)


@device_model_cmd.command("show")
@_selectors
def show_cmd(target_name: str, backend: str, devices: DeviceArgs, kind: str | None, threads: int | None,
             timing: str, cache_dir: Path | None, as_json: bool) -> None:
    """Show a device model: its context, suite, points per op kind, build time, busy
    state, the boards that measured it and holdout error (lattice-aware vs smooth
    model). Measures nothing."""
    from edgeprune.flows.device_model import show

    target, backend_name, settings, store = _resolve(target_name, backend, devices, threads, timing, cache_dir)
    _, (device, *_) = _boards(devices, kind)
    view = show(target, device, backend_name, settings, store)
    if as_json:
        print_json(view.to_dict())
        return
    print_info(view.info.to_dict(), str(view.table_path))
    if view.stale_suite:
        out.print(f"note: built with suite v{view.info.suite_version}; this edgeprune's suite is "
                  f"v{view.current_suite_version}: `edgeprune device-model build` completes it", highlight=False)
    elif view.suite_measured != view.info.points_measured:
        out.print(f"note: the table now holds {view.suite_measured} of the {view.suite_points} suite points",
                  highlight=False)
    if view.unmeasured_kinds:
        out.print(f"no points yet for: {', '.join(view.unmeasured_kinds)} (predicted as unknown: profile measures "
                  "such layers; `edgeprune device-model build` adds them)", highlight=False)


def print_farm(farm: dict[str, Any]) -> None:
    """Which board measured how many points, and what the last build's overlap check found."""
    check = farm.get("check") or {}
    verdicts = check.get("boards") or {}
    rows = []
    for name, b in (farm.get("boards") or {}).items():
        v = verdicts.get(name) or {}
        dev = v.get("deviation")
        rows.append([name, b.get("state"), b.get("points"), b.get("measured_now"),
                     None if dev is None else f"{dev:+.1%}", None if b.get("speed") is None else f"{b['speed']:.2f}x"])
    title = f"Boards of kind {farm['kind']}" if farm.get("kind") else "Boards"
    if check:
        title += (f" — overlap of {len(check.get('points') or [])} point(s): noise {check['noise']:.1%}, "
                  f"tolerance ±{check['tolerance']:.1%}")
    table(title, ["board", "state", "suite points", "last build", "vs others", "speed"], rows, right={2, 3, 4, 5})
    for name, b in (farm.get("boards") or {}).items():
        if b.get("state") in ("excluded", "failed", "unreachable") and b.get("why"):
            out.print(f"{name} {b['state'].upper()}: {b['why']}"
                      + (" — its points are not in the table (excluded from the fit)" if b["state"] == "excluded"
                         else ""), highlight=False)
    if check.get("refused"):
        out.print(f"the last build was refused: {check['refused']}", highlight=False)


def _pct(d: dict[str, Any] | None, key: str, scale: float = 1.0) -> str | None:
    v = (d or {}).get(key)
    return None if v is None else f"{scale * float(v):.1f}%"


def print_info(info: dict[str, Any], table_path: str) -> None:
    """A device model's sidecar (``DeviceModelInfo.to_dict()``) as tables and lines."""
    k = info["key"]
    state = {"complete": "complete", "budget": "stopped by the time budget (a rerun measures the rest)",
             "interrupted": "interrupted (a rerun resumes)"}.get(info["state"], info["state"])
    rows = [[kind, c["measured"], c["suite"], c["holdout"]] for kind, c in info["points_by_kind"].items()]
    where = f"board kind {k['device'][5:]}" if k["device"].startswith("kind:") else f"device {k['device']}"
    table(f"Device model: {k['target']} / {where} / {k['backend']} {k['backend_version']}, "
          f"{k['threads']} thread(s), {k['timing']} timing — suite v{info['suite_version']} ({info['suite_size']})",
          ["op kind", "measured", "in suite", "held out"], rows, right={1, 2, 3})
    b = info.get("busy") or {}
    busy = b.get("state", "unknown")
    if b.get("median") is not None:
        busy += f" (other processes kept median {b['median']:.1f}, max {b['max']:.1f} of {b['cpus']} CPUs busy)"
    for line in (f"state: {state}; {info['points_measured']}/{info['suite_points']} suite points measured",
                 f"build time: {info['build_seconds'] / 60:.1f} min over {info['builds']} build(s)",
                 f"busy state while measuring: {busy}",
                 f"table: {table_path}"):
        out.print(line, highlight=False)
    if info.get("farm"):
        print_farm(info["farm"])
    h = info.get("holdout") or {}
    if not h:
        out.print("holdout error: not computed (no fit yet)", highlight=False)
        return
    rows = []
    for fs in ("lattice", "smooth"):
        o = (h.get(fs) or {}).get("overall") or {}
        rows.append([fs, o.get("n"), _pct(o, "median_abs_pct"), _pct(o, "p95_abs_pct"),
                     _pct(o, "within_10pct", 100.0), (h.get(fs) or {}).get("unpredicted")])
    table(f"Held-out shapes: {h.get('holdout_points', 0)} point(s), fitted on the other {h.get('train_points', 0)}",
          ["model", "n", "median |error|", "p95 |error|", "within ±10%", "unpredicted"], rows,
          right={1, 2, 3, 4, 5})
