"""One entry point for every format: :func:`render` a :class:`ReportData` as text, or
:func:`write_reports` several formats into a folder (each file replaced atomically, so
a CI job or a web server never reads half a report)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from edgeprune.errors import ConfigError
from edgeprune.results.report.data import ReportData

FORMATS = ("html", "md", "json", "junit")
FILENAMES = {"html": "report.html", "md": "report.md", "json": "report.json", "junit": "junit.xml"}


def _renderer(fmt: str) -> Callable[[ReportData], str]:
    # imported on use: the HTML renderer pulls in jinja2 and matplotlib
    if fmt == "html":
        from edgeprune.results.report.render_html import render_html

        return render_html
    if fmt == "md":
        from edgeprune.results.report.render_md import render_markdown

        return render_markdown
    if fmt in ("json", "junit"):
        from edgeprune.results.report import render_json as rj

        return rj.render_json if fmt == "json" else rj.render_junit
    raise ConfigError(f"unknown report format '{fmt}'. Choose from: {', '.join(FORMATS)}")


def render(data: ReportData, fmt: str) -> str:
    return _renderer(fmt)(data)


def write_reports(data: ReportData, out_dir: Path, formats: Iterable[str] = FORMATS) -> dict[str, Path]:
    """Write each format to ``out_dir`` (atomically); returns format -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for fmt in formats:
        text = render(data, fmt)
        path = out_dir / FILENAMES[fmt]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        paths[fmt] = path
    return paths
