"""The Markdown report: a headline, the regressions and failed cells, the summary
table and how the verdicts were made, short enough for a pull request or a chat."""

from __future__ import annotations

from edgeprune.results.report.data import STATUS_EMOJI, STATUS_LABEL, ReportData
from edgeprune.results.report.text import fmt_accuracy, fmt_change, fmt_ms, fmt_parity


#: the headline's mark, by the worst verdict (the HTML banner's colours)
LEVEL_EMOJI = {"bad": "🔴", "warn": "🟠", "info": "⚪", "good": "✅"}


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def render_markdown(data: ReportData) -> str:
    run = data.run
    emoji = LEVEL_EMOJI[data.level]
    lines = [f"## {emoji} {data.title}: {data.headline}", ""]
    if run is not None:
        rev = f", git `{run.git_revision[:10]}`" if run.git_revision else ""
        lines.append(f"Run **#{run.id}** ({run.kind}, {run.status}) started {run.started[:19].replace('T', ' ')} UTC"
                     f"{rev}, edgeprune {run.edgeprune_version}.")
        lines.append("")
    if data.regressions:
        lines.append("**Regressions**")
        lines.append("")
        for r, v in data.regressions:
            what = v.detail.split(";")[0] if v.kind == "latency" else v.detail
            lines.append(f"- `{_md_escape(r.name)}` — {v.kind}: {_md_escape(what)}")
        lines.append("")
    failed = [r for r in data.rows if r.status == "failed"]
    if failed:
        lines.append("**Failed cells**")
        lines.append("")
        for r in failed:
            lines.append(f"- `{_md_escape(r.name)}`: {_md_escape((r.error or '')[:300])}")
        lines.append("")
    lines += [
        f"| | cell | median ms | change ({data.settings.get('statistic', 'p10')}) [99% CI] | verdict | accuracy | parity |",
        "|---|---|---:|---|---|---:|---|",
    ]
    for r in data.rows:
        lat = r.verdict("latency")
        lines.append(
            f"| {STATUS_EMOJI[r.status]} | `{_md_escape(r.model)}` {_md_escape(r.backend)} · {_md_escape(r.target)}/"
            f"{_md_escape(r.device)}{' · ' + _md_escape(r.variant) if r.variant else ''} | {fmt_ms(r.median_ms)} | "
            f"{fmt_change(lat)} | {STATUS_LABEL[r.status]}"
            f"{' (' + str(len(r.measurements)) + ' batches)' if len(r.measurements) > 1 else ''} | {fmt_accuracy(r)} | "
            f"{fmt_parity(r)} |"
        )
    s = data.settings
    lines += [
        "",
        f"<sub>Latency verdicts: ratio of {'medians' if s.get('statistic', 'p10') == 'median' else s['statistic'] + ' latencies'}"
        f" vs the last good runs of the same environment; "
        f"regression = ≥ +{s.get('min_effect', 0.03):.0%} with the {s.get('confidence', 0.99):.0%} interval above 1 "
        f"(between-run noise modelled) and Mann–Whitney p < {s.get('alpha', 0.01):g}. "
        f"Generated {data.generated[:16].replace('T', ' ')} UTC from `{data.db}`.</sub>",
        "",
    ]
    return "\n".join(lines)
