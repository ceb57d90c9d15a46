"""``edgeprune profile``: measure per-layer latency tables on a device, validate the predictor.

A profile is a run in the results database (``--db``, kind ``profile``): begun
``running`` before the first point is timed, ended ``complete``, ``incomplete`` (a stop
signal: the points measured so far are in the table file, and the run says how many)
or ``failed``. What it measured (the table file and its key, points measured, reused
and completed, the validation errors) is the run's ``env["profile"]``, which
``edgeprune results list/show`` display.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edgeprune.cli.common import (DeviceArgs, ModelArgs, backend_option, device_options, json_option,
                                  keep_layer_option, model_options, out_option, profile_budget_option, seed_option,
                                  steady_gate_option, tables_option, target_option, threads_option)
from edgeprune.cli.output import err, log, note, out, print_json, table
from edgeprune.cli.results_cmd import record_option
from edgeprune.latency.grid import DENSITIES

if TYPE_CHECKING:
    from edgeprune.results.record import RecordOptions


class RichProgress:
    """A rich progress bar on stderr (a :class:`edgeprune.latency.settings.ProgressSink`):
    jobs of the current phase, layer tables done, points measured, elapsed and time left."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._p = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} jobs"),
            TextColumn("[dim]{task.fields[extra]}"), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
            console=err, transient=False, disable=not err.is_terminal,
        )
        self._task = None
        self._extra = ""
        self._started = False

    def phase(self, description: str, total: int) -> None:
        if not self._started:
            self._p.start()
            self._started = True
        if self._task is not None:
            self._p.update(self._task, completed=self._p.tasks[self._task].total)
        self._task = self._p.add_task(description, total=total, extra=self._extra)

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self._p.advance(self._task, n)

    def status(self, layers_done: int, layers_total: int, points_done: int, points_total: int) -> None:
        self._extra = f"layer tables {layers_done}/{layers_total}, points {points_done}/{points_total}"
        if self._task is not None:
            self._p.update(self._task, extra=self._extra)

    def close(self) -> None:
        if self._started:
            self._p.stop()
            self._started = False
            self._task = None


