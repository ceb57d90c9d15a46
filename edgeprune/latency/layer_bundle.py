"""A deploy bundle of many small graphs: export each one, build it with the backend, and
lay out its series as :class:`~edgeprune.bench.bundle.BenchJob` s in interleaved rounds.

A :class:`Job` is one thing to time (a layer at one width, the drift reference, or a
whole model variant, :mod:`~edgeprune.latency.variants`). :func:`build_bundle` turns a
chunk of them into a :class:`LayerBundle` that :func:`edgeprune.bench.measure.measure_on`
runs: one runner process for the whole chunk.

Interleaving: round 1 of every point in a random order, then round 2, ..., so a burst
of load from another process hits many points a little instead of one point a lot.
Every round also times :data:`REFERENCE_LAYER` ``REFERENCE_PER_ROUND`` times, spread
through it (first and last job included), so each point has a reference timed within a
few jobs of it (:func:`edgeprune.latency.series.local_references`).

Whole models compared with the model they were cut from (calibration, validation, the
pruned model's check) name that model as the bundle's **anchor**: its series is timed
right before every variant's (and after the last), so each variant's series has the
anchor's within a second on both sides and its *ratio* to the anchor is taken in one
machine state. Why: this host's slow state (1.1-1.7x, episodes of seconds, 28-60 % of the
time depending on the day) makes two models timed tens of seconds apart disagree by more
than the predictor's whole error budget; measured: the full model timed 12.6 % slow in the
first chunk of a 21-model validation bundle, so every variant read ~12 % high.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeprune.bench.measure import Bundle
from edgeprune.bench.settings import BenchSettings
from edgeprune.latency.layers import input_shapes, make_inputs, write_layer_onnx
from edgeprune.latency.lut import Point
from edgeprune.prune.space import PrunableLayer

if TYPE_CHECKING:
    from edgeprune.compile.backends.base import Backend
    from edgeprune.config.targets import Target


@dataclass
class Job:
    """One thing to time: an ONNX graph writer, its inputs and a cost estimate."""

    key: str
    write_onnx: Callable[[Path], Any]
    inputs: Callable[[], list[np.ndarray]]
    input_key: str  # jobs with the same key share one inputs file
    macs: float = 0.0
    timing: str = "wall"  # BenchJob.timing


#: A fixed mid-size conv timed in every bundle, interleaved with the points: the unit in
#: which table entries are stored. Load from other processes slows it like the points
#: around it, so dividing by it removes slow drift between bundles and between runs.
REFERENCE_LAYER = PrunableLayer("reference", "conv", 64, 64, kernel=(3, 3), padding=(1, 1), input_hw=(28, 28))
REFERENCE_KEY = "__reference__"
#: reference series per round, spread evenly through it (first and last job included): the
#: bundle's reference is the fast state of rounds x this many short series, so one series
#: caught in a slow moment cannot rescale a whole bundle, and every point has a reference
#: timed within a few jobs of it (``Timing.ref_rounds``)
REFERENCE_PER_ROUND = 4


def reference_job(timing: str = "wall") -> Job:
    """The drift reference, timed like the table's layer points (``timing``) in every
    bundle, whole-model bundles included: its ratios must compare like with like."""
    L = REFERENCE_LAYER
    return Job(key=REFERENCE_KEY, write_onnx=lambda dst: write_layer_onnx(L, 64, 64, dst, seed=12345),
               inputs=lambda: make_inputs(L, 64), input_key=str(input_shapes(L, 64)), macs=float(L.macs(64, 64)),
               timing=timing)


def layer_job(point: Point, layer: PrunableLayer, timing: str) -> Job:
    """``layer`` standalone at ``point``'s widths, keyed by the point's signature."""
    ci, co = point.cin, point.cout
    return Job(key=point.signature, write_onnx=lambda dst: write_layer_onnx(layer, ci, co, dst),
               inputs=lambda: make_inputs(layer, ci), input_key=str(input_shapes(layer, ci)),
               macs=float(layer.macs(ci, co)), timing=timing)


@dataclass
class LayerBundle:
    """A built bundle and how its job ids map back to :class:`Job` s: ``<index>.r<round>``
    is a point's series in that round, ``<index>.r<round>.<slot>`` one of the reference's."""

    bundle: Bundle
    keys: list[str] = field(default_factory=list)  # index -> Job.key, of the jobs that built
    jobs: dict[str, Job] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # Job.key -> why it could not be built
    anchor: str | None = None  # the key every other job is timed next to (build_bundle)

    def key_of(self, job_id: str) -> str:
        return self.keys[int(job_id.split(".r")[0])]


def build_bundle(root: Path, chunk: list[Job], backend: "Backend", target: "Target", threads: int, rounds: int,
                 series: BenchSettings, reference_series: BenchSettings, gate: dict[str, Any] | None,
                 seed: str, anchor: str | None = None) -> LayerBundle:
    """Export and build every job of ``chunk`` into the bundle folder ``root`` and lay out
    ``rounds`` interleaved rounds of series (``series``; the reference's short series:
    ``reference_series``). A job that fails to build is recorded and left out: one failed
    point must not stop the table. ``seed`` fixes the shuffle of the rounds. ``anchor``
    (a key of ``chunk``) is timed before every other job and after the last (ids
    ``<index>.r<round>.a<n>``; module docstring)."""
    from edgeprune.bench.io import save_arrays

    lb = LayerBundle(Bundle(root), jobs={j.key: j for j in chunk})
    built: dict[str, tuple[str, dict[str, Any], str]] = {}  # key -> (artifact rel, options, inputs rel)
    inputs_written: dict[str, str] = {}
    for i, j in enumerate(chunk):
        try:
            src = root / "src" / f"{i}.onnx"
            src.parent.mkdir(parents=True, exist_ok=True)
            j.write_onnx(src)
            art = backend.build(src, target, root / "a" / str(i), threads=threads)
            src.unlink(missing_ok=True)
        except Exception as exc:  # noqa: BLE001 - one failed point must not stop the table
            lb.errors[j.key] = f"build failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            continue
        if j.input_key not in inputs_written:
            rel = f"in/{len(inputs_written)}.npz"
            save_arrays(root / rel, "in", j.inputs())
            inputs_written[j.input_key] = rel
        built[j.key] = (str(art.path.relative_to(root)), dict(art.options), inputs_written[j.input_key])

    lb.keys = list(built)
    index = {k: i for i, k in enumerate(lb.keys)}
    anchor = lb.anchor = anchor if anchor in built else None
    points = [k for k in lb.keys if k not in (REFERENCE_KEY, anchor)]
    has_ref = REFERENCE_KEY in built and bool(points)

    def add(k: str, job_id: str, timing: BenchSettings) -> None:
        art, opts, inp = built[k]
        lb.bundle.jobs.append(timing.job(id=job_id, backend=backend.name, artifact=art, inputs=inp, threads=threads,
                                         options=opts, gate=gate, timing=lb.jobs[k].timing))

    rng = random.Random(seed)
    for r in range(rounds):
        order = points[:]
        rng.shuffle(order)  # interleave: a load burst hits many points a little
        slots = sorted({round(i * len(order) / (REFERENCE_PER_ROUND - 1))
                        for i in range(REFERENCE_PER_ROUND)}) if has_ref else []
        for pos in range(len(order) + 1):
            if pos in slots:  # a short series
                add(REFERENCE_KEY, f"{index[REFERENCE_KEY]}.r{r}.{slots.index(pos)}", reference_series)
            if anchor is not None and (pos < len(order) or order):  # before each job, and after the last
                add(anchor, f"{index[anchor]}.r{r}.a{pos}", series)
            if pos < len(order):
                add(order[pos], f"{index[order[pos]]}.r{r}", series)
        if not points and anchor is not None:  # only the anchor (and the reference) was asked for
            add(anchor, f"{index[anchor]}.r{r}.a0", series)
        elif not points and REFERENCE_KEY in built:  # only the reference was asked for
            add(REFERENCE_KEY, f"{index[REFERENCE_KEY]}.r{r}", series)
    return lb


def shorter(series: BenchSettings, than: BenchSettings) -> BenchSettings:
    """``series`` cut to at most ``than``'s runs and time (the reference's short series)."""
    return dataclasses.replace(series, min_runs=min(series.min_runs, than.min_runs),
                               min_time_s=min(series.min_time_s, than.min_time_s))
