"""``compile_model``: the library function behind ``edgeprune compile`` and ``bench``.

One way through: prune (optional; it only *adds a variant*: the pruned model, with the
original measured beside it) -> :func:`~edgeprune.compile.prepare.prepare` (export,
build, jobs, tolerance, once per variant) -> :func:`~edgeprune.bench.measure.measure`
(interleaved rounds on the device) -> :func:`~edgeprune.compile.summarize.summarize`
(backend results, the choice and why) -> ``summary.json`` and ``report.md``.

A backend that fails to build or run is recorded with its error and the others carry
on. An accuracy-gate failure of pruning does not stop the flow: the pruned model is
still built and measured, the summary records the failure, and the CLI exits non-zero
afterwards.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgeprune.bench.device_lock import check_free
from edgeprune.bench.measure import MeasureInterrupted, Measurements, measure
from edgeprune.bench.settings import BenchSettings
from edgeprune.compile.prepare import ORIGINAL, PrepareOptions, Prepared, Variant, prepare
from edgeprune.compile.report import write_report
from edgeprune.compile.summarize import summarize
from edgeprune.compile.summary import CompileSummary, ModelFigures
from edgeprune.config.devices import Device
from edgeprune.config.targets import Target
from edgeprune.errors import Interrupted
from edgeprune.flows.preflight import check_build, make_out_dir
from edgeprune.models.base import LoadedModel
from edgeprune.prune.options import PruneOptions, PruneResult

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class CompileOptions:
    backends: tuple[str, ...] = ()  # empty = every backend the target lists ("auto")
    bench: BenchSettings = field(default_factory=BenchSettings)
    parity_atol: float = 1e-4
    parity_rtol: float = 1e-3
    accuracy_tolerance: float = 1.0  # points an artifact may lose vs the reference and still be chosen
    prebuilt: tuple[tuple[str, str], ...] = ()  # (backend, artifact path): time these instead of building
    prune: PruneOptions | None = None  # prune first; original and pruned are measured side by side
    quantize: str | None = None  # "int8": also build INT8 (QDQ) artifacts of the exported model, timed beside fp32
    calibration_samples: int = 256  # real training samples that calibrate INT8 activation ranges
    precisions: tuple[str, ...] = ()  # "bf16" / "fp16": also build those artifacts (compile.precision)

    def prepare_options(self) -> PrepareOptions:
        return PrepareOptions(backends=self.backends, bench=self.bench, parity_atol=self.parity_atol,
                              parity_rtol=self.parity_rtol, prebuilt=self.prebuilt, quantize=self.quantize,
                              calibration_samples=self.calibration_samples, precisions=self.precisions)


@dataclass
class Pruned:
    """What the pruning step of ``compile`` produced."""

    result: PruneResult
    original: Variant
    gate_error: str | None = None
    saved: dict[str, str] = field(default_factory=dict)


def prune_variants(model: LoadedModel, target: Target, device: Device, out_dir: Path, options: PruneOptions,
                   log: Log) -> tuple[Variant, Pruned]:
    """Export the original (``original.onnx``, first: a model that cannot be exported
    fails before the long work), prune, and save ``pruned.pt`` (TorchScript)."""
    from edgeprune.compile.export import export_onnx
    from edgeprune.flows.prune import prune_model
    from edgeprune.prune.options import PruneGateError, pruned_loaded_model
    from edgeprune.prune.save import save_pruned

    log(f"exporting the original {model.name} to ONNX ...")
    exp = export_onnx(model, out_dir / "original.onnx")
    gate_error = None
    try:
        result = prune_model(model, target, device, options, log=log)
    except PruneGateError as exc:
        result, gate_error = exc.result, str(exc)
        log(f"warning: {exc} — building and measuring it anyway")
    original = Variant(model=model, prefix=ORIGINAL, onnx_name="original.onnx", accuracy=result.accuracy_before,
                       quantize=False, exported=exp)
    pruned = Pruned(result=result, original=original, gate_error=gate_error)
    try:
        pruned.saved = save_pruned(model, result, out_dir / "pruned.pt", onnx=False).to_dict()
    except Exception as exc:  # the ONNX path is what gets deployed; a torch file is a bonus
        log(f"note: could not save pruned.pt: {exc}")
    deployed = Variant(model=pruned_loaded_model(model, result), accuracy=result.accuracy_after)
    return deployed, pruned


class CompileInterrupted(Interrupted):
    """``compile`` / ``bench`` stopped by a signal: ``summary`` (status ``incomplete``,
    already written with ``report.md``) holds every backend measured before the stop."""

    def __init__(self, stop: Interrupted, summary: CompileSummary) -> None:
        measured = sum(b.ok for b in summary.backends)
        where = Path(summary.out_dir) / "summary.json"
        super().__init__(stop.signum, f"{measured} of {len(summary.backends)} backend(s) measured, kept in {where}"
                         if summary.backends else f"{summary.stopped}: nothing measured yet (status in {where})")
        self.summary = summary


#: a backend's error while its device is still timing (replaced when the run finishes)
STILL_RUNNING = "still being measured"


def can_measure(target: Target, device: Device) -> bool:
    """A local device runs only native targets; a remote one is the target's board."""
    return device.kind != "local" or target.is_native


