"""``summarize``: what was prepared and what was measured -> one :class:`CompileSummary`.

The choice of backend lives here (:func:`choose_backend`): the fastest artifact whose
outputs verified and whose accuracy held, decided on the fast state of interleaved
rounds, with the reason written out so a user can check it.
"""

from __future__ import annotations

import datetime as _dt

from edgeprune import __version__
from edgeprune.bench.bundle import JobResult
from edgeprune.bench.measure import Measurements
from edgeprune.bench.rounds import decision_ms, rounds_faster
from edgeprune.bench.stats import LatencyStats
from edgeprune.compile.auto import tune_command
from edgeprune.compile.hints import add_hints
from edgeprune.compile.prepare import ORIGINAL, BuiltVariant, Prepared
from edgeprune.compile.quantize import INT8_PARITY_RULE
from edgeprune.compile.summary import BackendResult, CompileSummary, ModelFigures
from edgeprune.config.devices import Device

REFERENCE_BACKEND = "onnxruntime"


def rejection(r: BackendResult, reference_acc: float | None, acc_tol: float) -> str | None:
    """Why ``r`` cannot be chosen ("tvm failed parity (...)"), or None when it can."""
    if not r.ok:
        return f"{r.name} failed ({r.error})"
    if r.verified is False:
        diff = "?" if r.max_abs_diff is None else f"{r.max_abs_diff:.2g}"
        rule = "" if r.tolerance is None else f" > {r.tolerance:.2g}"  # INT8 has a relative rule, no tolerance
        return f"{r.name} failed parity (max diff {diff}{rule})"
    if reference_acc is not None and r.accuracy is not None and r.accuracy < reference_acc - acc_tol:
        return f"{r.name} lost accuracy ({r.accuracy:.2f}% vs {reference_acc:.2f}%)"
    if r.precision != "fp32" and (r.accuracy is None or reference_acc is None):
        return f"{r.name} accuracy unverified (an {r.precision} artifact is chosen only on labelled data)"
    return None


def ms(r: BackendResult) -> float:
    """The latency a choice is made on (:func:`edgeprune.bench.rounds.decision_ms`)."""
    return decision_ms(r.round_medians_ms, r.latency_ms.median)  # type: ignore[union-attr]


def choose_backend(
    results: list[BackendResult], reference_acc: float | None, acc_tol: float
) -> tuple[str | None, str]:
    """Fastest artifact whose outputs verified and whose accuracy held; with the reason."""
    passing, rejected = [], []
    for r in results:
        why = rejection(r, reference_acc, acc_tol)
        if why is None:
            passing.append(r)
        else:
            rejected.append(why)
    if not passing:
        return None, "no artifact passed: " + "; ".join(rejected)

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


def apply_job_result(br: BackendResult, jr: JobResult, round_medians: list[float], flops: float = 0.0,
                     peak: float = 0.0) -> None:
    """Fill ``br`` with what the runner reported for its job: the one place a job line
    becomes a backend's figures (a finished run, and a killed run recovered later)."""
    br.threads, br.env = jr.threads, jr.env
    if jr.ok and jr.times_ms:
        br.error = None
        br.latency_ms = LatencyStats.from_times(jr.times_ms)
        br.runs, br.times_ms = len(jr.times_ms), jr.times_ms
        br.round_medians_ms = round_medians
        br.verified, br.max_abs_diff, br.accuracy = jr.verified, jr.max_abs_diff, jr.accuracy
        # what ran: the runner read it back from the runtime (and fails a job whose runtime fell back)
        br.precision = str((jr.env.get("runtime_settings") or {}).get("precision") or br.precision)
        if peak > 0 and flops > 0:
            br.roofline_fraction = flops / (br.latency_ms.median / 1e3) / peak
    else:
        br.error = jr.error or "run failed"


def is_reference(v: BuiltVariant, name: str) -> bool:
    """Whether backend ``name``'s artifact *is* the reference: an ONNX-only model's outputs
    are ONNX Runtime's on the same file, so that artifact's parity is 0 by construction."""
    import filecmp

    art = v.artifacts.get(name)
    if name != REFERENCE_BACKEND or v.variant.model.module is not None or art is None:
        return False
    try:
        return filecmp.cmp(art.path, v.export.path, shallow=False)  # a prebuilt artifact is a real check
    except OSError:
        return False


