"""The HTML report: one self-contained file (CSS inline, plots as base64 PNGs) with a
status banner coloured by the worst verdict, the summary table, latency over time per
device and model (one panel per backend, each on its own scale) with regressions
marked, the accuracy-vs-latency Pareto front of pruned variants (when there are any),
the per-layer latency staircases of the reported models' own layers (when their
latency tables exist), run history and the detection method."""

from __future__ import annotations

from edgeprune import __version__
from edgeprune.paths import package_data
from edgeprune.results.records import parse_time
from edgeprune.results.report.data import STATUS_LABEL, ReportData
from edgeprune.results.report.plots import latency_figures, pareto_figures
from edgeprune.results.report.stair_plots import stair_figures
from edgeprune.results.report.text import env_lines, fmt_accuracy, fmt_change, fmt_ci, fmt_ms, fmt_parity, fmt_pct


def render_html(data: ReportData) -> str:
    import jinja2

    templates = package_data("results", "templates")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates)),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    env.filters.update(ms=fmt_ms, change=fmt_change, pct=fmt_pct, ci=fmt_ci, accuracy=fmt_accuracy, parity=fmt_parity)
    run = data.run
    return env.get_template("report.html.j2").render(
        d=data, run=run, rows=data.rows, counts=data.counts, label=STATUS_LABEL,
        latency_figs=latency_figures(data), pareto_figs=pareto_figures(data), stair_sets=stair_figures(data.staircases),
        env=env_lines(run.env) if run else [], version=__version__,
        generated=parse_time(data.generated).strftime("%Y-%m-%d %H:%M UTC"),
        started=parse_time(run.started).strftime("%Y-%m-%d %H:%M:%S UTC") if run else "",
        duration=(f"{run.duration_s:.0f} s" if run and run.duration_s is not None else "still running" if run else ""),
        since=parse_time(data.since).strftime("%Y-%m-%d") if data.since else "the beginning",
    )
