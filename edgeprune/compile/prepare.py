"""``prepare``: from model variants to a deploy bundle, once per variant.

A *variant* is one version of the model to measure: the model itself, or (when
``compile`` prunes) the pruned model plus the original beside it. For each variant
:func:`prepare` exports to ONNX, counts its cost, takes its reference outputs and
accuracy, builds every requested backend's artifact (and INT8 or bf16/fp16 ones on
request, :mod:`edgeprune.compile.precision`) into the bundle, and writes the jobs with
their parity tolerance. Every artifact carries its ``precision`` in its runtime options,
prebuilt ones too: the runner sets it explicitly, so nothing runs a runtime's default. Nothing here runs on a
device: :func:`edgeprune.bench.measure.measure` does that with the returned bundle, and
:func:`edgeprune.compile.summarize.summarize` turns both into a :class:`CompileSummary`.

A backend that fails to build is recorded in its variant's ``errors`` and the others
carry on, so one broken compiler never throws away the rest.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeprune.bench.io import save_arrays, save_eval
from edgeprune.bench.measure import Bundle
from edgeprune.bench.settings import BenchSettings
from edgeprune.bench.bundle import BenchJob
from edgeprune.compile.analysis import GraphCost, graph_cost
from edgeprune.compile.auto import auto_backends
from edgeprune.compile.backends import Artifact, get_backend
from edgeprune.compile.export import DEFAULT_PARITY_TOL, ExportResult, export_onnx, torch_outputs
from edgeprune.compile.precision import PRECISION_RULE, build_precision_artifacts, check_precisions
from edgeprune.compile.quantize import INT8_BACKENDS, INT8_OUTPUT_REL_TOL, QuantizeResult, quantize_int8
from edgeprune.compile.synthetic import InputCheck, check_synthetic
from edgeprune.config.targets import Target
from edgeprune.errors import BackendError, EdgepruneError
from edgeprune.models.base import LoadedModel

Log = Callable[[str], None]

#: Held while exporting and building. PyTorch's exporter and the compilers are not
#: thread-safe, and nightly / fleet code may prepare from several threads; device runs
#: (the long part) are not under it. A lock is process state by nature, not an option.
PREPARE_LOCK = threading.RLock()

#: job-id prefix of the original model's jobs when a pruned model is measured beside it
ORIGINAL = "original:"


@dataclass(frozen=True)
class Variant:
    """One version of the model to build and measure.

    ``prefix`` goes in front of its job ids ("" for the deployed model, ``ORIGINAL``
    for the original beside a pruned one). ``accuracy`` is the PyTorch-side accuracy
    when the caller already knows it (pruning measured it): it is not computed again.
    """

    model: LoadedModel
    prefix: str = ""
    onnx_name: str = "model.onnx"
    accuracy: float | None = None
    quantize: bool = True  # INT8 and bf16/fp16 artifacts are built for this variant when the options ask for them
    #: build only these backends for this variant (default: every requested backend)
    backends: tuple[str, ...] | None = None
    #: build for this target instead (e.g. the same target with TVM tuning records off)
    target: Target | None = None
    #: an export made earlier (``compile`` exports the original before pruning, so a model
    #: that cannot be exported fails before the long work)
    exported: ExportResult | None = None

    @property
    def subdir(self) -> str:
        """Where its artifacts and data live inside the bundle ("" = the bundle root)."""
        return self.prefix.rstrip(":")


@dataclass(frozen=True)
class PrepareOptions:
    backends: tuple[str, ...]  # resolved backend names (see :func:`resolve_backends`)
    bench: BenchSettings = field(default_factory=BenchSettings)
    parity_atol: float = 1e-4
    parity_rtol: float = 1e-3
    prebuilt: tuple[tuple[str, str], ...] = ()  # (backend, artifact path): time these instead of building
    quantize: str | None = None  # "int8"
    calibration_samples: int = 256
    #: reduced float precisions to build beside fp32 ("bf16", "fp16"; compile.precision)
    precisions: tuple[str, ...] = ()


@dataclass
class BuiltVariant:
    """What :func:`prepare` made of one variant."""

    variant: Variant
    export: ExportResult
    cost: GraphCost
    accuracy: float | None
    artifacts: dict[str, Artifact] = field(default_factory=dict)  # by job name (backend or <backend>-int8)
    errors: dict[str, str] = field(default_factory=dict)
    tolerance: float = 0.0
    int8_tolerance: float = 0.0
    int8_names: list[str] = field(default_factory=list)
    #: ``<backend>-bf16`` / ``-fp16`` job names (compile.precision), verified like INT8
    reduced_names: list[str] = field(default_factory=list)
    quant: QuantizeResult | None = None
    #: what the reference outputs on synthetic inputs showed (overflow, saturation), if anything
    input_check: InputCheck | None = None

    def tolerance_of(self, name: str) -> float:
        """fp32 artifacts: the bit-parity tolerance; bf16 / fp16 / int8: the loose bound
        of an accuracy-verified artifact (quantize.INT8_PARITY_RULE, precision.PRECISION_RULE)."""
        return self.tolerance if self.precision_of(name) == "fp32" else self.int8_tolerance

    def precision_of(self, name: str) -> str:
        """What job ``name`` runs at: its artifact's ``precision`` option (the one source
        the runner sets), else what its name says (an artifact that failed to build)."""
        art = self.artifacts.get(name)
        if art is not None and art.options.get("precision"):
            return str(art.options["precision"])
        if name in self.int8_names:
            return "int8"
        return name.rsplit("-", 1)[1] if name in self.reduced_names else "fp32"

    def extra_names(self) -> list[str]:
        """Job names beyond one per backend: bf16 / fp16, then INT8."""
        return self.reduced_names + self.int8_names

    def job_id(self, name: str) -> str:
        return self.variant.prefix + name


@dataclass
class Prepared:
    """A written bundle and what went into it; the deployed variant comes first."""

    bundle: Bundle
    target: Target
    names: list[str]
    threads: int
    variants: list[BuiltVariant]
    notes: list[str] = field(default_factory=list)  # e.g. a backend ``auto`` left out, and why

    @property
    def deployed(self) -> BuiltVariant:
        return self.variants[0]

    def variant(self, prefix: str) -> BuiltVariant | None:
        return next((v for v in self.variants if v.variant.prefix == prefix), None)


def resolve_backends(requested: Sequence[str], target: Target) -> list[str]:
    """The backends to build: the requested ones, or ("auto") the target's backends less
    an untuned TVM on a CPU (:func:`edgeprune.compile.auto.auto_backends`). Unknown names
    fail here, before any work, with the list of valid ones."""
    names = list(requested) or auto_backends(target)[0]
    for n in names:
        get_backend(n)
    return names


def reference_outputs(model: LoadedModel, onnx_path: Path, inputs: list[np.ndarray] | None = None
                      ) -> list[np.ndarray]:
    """PyTorch outputs on ``inputs`` (default: the example input), or ONNX Runtime's for
    an ONNX-only model."""
    inputs = model.example_inputs if inputs is None else inputs
    if model.module is not None:
        return torch_outputs(model, inputs)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return sess.run(None, dict(zip(model.input_names, inputs)))


def reference_accuracy(model: LoadedModel) -> float | None:
    """PyTorch-side accuracy on the validation split (None without a module or data)."""
    if model.module is None or model.data is None:
        return None
    from edgeprune.models.train import evaluate

    return float(evaluate(model.module, model.data.val, model.data.task, batch_size=model.batch_size))


def adopt_prebuilt(backend_name: str, path: Path, target: Target, dest: Path, threads: int | None = None) -> Artifact:
    """Copy a user's prebuilt artifact (and its companions, e.g. OpenVINO's .bin) into the
    bundle, with the runtime options a build of it would have (fp32 included: an
    OpenVINO IR without them runs the CPU plugin's default, bf16 on an AMX host)."""
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
                    backend_version=backend.version(), build_seconds=0.0,
                    options=backend.runtime_options(target, threads), notes=[f"prebuilt artifact {path}"])


