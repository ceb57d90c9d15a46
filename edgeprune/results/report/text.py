"""Short text forms of the report's numbers, shared by every renderer (so HTML,
Markdown and the terminal say the same thing the same way)."""

from __future__ import annotations

from typing import Any

from edgeprune.results.records import VerdictRecord
from edgeprune.results.report.data import CellRow


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.3f}" if v < 10 else f"{v:.2f}" if v < 100 else f"{v:.1f}"


def fmt_change(v: VerdictRecord | None) -> str:
    if v is None or v.ratio is None:
        return "–"
    s = f"{v.ratio - 1:+.1%}"
    if v.ci_low is not None and v.ci_high is not None:
        s += f" [{v.ci_low - 1:+.1%}, {v.ci_high - 1:+.1%}]"
    return s


def fmt_pct(v: VerdictRecord | None) -> str:
    return "–" if v is None or v.ratio is None else f"{v.ratio - 1:+.1%}"


def fmt_ci(v: VerdictRecord | None) -> str:
    if v is None or v.ci_low is None or v.ci_high is None:
        return ""
    return f"[{v.ci_low - 1:+.1%}, {v.ci_high - 1:+.1%}]"


def fmt_accuracy(r: CellRow) -> str:
    acc = r.m.accuracy
    if acc is None:
        return "–"
    v = r.verdict("accuracy")
    drop = (v.data or {}).get("drop") if v else None
    return f"{acc:.2f}%" + (f" ({-drop:+.2f})" if drop is not None and abs(drop) >= 0.005 else "")


def fmt_parity(r: CellRow) -> str:
    m = r.m
    if m.verified is None:
        return "–"
    d = f"{m.parity_max_diff:.1e}" if m.parity_max_diff is not None else ""
    return ("pass" if m.verified else "FAIL") + (f" ({d})" if d else "")


def env_lines(env: dict[str, Any]) -> list[tuple[str, str]]:
    libs = env.get("libraries") or {}
    items = [
        ("CPU", f"{env.get('cpu_model') or env.get('cpu') or '?'} · {env.get('cores') or '?'} cores"
                + (f" ({env['cores_usable']} usable)" if env.get("cores_usable") not in (None, env.get("cores")) else "")),
        ("governor", env.get("governor") or "not exposed"),
        ("OS", env.get("distro") or env.get("platform") or env.get("os") or "?"),
        ("kernel", env.get("kernel") or "?"),
        ("Python", env.get("python") or "?"),
        ("libraries", ", ".join(f"{k} {v}" for k, v in sorted(libs.items())) or "–"),
    ]
    return items