def finish(prepared: Prepared, measured: Measurements | None, device: Device, model: LoadedModel,
           options: CompileOptions, out_dir: Path, pruned: Pruned | None = None, status: str = "complete",
           stopped: str | None = None) -> CompileSummary:
    """Summarize, add the pruning figures, write ``summary.json`` and ``report.md``
    (``status``: ``running`` before timing, ``incomplete`` when stopped)."""
    summary = summarize(prepared, measured, device, model_spec=model.spec,
                        task=model.data.task if model.data else None, accuracy_tolerance=options.accuracy_tolerance,
                        notes=list(model.notes), out_dir=str(out_dir))
    summary.status, summary.stopped = status, stopped
    if pruned is not None:
        from edgeprune.prune.figures import apply_pruning

        orig = prepared.variant(ORIGINAL)  # prune_variants always adds it
        assert orig is not None
        figures = ModelFigures(params=orig.cost.params, macs=orig.cost.macs, accuracy=orig.accuracy)
        apply_pruning(summary, pruned.result, figures, orig.errors, measured.results if measured is not None else {},
                      ORIGINAL, pruned.gate_error, pruned.saved)
    summary.write(out_dir)
    write_report(summary, out_dir / "report.md")
    return summary


def compile_model(
    model: LoadedModel,
    target: Target,
    device: Device,
    out_dir: Path,
    options: CompileOptions = CompileOptions(),
    log: Log = _stderr,
) -> CompileSummary:
    """Export ``model`` to ONNX, build it for ``target``, benchmark it on ``device``.

    Returns the summary (also written to ``out_dir/summary.json`` and ``report.md``).
    Per-backend failures are recorded in the summary rather than raised.
    """
    # unknown, unsupported or missing backends and impossible budgets fail before any work (flows.preflight)
    check_build(target, options.backends, [name for name, _ in options.prebuilt], options.prune)
    if options.precisions:  # a CPU without bf16/fp16 instructions fails now, not after the export
        from edgeprune.compile.precision import check_for_device
        from edgeprune.compile.prepare import resolve_backends

        check_for_device(options.precisions, resolve_backends(options.backends, target), target, device.kind == "local")
    if not options.bench.wait_for_device and can_measure(target, device) and device.kind == "local":
        check_free(device)  # --no-wait: a busy device fails now, not after the export and builds
    make_out_dir(out_dir)  # an unwritable --out: one line, exit 2
    stage = "pruning"
    try:
        variants = [Variant(model=model)]
        pruned = None
        if options.prune is not None:
            deployed, pruned = prune_variants(model, target, device, out_dir, options.prune, log)
            variants = [deployed, pruned.original]
        stage = "export and build"
        prepared = prepare(variants, target, out_dir, options.prepare_options(), log)
    except KeyboardInterrupt as exc:  # nothing measured yet: say so on disk, then stop
        stop = Interrupted.of(exc)
        raise CompileInterrupted(stop, stopped_summary(model, target, device, out_dir, f"{stop} during {stage}")
                                 ) from None
    if not (can_measure(target, device) and prepared.bundle.jobs):
        return finish(prepared, None, device, variants[0].model, options, out_dir, pruned)
    # written before timing, so a run killed while it times is recovered from it
    finish(prepared, Measurements(device=device, error=STILL_RUNNING), device, variants[0].model, options, out_dir,
           pruned, status="running")
    s = options.bench
    try:
        measured = measure(prepared.bundle, [device], rounds=s.rounds, timeout_s=s.timeout_s, log=log,
                           wait=s.wait_for_device)[device.name]
    except MeasureInterrupted as stop:
        summary = finish(prepared, stop.measurements[device.name], device, variants[0].model, options, out_dir,
                         pruned, status="incomplete", stopped=f"{stop} during measurement")
        raise CompileInterrupted(stop, summary) from None
    except KeyboardInterrupt as exc:  # between the steps of measure (writing the manifest)
        stop = Interrupted.of(exc)
        summary = finish(prepared, Measurements(device=device, error=f"interrupted ({stop})"), device,
                         variants[0].model, options, out_dir, pruned, status="incomplete",
                         stopped=f"{stop} before measurement")
        raise CompileInterrupted(stop, summary) from None
    return finish(prepared, measured, device, variants[0].model, options, out_dir, pruned)


def stopped_summary(model: LoadedModel, target: Target, device: Device, out_dir: Path, stopped: str
                    ) -> CompileSummary:
    """The summary of a run stopped before anything was built or measured (written, with
    ``report.md``): status ``incomplete``, no backends, and when it stopped."""
    import datetime as _dt

    from edgeprune import __version__
    from edgeprune.compile.summary import ModelFigures

    summary = CompileSummary(
        model=model.spec, target=target.name, device=device.name, backend=None,
        original=ModelFigures(params=0, macs=0, accuracy=None), pruned=None, backends=[], export={},
        choice_reason=f"stopped ({stopped}): nothing was measured", emulated=device.emulated,
        edgeprune_version=__version__, out_dir=str(out_dir), status="incomplete", stopped=stopped,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    summary.write(out_dir)
    write_report(summary, out_dir / "report.md")
    return summary