def build_artifacts(
    onnx_path: Path, target: Target, names: Sequence[str], dest: Path, threads: int | None, log: Log,
    prebuilt: dict[str, Path] | None = None,
) -> tuple[dict[str, Artifact], dict[str, str]]:
    """Build each backend's artifact into ``dest/<backend>``; (artifacts, errors) by name."""
    artifacts: dict[str, Artifact] = {}
    errors: dict[str, str] = {}
    for name in names:
        if prebuilt and name in prebuilt:
            artifacts[name] = adopt_prebuilt(name, prebuilt[name], target, dest / name, threads)
            continue
        backend = get_backend(name)
        ok, why = backend.supports(target)
        if not ok:
            errors[name] = f"not supported for target {target.name}: {why}"
            continue
        log(f"building {name} artifact for {target.name} ...")
        try:
            artifacts[name] = backend.build(onnx_path, target, dest / name, threads=threads)
            artifacts[name].options.setdefault("precision", "fp32")  # the runner sets it explicitly
        except EdgepruneError as exc:
            errors[name] = str(exc)
            log(f"  {name}: build failed: {exc}")
    return artifacts, errors


def build_int8_artifacts(
    model: LoadedModel, onnx_path: Path, target: Target, names: Sequence[str], dest: Path, threads: int | None,
    samples: int, log: Log,
) -> tuple[QuantizeResult | None, list[str], dict[str, Artifact], dict[str, str]]:
    """Quantize the exported ONNX and build an ``<backend>-int8`` artifact for every
    requested backend that runs QDQ models in int8.

    Returns (quantization record, int8 names, artifacts, errors).
    """
    int8_names = [f"{n}-int8" for n in names if n in INT8_BACKENDS]
    artifacts: dict[str, Artifact] = {}
    errors: dict[str, str] = {}
    if not int8_names:
        log(f"note: --quantize int8 needs one of {', '.join(INT8_BACKENDS)}; none was requested")
        return None, [], artifacts, errors
    try:
        quant = quantize_int8(model, onnx_path, onnx_path.with_name(onnx_path.stem + ".int8.onnx"),
                              samples=samples, log=log)
    except EdgepruneError as exc:
        return None, int8_names, artifacts, {n: str(exc) for n in int8_names}
    for n in int8_names:
        base = n[: -len("-int8")]
        ok, why = get_backend(base).supports(target)
        if not ok:
            errors[n] = f"not supported for target {target.name}: {why}"
            continue
        log(f"building {n} artifact for {target.name} ...")
        try:
            art = get_backend(base).build(quant.path, target, dest / n, threads=threads)
        except EdgepruneError as exc:
            errors[n] = str(exc)
            continue
        art.options["precision"] = "int8"
        art.notes.append(f"INT8 (QDQ) model from {quant.path.name}")
        artifacts[n] = art
    return quant, int8_names, artifacts, errors