def backend_results(prepared: Prepared, measured: Measurements | None, can_run: bool,
                    variant: BuiltVariant | None = None) -> list[BackendResult]:
    """One :class:`BackendResult` per backend of ``variant`` (default: the deployed one),
    fp32 then INT8, named by backend."""
    v = variant or prepared.deployed
    flops = v.cost.flops
    peak = prepared.target.peak_gflops() * 1e9
    results = measured.results if measured is not None else {}
    medians = measured.round_medians if measured is not None else {}
    out: list[BackendResult] = []
    names = [n for n in prepared.names if v.variant.backends is None or n in v.variant.backends]
    for name in names + v.extra_names():
        art = v.artifacts.get(name)
        br = BackendResult(
            name=name, artifact=str(art.path) if art else None,
            backend_version=art.backend_version if art else None, build_seconds=art.build_seconds if art else None,
            tolerance=v.tolerance_of(name), precision=v.precision_of(name),
            notes=list(art.notes or []) if art else [],
        )
        jr = results.get(v.job_id(name))
        if art is None:
            br.error = v.errors.get(name, "not built")
        elif jr is not None:
            br.job_id = v.job_id(name)
            apply_job_result(br, jr, medians.get(v.job_id(name), []), flops, peak)
        elif can_run:
            br.job_id = v.job_id(name)
            br.error = (measured.error if measured is not None else None) or "not run"
        br.parity_reference = is_reference(v, name)
        out.append(br)
    ref = next((b for b in out if b.name == REFERENCE_BACKEND and b.ok), None)
    for b in out:
        if ref is not None and b.ok:
            b.speedup_vs_reference = ref.latency_ms.median / b.latency_ms.median  # type: ignore[union-attr]
    return out


def summarize(
    prepared: Prepared, measured: Measurements | None, device: Device, *, model_spec: str, task: str | None,
    accuracy_tolerance: float, notes: list[str], out_dir: str,
) -> CompileSummary:
    """The summary of the deployed variant: every backend, the choice and why.

    ``measured`` is None when the target cannot run on ``device`` (compile-verified only).
    """
    v = prepared.deployed
    can_run = measured is not None
    notes = list(notes) + prepared.notes + ([v.input_check.note()] if v.input_check is not None else [])
    if v.quant is not None:
        notes += [v.quant.describe(), INT8_PARITY_RULE + "."] + v.quant.notes
    if not can_run and prepared.bundle.jobs:
        t = prepared.target
        notes.append(f"compile-verified only: target {t.name} ({t.arch}, accelerator {t.accelerator}) cannot run on "
                     f"device '{device.name}'; pass --device with a {t.name} board to benchmark")
    backends = backend_results(prepared, measured, can_run)
    for b in backends:  # a runtime that ran elsewhere than asked says so (ONNX Runtime without CUDA: the CPU)
        if (note := ((b.env or {}).get("runtime_settings") or {}).get("note")):
            notes.append(f"{b.name}: {note}")
    if prepared.target.gpu is not None and can_run:
        notes.append(f"GPU {prepared.target.gpu.describe()}: every artifact's outputs are checked against the CPU "
                     "reference (PyTorch on this CPU; ONNX Runtime's CPU provider for a model given as ONNX)")
    original = ModelFigures(params=v.cost.params, macs=v.cost.macs, accuracy=v.accuracy)
    if any(b.ok for b in backends):
        chosen, reason = choose_backend(backends, v.accuracy, accuracy_tolerance)
    elif not can_run and v.artifacts:
        names = prepared.names
        chosen = names[0] if names[0] in v.artifacts else next(iter(v.artifacts))
        reason = f"{chosen} is the target's preferred backend (not benchmarked: no device)"
    else:
        chosen, reason = None, "no artifact could be built or run: " + "; ".join(
            f"{b.name}: {b.error}" for b in backends)
    chosen_res = next((b for b in backends if b.name == chosen), None)
    if chosen_res is not None and chosen_res.latency_ms is not None:
        original.latency_ms = chosen_res.latency_ms.to_dict()
    hints = _hints(prepared, backends, chosen, device, model_spec, accuracy_tolerance)
    return CompileSummary(
        model=model_spec, target=prepared.target.name, device=device.name, backend=chosen, original=original,
        pruned=None, backends=backends, export=v.export.to_dict(), choice_reason=reason, task=task,
        emulated=device.emulated, env=next((b.env for b in backends if b.env), {}), notes=notes,
        edgeprune_version=__version__, created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        out_dir=out_dir, roofline_peak=prepared.target.peak_description(), hints=hints,
    )


def _hints(prepared: Prepared, backends: list[BackendResult], chosen: str | None, device: Device, model_spec: str,
           accuracy_tolerance: float) -> list[str]:
    """Each backend's hints (added to it) and the run's (returned): see :mod:`edgeprune.compile.hints`."""
    v, t = prepared.deployed, prepared.target
    # a pruned model's kernels are those of the deployed ONNX, not of the spec's model
    tune_model = str(v.export.path) if prepared.variant(ORIGINAL) is not None else model_spec
    board = device.name if device.kind != "local" else (None if t.is_native else "BOARD")
    rejected = {b.name: why for b in backends if (why := rejection(b, v.accuracy, accuracy_tolerance))}
    # a prebuilt artifact (bench --artifact) was not built here: whether it was tuned is unknown
    built = {n: a.options for n, a in v.artifacts.items()
             if not any(x.startswith("prebuilt artifact") for x in a.notes)}
    return add_hints(backends, chosen, rejected, options=built,
                     accelerator=t.accelerator, tune_cmd=tune_command(tune_model, t, board),
                     input_check=v.input_check, decision_ms=ms, emulated=device.emulated)
