"""export -> build -> bench -> verify: the library function behind ``edgeprune compile``.

Every stage records what it did into a :class:`CompileSummary`; a backend that fails to
build or run is recorded with its error and the others carry on, so one broken compiler
never throws away the measurements of the rest.
"""

from __future__ import annotations

import datetime as _dt
import shutil
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune import __version__
from edgeprune.bench.bundle import BenchJob, JobResult, write_manifest
from edgeprune.bench import rounds
from edgeprune.bench.rounds import decision_ms, rounds_faster
from edgeprune.bench.devices import executor_for
from edgeprune.bench.io import save_arrays, save_eval
from edgeprune.bench.stats import LatencyStats
from edgeprune.compile.analysis import graph_cost
from edgeprune.compile.backends import Artifact, get_backend
from edgeprune.compile.export import ExportResult, export_onnx, torch_outputs
from edgeprune.compile.quantize import INT8_BACKENDS, INT8_OUTPUT_REL_TOL, INT8_PARITY_RULE, QuantizeResult, quantize_int8
from edgeprune.compile.summary import BackendResult, CompileSummary, ModelFigures
from edgeprune.config.devices import Device
from edgeprune.config.targets import Target
from edgeprune.errors import BackendError, EdgepruneError
from edgeprune.models.base import LoadedModel

REFERENCE_BACKEND = "onnxruntime"
#: held while exporting and building, so several devices can run compile_model in threads
_PREPARE_LOCK = threading.RLock()
Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class BenchSettings:
    """How long and how carefully to measure. Both a minimum count and a minimum
    duration must be reached, so fast models get many runs and slow ones enough time."""

    warmup: int = 10
    min_runs: int = 50
    min_time_s: float = 1.0
    max_time_s: float = 30.0
    threads: int | None = None
    timeout_s: float = 1800.0
    eval_samples: int | None = None
    #: with several artifacts, their timing is split into this many interleaved rounds
    #: (edgeprune.bench.rounds): a choice between them then compares like with like
    rounds: int = 3
    #: time inside the runner's steady gate (edgeprune.bench.runner.SteadyGate): off by
    #: default for compile, whose artifacts are few and long-timed; on for noisy devices
    steady_gate: bool = False

    @property
    def gate(self) -> dict[str, Any] | None:
        """``BenchJob.gate`` for these settings (``{}`` = the gate with its defaults)."""
        return {} if self.steady_gate else None


@dataclass(frozen=True)
class CompileOptions:
    backends: tuple[str, ...] = ()  # empty = every backend the target lists ("auto")
    bench: BenchSettings = field(default_factory=BenchSettings)
    parity_atol: float = 1e-4
    parity_rtol: float = 1e-3
    accuracy_tolerance: float = 1.0  # points an artifact may lose vs the reference and still be chosen
    prebuilt: tuple[tuple[str, str], ...] = ()  # (backend, artifact path): time these instead of building
    prune: Any = None  # edgeprune.prune.api.PruneOptions: prune first, measure original and pruned side by side
    quantize: str | None = None  # "int8": also build INT8 (QDQ) artifacts of the exported model, timed beside fp32
    calibration_samples: int = 256  # real training samples that calibrate INT8 activation ranges


def reference_outputs(model: LoadedModel, onnx_path: Path) -> list[np.ndarray]:
    """PyTorch outputs on the example input, or ONNX Runtime's for an ONNX-only model."""
    if model.module is not None:
        return torch_outputs(model, model.example_inputs)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return sess.run(None, dict(zip(model.input_names, model.example_inputs)))


def reference_accuracy(model: LoadedModel) -> float | None:
    if model.module is None or model.data is None:
        return None
    from edgeprune.models.train import evaluate

    return float(evaluate(model.module, model.data.val, model.data.task, batch_size=model.batch_size))


def adopt_prebuilt(backend_name: str, path: Path, target: Target, dest: Path) -> Artifact:
    """Copy a user's prebuilt artifact (and its companions, e.g. OpenVINO's .bin) into the bundle."""
    if not path.exists():
        raise BackendError(f"artifact {path} does not exist")
    backend = get_backend(backend_name)
    files = [path] + ([path.with_suffix(".bin")] if path.suffix == ".xml" and path.with_suffix(".bin").exists() else [])
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for f in files:
        shutil.copy2(f, dest / f.name)
        copied.append(dest / f.name)
    return Artifact(backend=backend_name, path=copied[0], files=copied, target=target.name,
                    backend_version=backend.version(), build_seconds=0.0, notes=[f"prebuilt artifact {path}"])