def _interleave(deployed: list[BenchJob], others: list[BenchJob]) -> list[BenchJob]:
    """Each other variant's job for backend X right before the deployed X, so each pair
    is measured close together in time."""
    by_backend: dict[str, list[BenchJob]] = {}
    for j in others:
        by_backend.setdefault(j.backend, []).append(j)
    out: list[BenchJob] = []
    for j in deployed:
        out += by_backend.pop(j.backend, [])
        out.append(j)
    return out + [j for js in by_backend.values() for j in js]


def _prepare_variant(
    v: Variant, out_dir: Path, bundle_dir: Path, target: Target, names: list[str], threads: int,
    options: PrepareOptions, log: Log, prebuilt: dict[str, Path] | None, inputs: list[np.ndarray],
) -> tuple[BuiltVariant, list[np.ndarray]]:
    if v.exported is None:
        log(f"exporting {'the original ' if v.prefix else ''}{v.model.name} to ONNX ...")
    dest = bundle_dir / v.subdir if v.subdir else bundle_dir
    with PREPARE_LOCK:
        exp = v.exported or export_onnx(v.model, out_dir / v.onnx_name,
                                        tolerance=options.parity_atol if not v.prefix else DEFAULT_PARITY_TOL)
        target = v.target or target
        names = [n for n in names if v.backends is None or n in v.backends]
        artifacts, errors = build_artifacts(exp.path, target, names, dest, threads, log, prebuilt)
        quant, int8_names, reduced = None, [], []
        if options.precisions and v.quantize:
            reduced, arts_p, errs_p = build_precision_artifacts(artifacts, errors, options.precisions, names, log)
            artifacts.update(arts_p)
            errors.update(errs_p)
        if options.quantize and v.quantize:
            if options.quantize != "int8":
                raise BackendError(f"unknown quantization '{options.quantize}'; choose int8")
            quant, int8_names, arts8, errs8 = build_int8_artifacts(
                v.model, exp.path, target, names, dest, threads, options.calibration_samples, log)
            artifacts.update(arts8)
            errors.update(errs8)
    expected = reference_outputs(v.model, exp.path, inputs)
    check = None if v.prefix else check_synthetic(  # once, on the deployed model: are these outputs comparable?
        v.model.data is not None, inputs, expected, v.model.output_names,
        lambda xs: reference_outputs(v.model, exp.path, xs))
    scale = max(float(np.max(np.abs(e))) if e.size else 0.0 for e in expected)
    built = BuiltVariant(
        variant=v, export=exp, cost=graph_cost(exp.path),
        accuracy=v.accuracy if v.accuracy is not None else reference_accuracy(v.model),
        artifacts=artifacts, errors=errors, tolerance=options.parity_atol + options.parity_rtol * scale,
        int8_tolerance=INT8_OUTPUT_REL_TOL * scale,  # INT8 parity is accuracy-based; see quantize.INT8_PARITY_RULE
        int8_names=int8_names, reduced_names=reduced, quant=quant, input_check=check,
    )
    return built, expected