def _short(cands: list[int], n: int = 6) -> str:
    if len(cands) <= n:
        return ",".join(map(str, cands))
    return ",".join(map(str, cands[: n // 2])) + ",…," + ",".join(map(str, cands[-(n // 2):])) + f" ({len(cands)})"


def print_profile(result, target_name: str) -> None:
    rows = []
    for r in result.layer_rows():
        steps = "; ".join(f"{a}:{','.join(map(str, s[:6]))}{'…' if len(s) > 6 else ''}" for a, s in r["steps"].items() if s)
        cands = "; ".join(_short(c) for c in r["candidates"].values())
        chk = f"{100 * r['check_error']:.1f}%" if r["check_error"] is not None else None
        rows.append([r["layer"], r["kind"], r["shape"], r["mode"], f"{r['ms']:.4f}", r["points"], steps or None,
                     cands or None, chk])
    k = result.key
    table(f"Latency table: {result.model} on {target_name} / device {k.device} / {k.backend} {k.backend_version}, "
          f"{k.threads} thread(s), {k.timing} timing",
          ["layer", "kind", "shape", "varies", "ms (full)", "points", "steps at (fast side)", "candidates", "2-D check"],
          rows, right={4, 5, 8})
    p = result.predictor
    c = p.calibration
    out.print(f"table: {result.table_path}", highlight=False)
    if result.tables == "model":
        dm = result.device_model or {}
        out.print(f"layers: predicted by the device model ({dm.get('points', '?')} points of "
                  f"{len(dm.get('kinds', {}))} op kind(s)), corrected by this model's measured points", highlight=False)
    for n in result.notes:
        out.print(f"note: {n}", highlight=False)
    out.print(f"points: {result.points_used} used by this model ({len(result.table.families)} layer tables for "
              f"{len(p.space.layers)} layers), {result.points_measured} measured now, {result.points_reused} reused; "
              f"{result.seconds:.1f} s, {result.bundles} bundle run(s)", highlight=False)
    out.print(f"model: {c.full_ms:.3f} ms measured at full width, layer sum {c.full_sum_ms:.3f} ms "
              f"(remainder {c.remainder_ms:+.3f} ms)", highlight=False)
    out.print(f"predictor: {c.method} — {c.reason}", highlight=False)
    if result.unsteady_series:
        out.print(f"note: {result.unsteady_series} series were timed outside the device's steady state (the steady "
                  "gate's wait ran out); a point keeps them only when it has no steady one", highlight=False)


def print_validation(rep) -> None:
    rows = []
    for i, v in enumerate(rep.variants):
        rows.append([i, f"{v['macs_fraction']:.2f}", f"{v['measured_ms']:.3f}", f"{v['predicted_ms']:.3f}",
                     f"{v['error_pct']:+.1f}%", f"{v['flops_predicted_ms']:.3f}", f"{v['flops_error_pct']:+.1f}%"])
    table(f"Validation: {len(rep.variants)} random pruned variants ({rep.widths_mode} widths), measured end to end",
          ["#", "MACs", "measured ms", "predicted ms", "error", "FLOPs-pred ms", "FLOPs error"], rows,
          right={1, 2, 3, 4, 5, 6})
    s, f, r, u = rep.stats, rep.flops_stats, rep.raw_stats, rep.unit_stats
    out.print(f"LUT predictor ({rep.method}): median |error| {s['median_abs_pct_error']:.2f}%, "
              f"p95 {s['p95_abs_pct_error']:.2f}%, within ±10%: {100 * s['within_10pct']:.0f}%", highlight=False)
    out.print(f"FLOPs-proportional:  median |error| {f['median_abs_pct_error']:.2f}%, "
              f"p95 {f['p95_abs_pct_error']:.2f}%, within ±10%: {100 * f['within_10pct']:.0f}%", highlight=False)
    out.print("measured = variant / unpruned model timed right before and after it x the unpruned model at profiling "
              "(the latency relative to the unpruned model, which budgets use)", highlight=False)
    if rep.unsteady_series:
        out.print(f"note: {rep.unsteady_series} validation series were timed outside the device's steady state",
                  highlight=False)
    if rep.recalibrated_drift is not None:
        out.print(f"note: the full model ran {100 * (rep.recalibrated_drift - 1):+.1f}% off its profile, so its "
                  "end-to-end calibration was measured again before judging the predictor", highlight=False)
    if rep.drift is not None:
        out.print(f"machine drift since profiling: full model {100 * (rep.drift - 1):+.1f}%; LUT errors against raw "
                  f"times: median {r['median_abs_pct_error']:.2f}%, within ±10%: {100 * r['within_10pct']:.0f}%; "
                  f"in the reference-layer unit: median {u['median_abs_pct_error']:.2f}%, "
                  f"within ±10%: {100 * u['within_10pct']:.0f}%", highlight=False)


class ProfileRecording:
    """The profile run being recorded (None when ``--db none``): what it has learnt so far
    (``details``: its ``env["profile"]``), the stage it is in and its closing note."""

    def __init__(self, run, details: dict[str, Any]) -> None:
        self.run = run
        self.details = details
        self.stage = "profiling"
        self.note: str | None = None

    def profiled(self, result) -> None:
        k = result.key
        self.details |= {"backend_version": k.backend_version, "threads": k.threads, "timing": k.timing,
                         "table": str(result.table_path), "points_used": result.points_used,
                         "points_measured": result.points_measured, "points_reused": result.points_reused,
                         "points_completed": result.points_completed, "model_measured": result.model_measured,
                         "bundles": result.bundles, "seconds": round(result.seconds, 2),
                         "failures": len(result.failures)}
        self.note = result.note()  # said again only if a later stage fails or is stopped (details say it all)

    def validated(self, rep) -> None:
        self.details["validation"] = {"variants": len(rep.variants), "widths": rep.widths_mode,
                                      **{k: rep.stats.get(k) for k in ("median_abs_pct_error", "p95_abs_pct_error",
                                                                       "within_10pct")}}


@contextmanager
def profile_recording(to: "RecordOptions", label: str, details: dict[str, Any]) -> Iterator[ProfileRecording]:
    """Record ``edgeprune profile`` in the results database ``to`` names, from before the
    first point is timed: ``complete`` / ``failed`` / ``incomplete`` (Ctrl-C, SIGTERM,
    SIGHUP: with how many points the table kept). As for compile and bench, a database
    problem is a warning: the latency table, the result, is on disk."""
    from edgeprune.errors import EdgepruneError, Interrupted
    from edgeprune.latency.records import ProfileInterrupted
    from edgeprune.results.record import begin_recording, finish_recording
    from edgeprune.results.store import ResultsStore

    path = to.path
    run = None
    if path is not None:
        try:
            run = begin_recording(to, "profile", label=label)
            with ResultsStore(run.path) as store:  # a killed profile still says what it was measuring
                store.add_run_env(run.run_id, {"profile": details})
        except (EdgepruneError, OSError) as exc:
            log(f"warning: this profile is not recorded in {path}: {exc}")
            run = None
    rec = ProfileRecording(run, dict(details))

    def end(status: str, why: str | None) -> None:
        if rec.run is None:
            return
        try:
            with ResultsStore(rec.run.path) as store:
                store.add_run_env(rec.run.run_id, {"profile": rec.details})
            finish_recording(rec.run, None, status=status, note=why)
        except (EdgepruneError, OSError) as exc:
            log(f"warning: this profile's end is not recorded in {path}: {exc}")
            rec.run = None

    try:
        yield rec
    except ProfileInterrupted as stop:
        rec.details |= stop.to_dict()
        end("incomplete", stop.summary())
        raise
    except KeyboardInterrupt as exc:
        stop = Interrupted.of(exc)
        end("incomplete", f"interrupted ({stop}) while {rec.stage}" + (f"; {rec.note}" if rec.note else ""))
        raise
    except BaseException as exc:
        why = (str(exc).splitlines() or [type(exc).__name__])[0]
        end("failed", (why + (f"; {rec.note}" if rec.note else ""))[:2000])
        raise
    end("complete", None)
    if rec.run is not None:
        note(f"stored as run {rec.run.run_id} in {path} (see `edgeprune results show {rec.run.run_id}`)")


@click.command("profile")
@model_options
@target_option
@backend_option(auto="the target's preferred (first) backend.", help="Backend the layers are built and timed with.")
@device_options(help="Device the table is measured on (see `edgeprune devices`).")
@threads_option()
@click.option("--density", type=click.Choice(DENSITIES), default="normal", show_default=True,
              help="Grid density: coarse is faster, dense measures every width.")
@click.option("--rounds", type=click.IntRange(1, 9), default=3, show_default=True, metavar="N",
              help="Interleaved measurement rounds per point (median of round medians).")
@steady_gate_option(True, "Time every series in the device's steady state: the runner probes before and after "
                          "each one and waits or re-times through slow episodes (shared VMs, throttling boards).")
@click.option("--timing", type=click.Choice(["auto", "kernel", "wall"]), default="auto", show_default=True,
              help="What a layer point's time is: kernel = the layer's own work from the runtime's per-node "
                   "counters (no per-call overhead or layout conversions, which a standalone graph pays and a model "
                   "does not); wall = wall-clock; auto = kernel for onnxruntime, wall for openvino (its counters are running averages) and tvm.")
@click.option("--calibration-variants", type=click.IntRange(0, 50), default=6, show_default=True, metavar="N",
              help="Pruned variants measured end to end to calibrate the remainder model.")
@tables_option()
@profile_budget_option()
@keep_layer_option("Layer whose channels are never pruned (not tabled); repeatable.")
@click.option("--refresh", is_flag=True, help="Ignore cached measurements and measure everything again.")
@click.option("--lut", "pinned", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="FILE",
              help="Use exactly this table file (an error if it was measured in another context).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where tables live (default: $EDGEPRUNE_CACHE/lut or ~/.cache/edgeprune/lut).")
@click.option("--validate", "do_validate", is_flag=True,
              help="Also measure random pruned variants end to end and report prediction errors.")
@click.option("--variants", "n_variants", type=click.IntRange(1, 500), default=20, show_default=True, metavar="N",
              help="Number of random variants for --validate.")
@click.option("--widths", "widths_mode", type=click.Choice(["candidates", "any"]), default="candidates",
              show_default=True, help="Variant widths for --validate: snapped to pruning candidates, or arbitrary.")
@seed_option("Seed of the random variants.")
@out_option("Write the result as JSON to FILE (with --validate: median_abs_pct_error, p95_abs_pct_error, "
            "within_10pct, variants, plus the profile).", "out_path", file=True)
@json_option("Print the result as JSON on stdout (the same document as --out) instead of the tables.")
@click.option("--plot", "do_plot", is_flag=True, help="Write a PNG per layer of latency vs channel count.")
@click.option("--plot-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where --plot writes (default: out/lut-<model>-<target>-<backend>/).")
@click.option("--keep-bundles", type=click.Path(file_okay=False, path_type=Path), hidden=True,
              help="Keep the measurement bundles in this folder (debugging).")
@record_option
def profile_cmd(model: ModelArgs, target_name: str, backend: str, devices: DeviceArgs, threads: int | None,
                density: str, rounds: int, steady_gate: bool, timing: str, calibration_variants: int,
                tables: str, profile_budget: float, keep_layers: tuple[str, ...], refresh: bool, pinned: Path | None, cache_dir: Path | None,
                do_validate: bool, n_variants: int, widths_mode: str, seed: int, out_path: Path | None,
                as_json: bool, do_plot: bool, plot_dir: Path | None, keep_bundles: Path | None,
                record_to: "RecordOptions") -> None:
    """Measure the latency lookup table of every prunable layer of a model on a device.

    \b
    Each layer is timed as a standalone graph with its real input shape, built and run
    with the target's backend and threads through the on-device runner, over a grid of
    channel counts dense enough to find the latency steps. Tables are cached per target,
    device, backend (+version) and thread count; a second run measures nothing, and a
    run stopped with Ctrl-C keeps every point it measured (a rerun measures the rest).
    The run is recorded in the results database (--db).
    Examples:
      edgeprune profile --model zoo:resnet18 --target host
      edgeprune profile --model zoo:digits-cnn --validate --out lut.json --plot
    """
    from edgeprune.config.targets import get_target
    from edgeprune.flows.preflight import check_run  # before the model is loaded: outputs, backend, device
    from edgeprune.flows.profile import profile_model
    from edgeprune.latency.grid import GridSettings
    from edgeprune.latency.settings import ProfileSettings
    from edgeprune.latency.store import LUTStore
    from edgeprune.latency.variants import space_of

    target = get_target(target_name)
    device = devices.one()
    backend_name = target.backends[0] if backend == "auto" else backend
    check_run(target, [device], (backend_name,), files={"--out": out_path}, lut=cache_dir or True, log=log,
              db=record_to.path,  # recorded into: checked before any point is timed, like compile's
              dirs={"--plot-dir": (plot_dir or Path("out")) if do_plot else None, "--keep-bundles": keep_bundles})
    loaded = model.load()
    settings = ProfileSettings(
        grid=GridSettings(lanes=target.fp32_lanes(), density=density), threads=threads, rounds=rounds,
        calibration_variants=calibration_variants, seed=seed, keep_bundles=keep_bundles, gate=steady_gate,
        timing=timing, tables=tables, profile_budget_s=float(profile_budget),
    )
    store = LUTStore(cache_dir) if cache_dir else LUTStore()
    space = space_of(loaded, tuple(keep_layers))
    for n in space.notes:
        log(f"note: {n}")
    details = {"model": loaded.spec, "target": target.name, "device": device.name, "backend": backend_name}
    with profile_recording(record_to, loaded.spec, details) as rec:
        rec.stage = "measuring the latency table"
        progress = RichProgress()
        try:
            result = profile_model(loaded, target, device, backend_name, settings, store, space=space,
                                   refresh=refresh, pinned=pinned, progress=progress, log=log)
        finally:
            progress.close()
        rec.profiled(result)
        payload = _report(result, rec, loaded, model, target, device, backend_name, settings, as_json, do_plot,
                          plot_dir, do_validate, n_variants, widths_mode, out_path)
    if as_json:
        print_json(payload)


def _report(result, rec: ProfileRecording, loaded, model: ModelArgs, target, device, backend_name: str, settings,
            as_json: bool, do_plot: bool, plot_dir: Path | None, do_validate: bool, n_variants: int,
            widths_mode: str, out_path: Path | None) -> dict:
    """Print the table, then plot, validate and write ``--out`` as asked; returns the
    JSON document."""
    from edgeprune.flows.validate import validate

    # with --json, stdout carries only the JSON document: the human lines go to stderr
    say = log if as_json else (lambda msg: out.print(msg, highlight=False))
    if not as_json:
        print_profile(result, target.name)
    payload: dict = {"profile": result.to_dict()}

    if do_plot:
        from edgeprune.latency.plot import plot_layers

        rec.stage = "plotting"
        d = plot_dir or Path("out") / f"lut-{model.stem}-{target.name}-{backend_name}"
        paths = plot_layers(result, d, f" — {target.name}, {backend_name}")
        say(f"plots: {len(paths)} PNG(s) in {d}")

    if do_validate:
        rec.stage = "validating the predictor"
        progress = RichProgress()
        try:
            rep = validate(loaded, result, target, device, backend_name, n=n_variants, settings=settings,
                           widths_mode=widths_mode, progress=progress, log=log)
        finally:
            progress.close()
        rec.validated(rep)
        if not as_json:
            print_validation(rep)
        payload = {**rep.to_dict(), "profile": result.to_dict()}

    if out_path is not None:
        rec.stage = f"writing {out_path}"
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(out_path.name + f".{int(time.time())}.tmp")
        tmp.write_text(json.dumps(payload, indent=1, default=str) + "\n")
        tmp.replace(out_path)
        say(f"json: {out_path}")
    return payload