def build_artifacts(
    onnx_path: Path, target: Target, names: list[str], bundle_dir: Path, threads: int | None, log: Log,
    prebuilt: dict[str, Path] | None = None,
) -> tuple[dict[str, Artifact], dict[str, str]]:
    """Build each backend's artifact; returns (artifacts by name, errors by name)."""
    artifacts: dict[str, Artifact] = {}
    errors: dict[str, str] = {}
    for name in names:
        if prebuilt and name in prebuilt:
            artifacts[name] = adopt_prebuilt(name, prebuilt[name], target, bundle_dir / name)
            continue
        backend = get_backend(name)
        ok, why = backend.supports(target)
        if not ok:
            errors[name] = f"not supported for target {target.name}: {why}"
            continue
        log(f"building {name} artifact for {target.name} ...")
        try:
            artifacts[name] = backend.build(onnx_path, target, bundle_dir / name, threads=threads)
        except EdgepruneError as exc:
            errors[name] = str(exc)
            log(f"  {name}: build failed: {exc}")
    return artifacts, errors


def build_int8_artifacts(
    model: LoadedModel, onnx_path: Path, target: Target, names: list[str], bundle_dir: Path, threads: int | None,
    options: CompileOptions, artifacts: dict[str, Artifact], errors: dict[str, str], log: Log,
) -> tuple[QuantizeResult | None, list[str]]:
    """``--quantize int8``: quantize the exported ONNX (pruned, if pruning ran) and build an
    ``<backend>-int8`` artifact for every requested backend that runs QDQ models in int8.

    Adds to ``artifacts`` / ``errors`` in place; returns (quantization record, int8 names).
    """
    if not options.quantize:
        return None, []
    if options.quantize != "int8":
        raise BackendError(f"unknown quantization '{options.quantize}'; choose int8")
    int8_names = [f"{n}-int8" for n in names if n in INT8_BACKENDS]
    if not int8_names:
        log(f"note: --quantize int8 needs one of {', '.join(INT8_BACKENDS)}; none was requested")
        return None, []
    try:
        quant = quantize_int8(model, onnx_path, onnx_path.with_name("model.int8.onnx"),
                              samples=options.calibration_samples, log=log)
    except EdgepruneError as exc:
        for n in int8_names:
            errors[n] = str(exc)
        return None, int8_names
    for n in int8_names:
        base = n[: -len("-int8")]
        ok, why = get_backend(base).supports(target)
        if not ok:
            errors[n] = f"not supported for target {target.name}: {why}"
            continue
        log(f"building {n} artifact for {target.name} ...")
        try:
            art = get_backend(base).build(quant.path, target, bundle_dir / n, threads=threads)
        except EdgepruneError as exc:
            errors[n] = str(exc)
            continue
        art.notes.append(f"INT8 (QDQ) model from {quant.path.name}")
        artifacts[n] = art
    return quant, int8_names


def choose_backend(
    results: list[BackendResult], reference_acc: float | None, acc_tol: float
) -> tuple[str | None, str]:
    """Fastest artifact whose outputs verified and whose accuracy held; with the reason."""
    passing, rejected = [], []
    for r in results:
        if not r.ok:
            rejected.append(f"{r.name} failed ({r.error})")
        elif r.verified is False:
            diff = "?" if r.max_abs_diff is None else f"{r.max_abs_diff:.2g}"
            rule = "" if r.tolerance is None else f" > {r.tolerance:.2g}"  # INT8 has a relative rule, no tolerance
            rejected.append(f"{r.name} failed parity (max diff {diff}{rule})")
        elif reference_acc is not None and r.accuracy is not None and r.accuracy < reference_acc - acc_tol:
            rejected.append(f"{r.name} lost accuracy ({r.accuracy:.2f}% vs {reference_acc:.2f}%)")
        elif getattr(r, "precision", "fp32") != "fp32" and (r.accuracy is None or reference_acc is None):
            rejected.append(f"{r.name} accuracy unverified (an {r.precision} artifact is chosen only on labelled data)")
        else:
            passing.append(r)
    if not passing:
        return None, "no artifact passed: " + "; ".join(rejected)
    def ms(r: BackendResult) -> float:
        return decision_ms(r.round_medians_ms, r.latency_ms.median)  # type: ignore[union-attr]

    passing.sort(key=ms)
    best = passing[0]
    others = [f"{r.name} {ms(r):.3f} ms" for r in passing[1:]]
    k = len(best.round_medians_ms)
    reason = (f"{best.name} has the lowest median latency ({ms(best):.3f} ms"
              + (f", fast state of {k} interleaved rounds" if k > 1 else "") + ") among verified artifacts")
    if others:
        reason += " (vs " + ", ".join(others) + ")"
    if len(passing) > 1:
        second = passing[1]
        won, n = rounds_faster(second.round_medians_ms, best.round_medians_ms)
        if n > 1 and won > 0:  # the runner-up was faster in some interleaved round: a tie within noise
            reason += (f"; {second.name} was faster in {won} of {n} interleaved rounds "
                       f"({100 * (ms(second) / ms(best) - 1):+.1f}%): a tie within this device's noise")
    if rejected:
        reason += "; rejected: " + "; ".join(rejected)
    return best.name, reason


