"""``edgeprune profile``: measure per-layer latency tables on a device, validate the predictor."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from edgeprune.cli.common import (DeviceArgs, ModelArgs, backend_option, device_options, json_option,
                                  keep_layer_option, model_options, out_option, seed_option, steady_gate_option,
                                  target_option, threads_option)
from edgeprune.cli.output import err, log, out, print_json, table
from edgeprune.latency.grid import DENSITIES


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
    out.print("measured = variant / unpruned model timed in the same rounds x the unpruned model at profiling "
              "(the latency relative to the unpruned model, which budgets use)", highlight=False)
    if rep.unsteady_series:
        out.print(f"note: {rep.unsteady_series} validation series were timed outside the device's steady state",
                  highlight=False)
    if rep.drift is not None:
        out.print(f"machine drift since profiling: full model {100 * (rep.drift - 1):+.1f}%; LUT errors against raw "
                  f"times: median {r['median_abs_pct_error']:.2f}%, within ±10%: {100 * r['within_10pct']:.0f}%; "
                  f"in the reference-layer unit: median {u['median_abs_pct_error']:.2f}%, "
                  f"within ±10%: {100 * u['within_10pct']:.0f}%", highlight=False)


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
                   "does not); wall = wall-clock; auto = kernel for onnxruntime and openvino, wall for tvm.")
@click.option("--calibration-variants", type=click.IntRange(0, 50), default=6, show_default=True, metavar="N",
              help="Pruned variants measured end to end to calibrate the remainder model.")
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
def profile_cmd(model: ModelArgs, target_name: str, backend: str, devices: DeviceArgs, threads: int | None,
                density: str, rounds: int, steady_gate: bool, timing: str, calibration_variants: int,
                keep_layers: tuple[str, ...], refresh: bool, pinned: Path | None, cache_dir: Path | None,
                do_validate: bool, n_variants: int, widths_mode: str, seed: int, out_path: Path | None,
                as_json: bool, do_plot: bool, plot_dir: Path | None, keep_bundles: Path | None) -> None:
    """Measure the latency lookup table of every prunable layer of a model on a device.

    \b
    Each layer is timed as a standalone graph with its real input shape, built and run
    with the target's backend and threads through the on-device runner, over a grid of
    channel counts dense enough to find the latency steps. Tables are cached per target,
    device, backend (+version) and thread count; a second run measures nothing.
    Examples:
      edgeprune profile --model zoo:resnet18 --target host
      edgeprune profile --model zoo:digits-cnn --validate --out lut.json --plot
    """
    from edgeprune.config.targets import get_target
    from edgeprune.flows.profile import profile_model, validate
    from edgeprune.latency.grid import GridSettings
    from edgeprune.latency.settings import ProfileSettings
    from edgeprune.latency.store import LUTStore
    from edgeprune.latency.variants import space_of

    target = get_target(target_name)
    device = devices.one()
    backend_name = target.backends[0] if backend == "auto" else backend
    loaded = model.load()
    settings = ProfileSettings(
        grid=GridSettings(lanes=target.fp32_lanes(), density=density), threads=threads, rounds=rounds,
        calibration_variants=calibration_variants, seed=seed, keep_bundles=keep_bundles, gate=steady_gate,
        timing=timing,
    )
    store = LUTStore(cache_dir) if cache_dir else LUTStore()
    space = space_of(loaded, tuple(keep_layers))
    for n in space.notes:
        log(f"note: {n}")
    progress = RichProgress()
    try:
        result = profile_model(loaded, target, device, backend_name, settings, store, space=space, refresh=refresh,
                               pinned=pinned, progress=progress, log=log)
    finally:
        progress.close()
    # with --json, stdout carries only the JSON document: the human lines go to stderr
    say = log if as_json else (lambda msg: out.print(msg, highlight=False))
    if not as_json:
        print_profile(result, target.name)
    payload: dict = {"profile": result.to_dict()}

    if do_plot:
        from edgeprune.latency.plot import plot_layers

        d = plot_dir or Path("out") / f"lut-{model.stem}-{target.name}-{backend_name}"
        paths = plot_layers(result, d, f" — {target.name}, {backend_name}")
        say(f"plots: {len(paths)} PNG(s) in {d}")

    if do_validate:
        progress = RichProgress()
        try:
            rep = validate(loaded, result, target, device, backend_name, n=n_variants, settings=settings,
                           widths_mode=widths_mode, progress=progress, log=log)
        finally:
            progress.close()
        if not as_json:
            print_validation(rep)
        payload = {**rep.to_dict(), "profile": result.to_dict()}

    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(out_path.name + f".{int(time.time())}.tmp")
        tmp.write_text(json.dumps(payload, indent=1, default=str) + "\n")
        tmp.replace(out_path)
        say(f"json: {out_path}")
    if as_json:
        print_json(payload)
