"""Reports rendered from the results database: HTML, Markdown, JSON and JUnit XML.

    data.py         ReportData: what a report shows (cells, their status, history, runs)
    gather.py       gather(store, ...) -> ReportData; Pareto points of pruned variants
    staircase.py    the reported models' own layer staircases, read through the latency-table store
    figure.py       matplotlib set-up, axis style, palette, PNG encoding shared by the figures
    timeaxis.py     time ticks fitted to a history's span (one run: one tick)
    plots.py        latency over time (a panel per backend) and the Pareto front (base64 PNG)
    stair_plots.py  per-layer staircases with their rounds, curve and noise band
    text.py         number formats shared by every renderer
    render_html.py  render_md.py  render_json.py (JSON + JUnit)
    render.py       render(data, fmt), write_reports(data, folder, formats)

Typical use::

    with ResultsStore("results.sqlite") as store:
        write_reports(gather(store, since="30d"), Path("reports"))
"""

from edgeprune.results.report.data import ReportData
from edgeprune.results.report.gather import gather, pareto_front
from edgeprune.results.report.render import FILENAMES, FORMATS, render, write_reports
from edgeprune.results.report.text import fmt_ms

__all__ = ["FILENAMES", "FORMATS", "ReportData", "fmt_ms", "gather", "pareto_front", "render", "write_reports"]