def prepare(
    variants: Sequence[Variant], target: Target, out_dir: Path, options: PrepareOptions, log: Log,
) -> Prepared:
    """Export, build and write the jobs of every variant into ``out_dir/bundle``.

    The first variant is the deployed one (the one whose artifacts are chosen between);
    the others are measured beside it, their jobs interleaved with its jobs. Every
    variant shares the example inputs and the evaluation split.
    """
    if not variants:
        raise ValueError("prepare needs at least one variant")
    names = resolve_backends(options.backends, target)
    check_precisions(options.precisions, names, target, flags=None)  # names only: the caller knows the device
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle_dir = out_dir / "bundle"
    if bundle_dir.exists():
        shutil.rmtree(bundle_dir)
    bundle_dir.mkdir(parents=True)
    s = options.bench
    threads = s.threads or target.num_cores()
    first = variants[0].model
    save_arrays(bundle_dir / "data" / "inputs.npz", "in", first.example_inputs)
    has_eval = first.data is not None and save_eval(
        bundle_dir / "data" / "eval.npz", first.data.val, first.batch_size, s.eval_samples) > 0
    prebuilt = {b: Path(p) for b, p in options.prebuilt}

    built: list[BuiltVariant] = []
    job_lists: list[list[BenchJob]] = []
    for i, v in enumerate(variants):
        b, expected = _prepare_variant(v, out_dir, bundle_dir, target, names, threads, options, log,
                                       prebuilt if i == 0 else None, first.example_inputs)
        expected_file = f"data/expected{'-' + v.subdir if v.subdir else ''}.npz"
        save_arrays(bundle_dir / expected_file, "out", expected)
        jobs = [
            s.job(id=b.job_id(name), backend=art.backend, artifact=str(art.path.relative_to(bundle_dir)),
                  inputs="data/inputs.npz", expected=expected_file, eval="data/eval.npz" if has_eval else None,
                  task=first.data.task if first.data else None, tolerance=b.tolerance_of(name), threads=threads,
                  options=art.options)
            for name, art in b.artifacts.items()
        ]
        built.append(b)
        job_lists.append(jobs)
    others = [j for js in job_lists[1:] for j in js]
    bundle = Bundle(bundle_dir, _interleave(job_lists[0], others) if job_lists[0] else others)
    bundle.write()
    return Prepared(bundle=bundle, target=target, names=names, threads=threads, variants=built,
                    notes=([] if options.backends else auto_backends(target, first.spec)[1])
                    + ([PRECISION_RULE + "."] if options.precisions else []))