def run_bundle(
    device: Device, bundle_dir: Path, jobs: list[BenchJob], timeout_s: float, log: Log
) -> dict[str, JobResult]:
    write_manifest(bundle_dir, jobs)
    executor = executor_for(device)
    n = len({rounds.base_id(j.id) for j in jobs})
    k = len(jobs) // max(n, 1)
    log(f"benchmarking {n} artifact(s) on device '{device.name}'" + (f" in {k} interleaved rounds" if k > 1 else "")
        + " ...")
    results = executor.run_bundle(bundle_dir, timeout_s=timeout_s)
    return {r.id: r for r in results}


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
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle_dir = out_dir / "bundle"
    if bundle_dir.exists():
        shutil.rmtree(bundle_dir)
    bundle_dir.mkdir(parents=True)

    stage = None
    if options.prune is not None:  # prune first; everything below builds and measures the pruned model
        from edgeprune.prune.stage import PruneStage

        stage = PruneStage.run(model, target, device, out_dir, options.prune, log)
        model = stage.pruned
    log(f"exporting {model.name} to ONNX ...")
    with _PREPARE_LOCK:  # PyTorch export / compilers are not thread-safe; device runs may overlap
        exp: ExportResult = export_onnx(model, out_dir / "model.onnx", tolerance=options.parity_atol)
    cost = graph_cost(exp.path)
    ref_acc = reference_accuracy(model)
    original = ModelFigures(params=cost.params, macs=cost.macs, accuracy=ref_acc)

    names = list(options.backends) or list(target.backends)
    for n in names:
        get_backend(n)  # unknown names fail here with the list of valid ones
    threads = options.bench.threads or target.num_cores()
    prebuilt = {b: Path(p) for b, p in options.prebuilt}
    with _PREPARE_LOCK:
        artifacts, build_errors = build_artifacts(exp.path, target, names, bundle_dir, threads, log, prebuilt)
        quant, int8_names = build_int8_artifacts(model, exp.path, target, names, bundle_dir, threads, options,
                                                 artifacts, build_errors, log)

    expected = reference_outputs(model, exp.path)
    save_arrays(bundle_dir / "data" / "inputs.npz", "in", model.example_inputs)
    save_arrays(bundle_dir / "data" / "expected.npz", "out", expected)
    scale = max(float(np.max(np.abs(e))) if e.size else 0.0 for e in expected)
    tolerance = options.parity_atol + options.parity_rtol * scale
    int8_tolerance = INT8_OUTPUT_REL_TOL * scale  # INT8 parity is accuracy-based; see quantize.INT8_PARITY_RULE
    has_eval = False
    if model.data is not None:
        has_eval = save_eval(bundle_dir / "data" / "eval.npz", model.data.val, model.batch_size, options.bench.eval_samples) > 0

    s = options.bench
    jobs = [
        BenchJob(
            id=name,
            backend=art.backend,
            artifact=str(art.path.relative_to(bundle_dir)),
            inputs="data/inputs.npz",
            expected="data/expected.npz",
            eval="data/eval.npz" if has_eval else None,
            task=model.data.task if model.data else None,
            tolerance=int8_tolerance if name in int8_names else tolerance,
            threads=threads,
            options=art.options,
            warmup=s.warmup,
            min_runs=s.min_runs,
            min_time_s=s.min_time_s,
            max_time_s=s.max_time_s,
            gate=s.gate,
        )
        for name, art in artifacts.items()
    ]

    if stage is not None:
        template = {k: v for k, v in jobs[0].__dict__.items()} if jobs else {}
        if template:
            jobs = stage.interleave(jobs, stage.original_jobs(
                bundle_dir, target, names, threads, template, options.parity_atol, options.parity_rtol, log))

    notes = list(model.notes)
    if quant is not None:
        notes += [quant.describe(), INT8_PARITY_RULE + "."] + quant.notes
    can_run = device.kind != "local" or target.is_native
    run_results: dict[str, JobResult] = {}
    bench_error: str | None = None
    round_medians: dict[str, list[float]] = {}
    if jobs and can_run:
        try:
            run_results, round_medians = rounds.merge(
                run_bundle(device, bundle_dir, rounds.expand(jobs, s.rounds), s.timeout_s, log))
        except EdgepruneError as exc:
            bench_error = str(exc)
            log(f"benchmark failed: {exc}")
    elif jobs:
        write_manifest(bundle_dir, jobs)
        notes.append(
            f"compile-verified only: target {target.name} ({target.arch}, accelerator {target.accelerator}) "
            f"cannot run on device '{device.name}'; pass --device with a {target.name} board to benchmark"
        )

    flops = 2 * cost.macs
    backends: list[BackendResult] = []
    for name in names + int8_names:
        art = artifacts.get(name)
        br = BackendResult(
            name=name,
            artifact=str(art.path) if art else None,
            backend_version=getattr(art, "backend_version", None),
            build_seconds=getattr(art, "build_seconds", None),
            tolerance=int8_tolerance if name in int8_names else tolerance,
            precision="int8" if name in int8_names else "fp32",
            notes=list(getattr(art, "notes", []) or []),
        )
        if art is None:
            br.error = build_errors.get(name, "not built")
        elif name in run_results:
            jr = run_results[name]
            br.threads = jr.threads
            br.env = jr.env
            if jr.ok and jr.times_ms:
                br.latency_ms = LatencyStats.from_times(jr.times_ms)
                br.runs = len(jr.times_ms)
                br.times_ms = jr.times_ms
                br.round_medians_ms = round_medians.get(name, [])
                br.verified = jr.verified
                br.max_abs_diff = jr.max_abs_diff
                br.accuracy = jr.accuracy
                peak = target.peak_gflops() * 1e9
                if peak > 0 and flops > 0:
                    br.roofline_fraction = flops / (br.latency_ms.median / 1e3) / peak
            else:
                br.error = jr.error or "run failed"
        elif can_run:
            br.error = bench_error or "not run"
        backends.append(br)

    ref = next((b for b in backends if b.name == REFERENCE_BACKEND and b.ok), None)
    for b in backends:
        if ref is not None and b.ok:
            b.speedup_vs_reference = ref.latency_ms.median / b.latency_ms.median  # type: ignore[union-attr]

    if any(b.ok for b in backends):
        chosen, reason = choose_backend(backends, ref_acc, options.accuracy_tolerance)
    elif not can_run and artifacts:
        chosen = names[0] if names[0] in artifacts else next(iter(artifacts))
        reason = f"{chosen} is the target's preferred backend (not benchmarked: no device)"
    else:
        chosen, reason = None, "no artifact could be built or run: " + "; ".join(
            f"{b.name}: {b.error}" for b in backends
        )
    chosen_res = next((b for b in backends if b.name == chosen), None)
    if chosen_res is not None and chosen_res.latency_ms is not None:
        original.latency_ms = chosen_res.latency_ms.to_dict()

    pruned_figures = None
    if stage is not None:
        original, pruned_figures, stage_notes = stage.figures(original, run_results, chosen)
        notes += stage_notes

    env = next((b.env for b in backends if b.env), {})
    summary = CompileSummary(
        model=model.spec,
        target=target.name,
        device=device.name,
        backend=chosen,
        original=original,
        pruned=pruned_figures,
        backends=backends,
        export=exp.to_dict(),
        choice_reason=reason,
        task=model.data.task if model.data else None,
        emulated=device.emulated,
        env=env,
        notes=notes,
        edgeprune_version=__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        out_dir=str(out_dir),
    )
    summary.write(out_dir)
    from edgeprune.compile.report import write_report

    write_report(summary, out_dir / "report.md")
    return summary
