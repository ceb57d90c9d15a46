"""``edgeprune compile`` and ``edgeprune bench``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from edgeprune.cli.common import (DeviceArgs, ModelArgs, backend_option, bench_options, device_options,
                                  json_option, model_options, out_option, target_option)
from edgeprune.cli.output import log, out, print_json, table
from edgeprune.cli.prune_cmd import prune_options
from edgeprune.cli.results_cmd import record_option, recording
from edgeprune.runner.adapters.precision import NATIVE_FLAGS as REDUCED_PRECISIONS  # light: no runtime imported

if TYPE_CHECKING:
    from edgeprune.bench.settings import BenchSettings
    from edgeprune.prune.options import PruneOptions
    from edgeprune.results.record import RecordOptions

#: the backend ``bench`` times when none is named: the reference every speed-up is against
BENCH_DEFAULT_BACKEND = "onnxruntime"


def print_summary(summary, as_json: bool) -> None:
    if as_json:
        print_json(summary.to_dict())
        return
    from edgeprune.compile.hints import tag

    rows = []
    for b in summary.backends:
        lat = b.latency_ms
        label = b.parity_label()  # "reference": ONNX Runtime on an ONNX-only model, what the rest is checked against
        parity = label if label in (None, "reference") else f"{'pass' if b.verified else 'FAIL'} ({b.max_abs_diff:.1e})"
        rows.append([
            ("* " if b.name == summary.backend else "  ") + b.name,
            f"{lat.median:.3f}" if lat else None,
            f"{lat.p90:.3f}" if lat else None,
            f"{lat.cv:.1%}" if lat else None,
            b.runs or None,
            f"{b.speedup_vs_reference:.2f}x" if b.speedup_vs_reference else None,
            parity,
            f"{b.accuracy:.2f}%" if b.accuracy is not None else None,
            ", ".join(dict.fromkeys(tag(h) for h in b.hints)) or None,  # the full lines follow the table
            (b.error or "")[:80] or None,
        ])
    title = f"{summary.model} on {summary.target} / device {summary.device}"
    if summary.emulated:
        title += " (EMULATED: timings meaningless)"
    table(title, ["backend", "median ms", "p90 ms", "CV", "runs", "vs ORT", "parity", "accuracy", "hint", "error"],
          rows, right={1, 2, 3, 4, 5})
    o = summary.original
    acc = f", accuracy {o.accuracy:.2f}% (PyTorch)" if o.accuracy is not None else ""
    out.print(f"model: {o.params:,} params, {o.macs / 1e6:.1f} M MACs{acc}", highlight=False)
    if summary.pruned is not None:
        p = summary.pruned
        pl = (p.latency_ms or {}).get("median")
        ol = (o.latency_ms or {}).get("median")
        out.print(
            f"pruned: {p.params:,} params, {p.macs / 1e6:.1f} M MACs"
            + (f", accuracy {p.accuracy:.2f}%" if p.accuracy is not None else "")
            + (f", latency {pl:.3f} ms vs {ol:.3f} ms ({pl / ol:.2f}x)" if pl and ol else ""),
            highlight=False,
        )
    out.print(f"chosen: {summary.backend or 'none'} — {summary.choice_reason}", highlight=False)
    for b in summary.backends:
        for h in b.hints:
            out.print(f"hint ({b.name}): {h}", highlight=False)
    for h in summary.hints:
        out.print(f"hint: {h}", highlight=False)
    for n in summary.notes:
        out.print(f"note: {n}", highlight=False)
    out.print(f"report: {Path(summary.out_dir) / 'report.md'}", highlight=False)


def _finish_prune(summary, allow_budget_miss: bool) -> None:
    """Exit non-zero (results already written) when the pruned model missed the accuracy
    gate, or when the deployed artifact, measured beside the original, missed the latency
    budget (unless ``--allow-budget-miss``)."""
    from edgeprune.errors import PruneError

    extra = summary.pruned.extra if summary.pruned is not None else {}
    gate = extra.get("accuracy_gate") or {}
    if gate.get("passed") is False:
        which = (f"the default limit of {gate['max_drop']:g}" if gate.get("default")
                 else f"allowed {gate['max_drop']:g}")
        raise PruneError(
            f"accuracy gate failed: the pruned model lost {gate['drop']:.2f} points ({which})",
            f"the pruned model was still built and measured: {summary.out_dir}/summary.json"
            + ("; set --max-accuracy-drop POINTS, or none for no limit" if gate.get("default") else ""),
        )
    if extra.get("budget_met") is False and not allow_budget_miss:
        raise PruneError(
            f"latency budget missed: the {summary.backend} artifact measured {extra['measured_ratio']:.3f}x the "
            f"original (budget {extra['budget_ratio']:.3f}x + 5 %)",
            f"everything was still built and measured: {summary.out_dir}/summary.json; a looser --latency-budget, "
            "a larger --profile-budget, or --allow-budget-miss",
        )


def _finish(summary) -> None:
    from edgeprune.errors import BenchError

    if summary.backend is None:
        raise BenchError(summary.choice_reason, f"partial results are in {summary.out_dir}/summary.json")


@click.command("compile")
@model_options
@target_option
@backend_option(auto="builds every backend of the target (on a CPU target not an untuned TVM: it never wins; "
                     "tune first or name it) and picks the fastest verified one.",
                help="Backend to build and benchmark.")
@device_options(help="Device to benchmark on (see `edgeprune devices`).")
@out_option("Output folder (default: out/<model>-<target>).", "out_dir")
@json_option("Print summary.json to stdout instead of the table.")
@click.option("--quantize", type=click.Choice(["none", "int8"]), default="none", show_default=True,
              help="int8: also build INT8 artifacts (post-training static quantization, calibrated on the model's "
                   "training data; after pruning) and time them beside fp32. INT8 parity is accuracy-based.")
@click.option("--calibration-samples", type=click.IntRange(1), default=256, show_default=True, metavar="N",
              help="Training samples that calibrate the INT8 activation ranges.")
@click.option("--precision", "precisions", type=click.Choice(list(REDUCED_PRECISIONS)), multiple=True,
              help="Also run the fp32 artifacts at this precision where the backend can (OpenVINO) and time them "
                   "beside fp32; repeatable. Needs the CPU's instructions (bf16: AMX-BF16 or AVX512-BF16; fp16: "
                   "AMX-FP16 or AVX512-FP16), checked before any export. Parity is accuracy-based, as for INT8.")
@bench_options
@prune_options(required=False)
@record_option
def compile_cmd(model: ModelArgs, target_name: str, backend: str, devices: DeviceArgs, out_dir: Path | None,
                as_json: bool, quantize: str, calibration_samples: int, precisions: tuple[str, ...],
                bench: BenchSettings, prune: PruneOptions | None, record_to: RecordOptions) -> None:
    """Export a model through ONNX, build it for a target, benchmark and verify it on a device.

    \b
    Writes to --out: model.onnx, bundle/ (artifacts + runner), summary.json, report.md.
    With --latency-budget / --latency-ms the model is first pruned for the target and
    fine-tuned; original and pruned are then measured side by side (original.onnx,
    pruned.pt are written too).
    Example: edgeprune compile --model zoo:digits-cnn --target host --latency-budget 0.5
    """
    from edgeprune.config.targets import get_target
    from edgeprune.flows.compile import CompileOptions, compile_model
    from edgeprune.flows.preflight import check_run

    target = get_target(target_name)
    device = devices.one()
    out_dir = out_dir or Path("out") / f"{model.stem}-{target.name}"
    check_run(target, [device], () if backend == "auto" else (backend,), dirs={"--out": out_dir}, db=record_to.path,
              prune=prune, lut=prune is not None, log=log)  # before the model is loaded (docs/cli.md, exit codes)
    if precisions:  # bf16 on a CPU without it: exit 5 before the model is loaded
        from edgeprune.compile.precision import check_for_device
        from edgeprune.compile.prepare import resolve_backends

        check_for_device(precisions, resolve_backends(() if backend == "auto" else (backend,), target), target,
                         device.kind == "local")
    loaded = model.load()
    opts = CompileOptions(
        backends=() if backend == "auto" else (backend,),
        bench=bench,
        prune=prune,
        quantize=None if quantize == "none" else quantize,
        calibration_samples=calibration_samples,
        precisions=tuple(dict.fromkeys(precisions)),
    )
    with recording("compile", record_to, out_dir, loaded.spec) as run:  # from the start: a stop keeps what it measured
        run.done(compile_model(loaded, target, device, out_dir, opts, log=log))
    summary = run.summary
    print_summary(summary, as_json)
    _finish(summary)
    _finish_prune(summary, prune is not None and prune.allow_budget_miss)


@click.command("bench")
@model_options
@target_option
@backend_option(auto=None, default=BENCH_DEFAULT_BACKEND, help="Backend to benchmark.")
@click.option("--artifact", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="FILE",
              help="A prebuilt artifact of --backend (.onnx / .xml / .so) to time instead of building one; "
                   "--model still provides inputs and reference outputs.")
@device_options(multiple=True,
                help="Device to benchmark on; repeat for several devices, benchmarked in parallel "
                     "(results in --out/<device>/).")
@out_option("Output folder (default: out/<model>-<target>-bench; one subfolder per device with several "
            "--device).", "out_dir")
@json_option("Print the summary as JSON (a list, one entry per device, with several --device).")
@bench_options
@record_option
def bench_cmd(model: ModelArgs, target_name: str, backend: str, artifact: Path | None, devices: DeviceArgs,
              out_dir: Path | None, as_json: bool, bench: BenchSettings, record_to: RecordOptions) -> None:
    """Benchmark one backend (or a prebuilt artifact) of a model on one or more devices.

    \b
    Several --device options run in parallel, one thread per device; each board still
    runs one benchmark at a time (a lock on the board), also across processes.
    """
    from edgeprune.config.targets import get_target
    from edgeprune.flows.compile import CompileOptions, compile_model
    from edgeprune.flows.preflight import check_run

    target = get_target(target_name)
    boards = devices.resolve()
    out_dir = out_dir or Path("out") / f"{model.stem}-{target.name}-bench"
    check_run(target, boards, (backend,), dirs={"--out": out_dir}, db=record_to.path,
              prebuilt=(backend,) if artifact else (), log=log)  # before the model is loaded (docs/cli.md, exit codes)
    loaded = model.load()
    opts = CompileOptions(
        backends=(backend,),
        bench=bench,
        prebuilt=((backend, str(artifact)),) if artifact else (),
    )
    if len(boards) > 1:
        from edgeprune.cli.multi_device import bench_many

        return bench_many(loaded, target, boards, out_dir, opts, as_json, record_to)
    with recording("bench", record_to, out_dir, loaded.spec) as run:
        run.done(compile_model(loaded, target, boards[0], out_dir, opts, log=log))
    summary = run.summary
    print_summary(summary, as_json)
    _finish(summary)
