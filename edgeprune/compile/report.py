"""``report.md`` for one compile run: what was built, how fast, how right, and why the
chosen backend was chosen. Plain Markdown so it pastes into a PR or chat."""

from __future__ import annotations

from pathlib import Path

from edgeprune.compile.hints import tag
from edgeprune.compile.summary import BackendResult, CompileSummary


def _fmt(v: float | None, spec: str = ".3f", suffix: str = "") -> str:
    return "–" if v is None else f"{v:{spec}}{suffix}"


def _parity(b: BackendResult) -> str:
    label = b.parity_label()
    if label is None:
        return "–"
    if label == "reference":  # ONNX Runtime on an ONNX-only model: the outputs the others are checked against
        return "reference"
    return ("pass" if b.verified else "**FAIL**") + f" ({_fmt(b.max_abs_diff, '.1e')})"


def _tags(b: BackendResult) -> str:
    return ", ".join(dict.fromkeys(tag(h) for h in b.hints)) or "–"


def hint_lines(s: CompileSummary) -> list[str]:
    """The hints as a Markdown list: each backend's, then the run's (empty: no hints)."""
    items = [f"- **{b.name}** — {h}" for b in s.backends for h in b.hints] + [f"- {h}" for h in s.hints]
    return ["", "**What to do**", ""] + items if items else []


def _status_lines(s: CompileSummary) -> list[str]:
    """A run that did not finish says so first: what stopped it, and that only the
    backends with figures below were measured."""
    if s.status == "complete":
        return []
    what = {"running": "**RUNNING** — still being measured (or its process was killed; the next "
                       "`edgeprune results` / `compile` recovers it)",
            "incomplete": f"**INCOMPLETE** — {s.stopped or 'stopped'}; "
                          + ("only the backends with figures were measured" if s.backends else "nothing was measured")}
    return [f"> status: {what.get(s.status, s.status)}", ""]


def render_markdown(s: CompileSummary) -> str:
    if s.status != "complete" and not s.backends:  # stopped before anything was built: nothing to tabulate
        return "\n".join([f"# edgeprune compile: `{s.model}` → `{s.target}`", "", *_status_lines(s),
                          f"- device: `{s.device}`", f"- {s.choice_reason}", ""])
    lines = [
        f"# edgeprune compile: `{s.model}` → `{s.target}`",
        "",
        *_status_lines(s),
        f"- device: `{s.device}`" + (" (**emulated: timings are meaningless, correctness is real**)" if s.emulated else ""),
        f"- chosen backend: **{s.backend or 'none'}** — {s.choice_reason}",
        f"- ONNX: opset {s.export.get('opset')}, parity vs PyTorch: "
        + (
            "n/a (model given as ONNX)"
            if s.export.get("parity_ok") is None
            else f"max abs diff {s.export['parity_max_abs_diff']:.2e} over {s.export['parity_samples']} samples "
            f"(tolerance {s.export['parity_tolerance']:.0e}: {'pass' if s.export['parity_ok'] else 'FAIL'})"
        ),
        f"- original: {s.original.params:,} params, {s.original.macs / 1e6:.1f} M MACs"
        + (f", accuracy {s.original.accuracy:.2f}% (PyTorch, held-out)" if s.original.accuracy is not None else ""),
        "",
        "| backend | median ms | round medians ms | p90 ms | p99 ms | CV | runs | speedup vs ORT | roofline | parity (max diff) | accuracy | build s | hint |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for b in s.backends:
        if b.latency_ms is None:
            lines.append(f"| {b.name} | – | – | – | – | – | – | – | – | {b.error or 'not run'} | – | "
                         f"{_fmt(b.build_seconds, '.1f')} | {_tags(b)} |")
            continue
        lat = b.latency_ms
        lines.append(
            f"| {b.name} | {lat.median:.3f} | {' / '.join(f'{m:.3f}' for m in b.round_medians_ms) or '–'} | "
            f"{lat.p90:.3f} | {lat.p99:.3f} | {lat.cv:.1%} | {b.runs} | "
            f"{_fmt(b.speedup_vs_reference, '.2f', '×')} | {_fmt(None if b.roofline_fraction is None else 100 * b.roofline_fraction, '.1f', '%')} | "
            f"{_parity(b)} | {_fmt(b.accuracy, '.2f', '%')} | {_fmt(b.build_seconds, '.1f')} | {_tags(b)} |"
        )
    lines += hint_lines(s)
    tol = next((b.tolerance for b in s.backends if b.tolerance is not None and b.precision == "fp32"), None)
    tol8 = next((b.tolerance for b in s.backends if b.tolerance is not None and b.precision == "int8"), None)
    lines += [
        "",
        f"Parity tolerance: |artifact − reference| ≤ {_fmt(tol, '.1e')} (1e-4 + 1e-3 × max |reference output|)"
        + (f"; INT8 rows ≤ {_fmt(tol8, '.1e')} (0.25 × max |reference output|) and accuracy-gated, see notes"
           if tol8 is not None else "") + ". "
        + ("`reference`: ONNX Runtime on the model given as ONNX computes the reference outputs, so its parity is "
           "0 by construction and checks nothing. " if any(b.parity_label() == "reference" for b in s.backends) else "")
        + "Roofline: achieved FLOP/s (2 × MACs / median) over the target's theoretical fp32 peak "
        + (f"({s.roofline_peak})" if s.roofline_peak else "(cores × GHz × FMA units × fp32 lanes × 2)")
        + ("; INT8 rows can exceed 100 %" if tol8 is not None else "") + ".",
    ]
    if s.pruned is not None:
        p, o = s.pruned, s.original
        lines += ["", "## Pruning", "", "| | params | M MACs | accuracy | median ms | predicted ms |", "|---|---:|---:|---:|---:|---:|"]
        for label, f in (("original", o), ("pruned", p)):
            lat = (f.latency_ms or {}).get("median")
            pred = f.extra.get("predicted_latency_ms")
            lines.append(
                f"| {label} | {f.params:,} | {f.macs / 1e6:.1f} | {_fmt(f.accuracy, '.2f', '%')} | {_fmt(lat)} | {_fmt(pred)} |"
            )
        kept = p.extra.get("channels")
        if kept:
            lines += ["", f"Strategy `{p.extra.get('strategy')}`, importance `{p.extra.get('importance')}`.", "",
                      "| layer | original | kept |", "|---|---:|---:|"]
            for layer, (orig, k) in kept.items():
                lines.append(f"| {layer} | {orig} | {k} |")
    if s.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in s.notes]
    env = s.env
    if env:
        lines += ["", "## Environment", ""] + [f"- {k}: {v}" for k, v in sorted(env.items())]
    return "\n".join(lines) + "\n"


def write_report(summary: CompileSummary, path: Path) -> Path:
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(render_markdown(summary))
    tmp.replace(path)
    return path
