"""``edgeprune report``: render the results database as HTML, Markdown, JSON or JUnit XML."""

from __future__ import annotations

from pathlib import Path

import click

from edgeprune.cli.common import out_option, since_option
from edgeprune.cli.output import note, out
from edgeprune.cli.results_cmd import _open, db_option


def default_run(store) -> int | None:
    """The run a report is about when none is named: the newest nightly run, else the
    newest compile or bench run (a ``profile`` run has no result rows: what it measured is
    its latency table, which the report draws from the table files), else the newest."""
    from edgeprune.results.store import RUN_KINDS

    for kinds in (("nightly",), tuple(k for k in RUN_KINDS if k not in ("nightly", "profile"))):
        runs = [r for k in kinds if (r := store.latest_run(k)) is not None]
        if runs:
            return max(runs, key=lambda r: (r.started, r.id)).id
    latest = store.latest_run()
    return latest.id if latest is not None else None


@click.command("report")
@db_option
@since_option("30d", "History to include.")
@click.option("--format", "fmt", type=click.Choice(["html", "md", "json", "junit"]), default="html", show_default=True,
              help="html (with plots), md (for a PR or chat), json, or junit (XML for CI).")
@click.option("--run", "run_id", type=click.IntRange(1), default=None, metavar="RUN_ID",
              help="The run to report on (default: the newest nightly run, else the newest compile or bench "
                   "run, else the newest run).")
@out_option("Output file, or - for stdout. Default: reports/report.html for html, stdout for the others.",
            "out_path", file=True, allow_dash=True)
@click.option("--lut-dir", "lut_dirs", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Latency-table folders to plot staircases from (default: the LUT cache, if any).")
@click.option("--title", default=None, metavar="TEXT", help="Report title.")
def report_cmd(db, since, fmt, run_id, out_path, lut_dirs, title) -> None:
    """Write a report of a run and the history of its cells.

    \b
    edgeprune report                         # reports/report.html
    edgeprune report --format md             # Markdown for a PR or chat, on stdout
    edgeprune report --format junit -o junit.xml
    """
    from edgeprune.flows.preflight import make_out_dir
    from edgeprune.results.report import gather, render

    with _open(db) as store:
        run_id = run_id if run_id is not None else default_run(store)
        data = gather(store, run_id=run_id, since=since, title=title, lut_dirs=list(lut_dirs) or None)
        text = render(data, fmt)
    if out_path is None and fmt == "html":
        out_path = Path("reports") / "report.html"
    if out_path is None or str(out_path) == "-":
        click.echo(text, nl=not text.endswith("\n"))
        return
    make_out_dir(out_path.parent, "--out")  # one line and exit 2, not a bare PermissionError
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out_path)
    note(data.headline)
    out.print(str(out_path), highlight=False)
