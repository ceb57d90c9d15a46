"""``edgeprune tune``: MetaSchedule tuning of a model's TVM kernels for a target."""

from __future__ import annotations

from pathlib import Path

import click

from edgeprune.cli.common import (DeviceArgs, Duration, ModelArgs, OutPath, device_options, json_option,
                                  model_options, out_option, target_option, threads_option)
from edgeprune.cli.output import log, out, print_json, table


def print_report(report, as_json: bool) -> None:
    from edgeprune.durations import format_duration

    if as_json:
        print_json(report.to_dict())
        return
    rows = []
    for t in report.tasks:
        trials = f"{t.trials_before} -> {t.trials_after}" if t.trials_after != t.trials_before else str(t.trials_after)
        rate = t.flop / t.best_us / 1e3 if t.flop and t.best_us else None
        lag = None if t.lag_us is None else ("untuned" if t.lag_us == float("inf") else f"{t.lag_us:.0f}")
        rows.append([t.name, t.weight, f"{t.flop / 1e6:.2f}" if t.flop else None, trials,
                     f"{t.best_us:.1f}" if t.best_us is not None else None,
                     f"{rate:.1f}" if rate is not None else None, lag])
    table(f"{report.model} on {report.target}: {len(report.tasks)} kernels", ["kernel", "calls", "MFLOP", "trials",
          "best us", "GFLOP/s", "lag us"], rows, right={1, 2, 3, 4, 5, 6})
    if report.stopped_by not in ("status", "already-tuned"):
        out.print(f"tuned {report.trials_run} trials in {format_duration(report.seconds)} "
                  f"(stopped by {report.stopped_by}, measured {report.measured_on}); "
                  f"{report.trials_total} trials recorded for this model", highlight=False)
    est_b, est_a = report.estimated_ms_before, report.estimated_ms_after
    if est_a is not None:
        before = f"{est_b:.3f} ms -> " if est_b is not None and est_b != est_a else ""
        out.print(f"MetaSchedule's estimate of one inference (sum of best kernel times): {before}{est_a:.3f} ms",
                  highlight=False)
    lags = [t.lag_us for t in report.tasks if t.lag_us is not None and t.lag_us != float("inf")]
    if lags and sum(lags) > 0:
        out.print(f"lag: {sum(lags) / 1e3:.3f} ms per inference above the model's best kernel FLOP rate "
                  "(--focus K tunes the K kernels with the most)", highlight=False)
    untuned = [t.name for t in report.tasks if t.trials_after == 0]
    if untuned:
        out.print(f"{len(untuned)} kernel(s) have no records yet (they build untuned): raise --trials", highlight=False)
    for n in report.notes:
        out.print(f"note: {n}", highlight=False)
    if report.trials_total:
        out.print(f"records: {report.database}  (edgeprune compile --target {report.target} applies them "
                  "automatically)", highlight=False)
    else:
        out.print(f"records: none yet for this model in {report.database}", highlight=False)


@click.command("tune")
@model_options
@target_option
@click.option("--trials", type=click.IntRange(1), metavar="N",
              help="Total trials for this model (records already in the database count, so a rerun resumes). "
                   "Default without --time-budget: 64 per kernel. Roughly 2-5 s per trial on a 2-core host.")
@click.option("--time-budget", "time_budget", type=Duration(), metavar="30m",
              help="Stop this session after about this long (checked after every measured batch).")
@click.option("--trials-per-task", type=click.IntRange(1), metavar="N", help="Cap per kernel (default: none).")
@click.option("--focus", type=click.IntRange(1), metavar="K",
              help="Tune only the K kernels with the most lag: time per inference above the model's best kernel "
                   "FLOP rate (the 'lag us' column of --status). For later sessions, once every kernel has records.")
@device_options(help="Device to measure on: local (this host's own targets), or an SSH device: a TVM RPC server "
                     "is started on the board and reached through the SSH session (the board needs apache-tvm).")
@click.option("--rpc-tracker", metavar="HOST:PORT", help="TVM RPC tracker of the boards that time candidates.")
@click.option("--rpc-key", metavar="KEY", help="Board key at the tracker (e.g. rpi4).")
@threads_option("Threads while timing candidates (default: the target's cores).")
@click.option("--tuning-dir", "tuning_dir", type=OutPath(file_okay=False, path_type=Path),
              help="Tuning database folder (default: the target's folder under $EDGEPRUNE_TUNING_DIR or "
                   "$EDGEPRUNE_CACHE/tuning).")
@click.option("--status", is_flag=True, help="Only show the kernels and what the database already has; no tuning.")
@out_option("Where the exported model.onnx goes (default: out/<model>-<target>-tune).", "out_dir")
@json_option("Print the tuning report as JSON.")
@click.option("--verbose", is_flag=True, help="Show MetaSchedule's own progress tables.")
def tune_cmd(model: ModelArgs, target_name: str, trials: int | None, time_budget: float | None,
             trials_per_task: int | None, focus: int | None, devices: DeviceArgs, rpc_tracker: str | None,
             rpc_key: str | None, threads: int | None, tuning_dir: Path | None, status: bool, out_dir: Path | None,
             as_json: bool, verbose: bool) -> None:
    """Tune a model's TVM kernels for a target with MetaSchedule; compile reuses the records.

    \b
    Records go to a per-target database and are keyed by kernel shape, so a second
    compile never tunes again and a pruned model reuses every same-shape layer.
    Interrupt at any time: measured batches are kept; rerun to resume.
    Examples:
      edgeprune tune --model zoo:digits-cnn --target host --trials 300
      edgeprune tune --model zoo:resnet18 --target host --time-budget 2h
      edgeprune tune --model zoo:resnet18 --target host --time-budget 30m --focus 6   # the lagging kernels
      edgeprune tune --model zoo:resnet18 --target rpi4 --device pi-lab-1      # SSH device
      edgeprune tune --model zoo:resnet18 --target rpi4 --rpc-tracker 10.0.0.2:9190 --rpc-key rpi4
    """
    from edgeprune.compile.backends.tvm import RpcSettings, TuneSettings, TuningDatabase
    from edgeprune.config.targets import get_target
    from edgeprune.flows.preflight import check_run, check_tracker
    from edgeprune.flows.tune import TuneOptions, tune

    if bool(rpc_tracker) != bool(rpc_key):
        raise click.UsageError("--rpc-tracker and --rpc-key go together")
    target = get_target(target_name)
    rpc = RpcSettings(rpc_tracker, rpc_key) if rpc_tracker else None
    settings = TuneSettings(trials=trials, time_budget_s=time_budget, trials_per_task=trials_per_task,
                            focus=focus, threads=threads, rpc=rpc, verbose=verbose)
    options = TuneOptions(target=target, out_dir=out_dir or Path("out") / f"{model.stem}-{target.name}-tune",
                          device=devices.one(), settings=settings, db_dir=tuning_dir, status_only=status)
    # before the model is loaded and exported: where it writes, TVM here, the board or tracker it times on
    records = None if status else (tuning_dir or TuningDatabase.for_target(target).path)
    check_run(target, [options.device] if options.over_ssh else [], ("tvm",),
              dirs={"--out": options.out_dir, "--tuning-dir" if tuning_dir else "the tuning records folder": records},
              log=log)
    if not status:
        check_tracker(rpc_tracker)
    report = tune(model.load, options, log=log)
    print_report(report, as_json)
    if report.stop_signal:  # stopped cleanly at a batch boundary: every measured batch is recorded
        from edgeprune.errors import Interrupted

        raise Interrupted(report.stop_signal, f"{report.trials_run} trials recorded; rerun to resume")
