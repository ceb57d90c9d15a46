"""Per-layer latency staircases of the *reported models' own layers*, read from the
measured latency tables.

Why the model's prune space is needed: a table holds the points of every model ever
profiled in its context (target, device, backend), keyed by layer shape, so the shapes
alone cannot say which points belong to which model. A table names the models profiled
into it (``models[fingerprint].name`` is the model spec, the same string the results
database keys cells by); their layers come from the prune space stored with that entry
(``models[fingerprint].space``), else, for tables written before spaces were stored, by
rebuilding the structure of a ``zoo:`` model (untrained, cheap, nothing downloaded).
Other models without a stored space get a note instead of a section.

The curves are the latency layer's own (:class:`~edgeprune.latency.lut.LatencyTable`
over the table's points), so the report draws exactly what the predictor uses: the
measured points with every round behind them, the curve, its noise tolerance, the
intervals that are estimated and the points that look like noise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from edgeprune.latency.grid import GridSettings
from edgeprune.latency.lut import LatencyTable, LayerTable
from edgeprune.latency.store import LUTStore, TableFile
from edgeprune.prune.space import PrunableLayer, PruneGroup, PruneSpace
from edgeprune.results.report.data import LayerStairs, StairAxis, StairSet

#: tables drawn per model (its backends on its devices), and layers per table (costliest first)
MAX_TABLES = 3
MAX_LAYERS = 12
#: fewer measured widths than this on an axis is not a staircase worth drawing
MIN_WIDTHS = 3
#: a point that sticks out is real, not noise, when this many of its rounds agree with it
CONFIRMING_ROUNDS = 3


def load_staircases(lut_dirs: Iterable[Path] | None, cells: Iterable[tuple[str, str, str, str]],
                    notes: list[str] | None = None) -> list[StairSet]:
    """Staircases of each model of ``cells`` ((model, target, device, backend) of the
    report's rows) from the tables under ``lut_dirs`` (default: the latency-table cache)
    measured on one of that model's (target, device) pairs. Backends the report measured
    come first, then the newest tables. ``notes`` collects why a model has none."""
    notes = notes if notes is not None else []
    wanted: dict[str, dict[tuple[str, str], set[str]]] = {}
    for model, target, device, backend in cells:
        wanted.setdefault(model, {}).setdefault((target, device), set()).add(backend)
    if not wanted:
        return []
    stores = [LUTStore(Path(p)) for p in lut_dirs] if lut_dirs is not None else [LUTStore()]
    tables = [t for s in stores for t in s.tables()]
    spaces: dict[str, PruneSpace | None] = {}
    out: list[StairSet] = []
    for model, where in sorted(wanted.items()):
        mine = [t for t in tables if (t.key.target, t.key.device) in where and _model_entries(t, model)]
        mine.sort(key=lambda t: t.updated, reverse=True)  # newest first, then (stable) measured backends first
        mine.sort(key=lambda t: t.key.backend not in where[(t.key.target, t.key.device)])
        for table in mine[:MAX_TABLES]:
            space = _space(table, model, spaces, notes)
            if space is None:
                continue
            stairs = table_stairs(table, space)
            if stairs:
                out.append(StairSet(model=model, context=context(table), updated=table.updated[:16].replace("T", " "),
                                    layers=stairs[:MAX_LAYERS], total_layers=len(stairs), lanes=_lanes(table)))
    return out


def _model_entries(table: TableFile, model: str) -> list[dict[str, Any]]:
    """The table's end-to-end entries of ``model``, newest first."""
    ms = [m for m in table.models.values() if isinstance(m, dict) and m.get("name") == model]
    return sorted(ms, key=lambda m: str((m.get("full") or {}).get("measured", "")), reverse=True)


def _space(table: TableFile, model: str, cache: dict[str, PruneSpace | None], notes: list[str]) -> PruneSpace | None:
    for m in _model_entries(table, model):
        if m.get("space"):
            try:
                return space_from_dict(m["space"])
            except (KeyError, TypeError, ValueError):
                continue
    if model not in cache:
        cache[model] = _rebuilt_space(model, notes)
    return cache[model]


def _rebuilt_space(model: str, notes: list[str]) -> PruneSpace | None:
    """The prune space of a zoo model, rebuilt from its architecture (no weights needed:
    only the layer shapes matter). Other specs are not loaded by a report."""
    if not model.startswith("zoo:"):
        notes.append(f"latency staircases of {model}: its latency table predates stored layer lists; "
                     f"profile it again (edgeprune profile --model {model}) to draw them")
        return None
    from edgeprune.errors import EdgepruneError
    from edgeprune.latency.variants import space_of
    from edgeprune.models.zoo import load_zoo

    try:
        return space_of(load_zoo(model[4:], trained=False, log=lambda m: None))
    except (EdgepruneError, RuntimeError, ValueError) as exc:
        notes.append(f"latency staircases of {model}: its layers could not be rebuilt ({exc})")
        return None


def space_from_dict(d: Mapping[str, Any]) -> PruneSpace:
    """The inverse of :meth:`PruneSpace.to_dict` (lists back to tuples; unknown keys of
    a newer writer are ignored)."""
    gf = {f.name for f in fields(PruneGroup)}
    lf = {f.name for f in fields(PrunableLayer)}

    def tup(v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v

    groups = [PruneGroup(**{k: tup(v) for k, v in g.items() if k in gf}) for g in d["groups"]]
    layers = [PrunableLayer(**{k: tup(v) for k, v in layer.items() if k in lf}) for layer in d["layers"]]
    return PruneSpace(groups={g.id: g for g in groups}, layers=layers)


def shape_text(layer: PrunableLayer) -> str:
    """A layer's shape as a reader says it: ``conv 3×3 32→64 @ 16×16``."""
    io = f"{layer.in_channels}→{layer.out_channels}"
    if layer.kind == "conv":
        k = f"{layer.kernel[0]}×{layer.kernel[1]}"
        extra = "".join([
            f" stride {layer.stride[0]}" if layer.stride[0] == layer.stride[1] != 1 else
            f" stride {layer.stride[0]}×{layer.stride[1]}" if layer.stride != (1, 1) else "",
            f" dilation {layer.dilation[0]}" if layer.dilation != (1, 1) else "",
        ])
        hw = f" @ {layer.input_hw[0]}×{layer.input_hw[1]}" if layer.input_hw else ""
        return f"{'depthwise ' if layer.depthwise else ''}conv {k}{extra} {io}{hw}"
    if layer.kind == "linear":
        return f"linear {io}" + (f" × {layer.rows} rows" if layer.rows > 1 else "")
    return f"{layer.kind} {io} × {layer.seq_len} steps" + (f", batch {layer.rows}" if layer.rows > 1 else "")


def context(table: TableFile) -> str:
    k = table.key
    timing = " · kernel time (no per-call overhead)" if k.timing == "kernel" else ""
    return f"{k.backend} {k.backend_version} on {k.target}/{k.device} · {k.threads} thread{'s' * (k.threads != 1)}{timing}"


def _lanes(table: TableFile) -> int:
    from edgeprune.config.targets import get_target
    from edgeprune.errors import EdgepruneError

    try:
        return get_target(table.key.target).fp32_lanes()
    except (EdgepruneError, OSError, ValueError):
        return 8


def table_stairs(table: TableFile, space: PruneSpace) -> list[LayerStairs]:
    """One :class:`LayerStairs` per layer family of ``space`` with measured axes, the
    costliest (at full width) first."""
    lt = LatencyTable(space, table.entries, GridSettings(lanes=_lanes(table)))
    out = []
    for t in lt.tables.values():
        axes = [a for a in (_axis(t, name, table) for name in t.axes) if a is not None]
        if not axes:
            continue
        f = t.family
        full = t.ms(f.n_in, f.n_out) if t.complete else None
        out.append(LayerStairs(layers=list(f.members), shape=shape_text(f.layer), mode=f.mode, full_ms=full, axes=axes))
    out.sort(key=lambda s: -(s.full_ms or 0.0))
    return out


def _axis(t: LayerTable, name: str, table: TableFile) -> StairAxis | None:
    st = t.axes[name]
    if len(st.xs) < MIN_WIDTHS:
        return None
    f = t.family
    point = {"out": lambda c: f.point(f.n_in, c), "in": lambda c: f.point(c, f.n_out),
             "both": lambda c: f.point(c, c)}[name]
    label = {"out": f"output channels (input {f.n_in})", "in": f"input channels (output {f.n_out})",
             "both": "channels (input = output)"}[name]
    rounds = []
    for c in st.xs:
        e = table.entries.get(point(c).signature)
        rounds.append(list(e.rounds) if e is not None else [])
    curve = list(range(st.xs[0], st.xs[-1] + 1))
    at = dict(zip(st.xs, zip(st.ys, rounds)))

    def agreed(c: int) -> bool:
        ms, rs = at[c]
        return ms > 0 and sum(abs(r / ms - 1) <= st.tol for r in rs) >= CONFIRMING_ROUNDS

    sticking = st.spikes()
    return StairAxis(label=label, full=f.n_out if name != "in" else f.n_in, widths=list(st.xs), ms=list(st.ys),
                     rounds=rounds, curve_widths=curve, curve_ms=[st.value(c) for c in curve], tol=st.tol,
                     estimated=st.unconfirmed(), spikes=[c for c in sticking if not agreed(c)],
                     confirmed=[c for c in sticking if agreed(c)], steps=st.steps())
