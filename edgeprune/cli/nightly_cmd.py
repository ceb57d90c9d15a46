"""``edgeprune nightly``: the whole matrix, judged against its baselines, with reports.

Exit codes are a contract for cron and CI: 0 no regression, 1 a regression (latency,
accuracy or parity), 2 the run itself failed (bad matrix file, a cell that could not be
measured, interrupted). Whatever completed is stored and reported in every case. The
run's own verdict is :attr:`NightlyResult.exit_code`; every *error* is mapped to 2 by
the CLI's one error handler (:class:`~edgeprune.cli.common.ContractCommand`).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from edgeprune.cli.common import ContractCommand, host_key_option, json_option, since_option
from edgeprune.cli.output import log, out, print_json, table
from edgeprune.cli.results_cmd import db_option
from edgeprune.errors import EXIT_FAILED  # the nightly exit contract (0 ok, 1 regression, 2 failed)


def _sigterm_to_interrupt(signum, frame):  # CI runners stop jobs with SIGTERM
    raise KeyboardInterrupt


def _busy(outcome) -> bool:
    """The cell's latency verdict was refused because the device was busy."""
    lat = outcome.latency
    return bool(lat is not None and lat.data.get("busy"))


@click.command("nightly", cls=ContractCommand, failure_exit_code=EXIT_FAILED)
@click.option("--matrix", "matrix", type=click.Path(dir_okay=False, path_type=Path), default=Path("nightly.yaml"),
              show_default=True, help="Matrix file: models x targets x devices x backends, bench and detection settings.")
@db_option
@click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("reports/nightly"),
              show_default=True, help="Where report.html, report.md, report.json and junit.xml are written.")
@click.option("--format", "formats", type=click.Choice(["html", "md", "json", "junit"]), multiple=True,
              help="Report formats to write (repeatable; default: all four).")
@since_option("30d", "History shown in the report.")
@click.option("--baseline", "pin", type=click.IntRange(1), default=None, metavar="RUN_ID",
              help="Compare with this run instead of the last good runs (overrides the matrix file).")
@click.option("--shard", metavar="I/N", default=None, help="Run only the I-th of N slices of the matrix (CI sharding).")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Scratch space for models and bundles (default: out/nightly).")
@click.option("--keep-work", is_flag=True, help="Keep the compiled bundles after the run.")
@json_option("Print the outcome as JSON on stdout.")
@host_key_option
@click.pass_context
def nightly_cmd(ctx: click.Context, matrix: Path, db: str | None, report_dir: Path, formats: tuple[str, ...],
                since: str, pin: int | None, shard: str | None, work_dir: Path | None, keep_work: bool,
                as_json: bool, accept_new_host_key: bool) -> None:
    """Run a benchmark matrix, detect regressions against the baseline, write reports.

    Each cell's artifact is kept beside the database; later nights time it interleaved
    with tonight's (paired), so a busy host cannot fake a regression.

    \b
    Exit code: 0 no regression · 1 regression found · 2 the run failed
    Example:   edgeprune nightly --matrix nightly.yaml --db results.sqlite --report-dir reports/nightly
    """
    from edgeprune.errors import ConfigError
    from edgeprune.flows.nightly import run_nightly
    from edgeprune.flows.preflight import check_run
    from edgeprune.results.store import default_db_path

    path = default_db_path(db)
    if path is None:
        raise ConfigError("nightly needs a results database (--db none is not allowed here)")
    check_run(dirs={"--report-dir": report_dir, "--work-dir": work_dir}, db=path)  # before the first cell
    old = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    try:
        result = run_nightly(matrix, path, report_dir, log, shard_spec=shard, pin=pin, work_dir=work_dir,
                             keep_work=keep_work, formats=tuple(formats) or ("html", "md", "json", "junit"),
                             since=since, command="edgeprune " + " ".join(sys.argv[1:]),
                             accept_new_host_key=accept_new_host_key)
    finally:
        signal.signal(signal.SIGTERM, old)

    if as_json:
        print_json({
            "run_id": result.run_id, "status": result.status, "exit_code": result.exit_code,
            "seconds": round(result.seconds, 1), "errors": result.errors,
            "reports": {k: str(v) for k, v in result.reports.items()},
            "cells": [{"cell": list(o.cell), "regression": o.regression, "failed": o.failed,
                       "verdicts": [v.to_dict() for v in o.verdicts]} for o in result.outcomes],
        })
    else:
        rows = []
        for o in sorted(result.outcomes, key=lambda o: (not o.regression, not o.failed, o.cell)):
            lat = o.latency
            m = next((x for x in o.measurements if x.ok), o.measurements[-1])
            flags = [f"{v.kind} {v.verdict}" for v in o.verdicts if v.regression]
            rows.append([
                "REGRESSION" if o.regression else "FAILED" if o.failed else "ok",
                f"{o.cell[0]} {o.cell[3]} {o.cell[1]}/{o.cell[2]}",
                f"{m.median_ms:.3f}" if m.median_ms else None,
                (lat.verdict + (f" {lat.ratio - 1:+.1%}" if lat.ratio else "")) if lat else None,
                f"{lat.ci_low - 1:+.1%}..{lat.ci_high - 1:+.1%}" if lat and lat.ci_low else None,
                (lat.data.get("method") if lat else None),  # paired with the baseline's artifact, or vs history
                len(o.measurements),
                f"{m.accuracy:.2f}%" if m.accuracy is not None else None,
                ", ".join(flags) or (m.error or "")[:70] or ("device busy" if _busy(o) else None),
            ])
        table(f"nightly run {result.run_id}: {result.status} in {result.seconds:.0f} s",
              ["", "cell", "median ms", "latency", "CI", "judged", "batches", "accuracy", "regression / error"], rows,
              right={2, 6})
        busy = [o for o in result.outcomes if _busy(o)]
        if busy:
            from edgeprune.results.paired import BUSY_HINT

            out.print(f"{len(busy)} cell(s) not judged, the device was too busy: {BUSY_HINT}", highlight=False)
        for k, p in result.reports.items():
            out.print(f"{k}: {p}", highlight=False)
        n = len(result.regressions)
        if result.status != "complete":
            out.print(f"run {result.status}: {'; '.join(result.errors)[:500] or 'see the report'}", highlight=False)
        out.print(f"{n} regression(s)" if n else "no regressions", highlight=False)
    ctx.exit(result.exit_code)
