"""``edgeprune compile`` and ``edgeprune bench``."""

from __future__ import annotations

from pathlib import Path

import click

from edgeprune.cli.common import bench_options, bench_settings, load_model_from_options, model_options
from edgeprune.cli.devices_check import ssh_options
from edgeprune.cli.output import log, out, print_json, table
from edgeprune.cli.prune_cmd import prune_options, prune_settings
from edgeprune.cli.results_cmd import record, record_option

BACKEND_CHOICES = ["auto", "onnxruntime", "openvino", "tvm"]


def _default_out(model_spec: str, target: str) -> Path:
    stem = model_spec.replace("zoo:", "").replace(":", "-").replace("/", "_").rsplit(".", 1)[0]
    return Path("out") / f"{Path(stem).name}-{target}"


def print_summary(summary, as_json: bool) -> None:
    if as_json:
        print_json(summary.to_dict())
        return
    rows = []
    for b in summary.backends:
        lat = b.latency_ms
        parity = None if b.verified is None else ("pass" if b.verified else "FAIL") + f" ({b.max_abs_diff:.1e})"
        rows.append([
            ("* " if b.name == summary.backend else "  ") + b.name,
            f"{lat.median:.3f}" if lat else None,
            f"{lat.p90:.3f}" if lat else None,
            f"{lat.cv:.1%}" if lat else None,
            b.runs or None,
            f"{b.speedup_vs_reference:.2f}x" if b.speedup_vs_reference else None,
            parity,
            f"{b.accuracy:.2f}%" if b.accuracy is not None else None,
            (b.error or "")[:80] or None,
        ])
    title = f"{summary.model} on {summary.target} / device {summary.device}"
    if summary.emulated:
        title += " (EMULATED: timings meaningless)"
    table(title, ["backend", "median ms", "p90 ms", "CV", "runs", "vs ORT", "parity", "accuracy", "error"], rows,
          right={1, 2, 3, 4, 5})
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
    for n in summary.notes:
        out.print(f"note: {n}", highlight=False)
    out.print(f"report: {Path(summary.out_dir) / 'report.md'}", highlight=False)


def _finish_prune(summary) -> None:
    """Exit non-zero (results already written) when the pruned model missed the accuracy gate."""
    from edgeprune.errors import PruneError

    gate = (summary.pruned.extra.get("accuracy_gate") if summary.pruned is not None else None) or {}
    if gate.get("passed") is False:
        raise PruneError(
            f"accuracy gate failed: the pruned model lost {gate['drop']:.2f} points (allowed {gate['max_drop']:g})",
            f"the pruned model was still built and measured: {summary.out_dir}/summary.json",
        )


def _finish(summary) -> None:
    from edgeprune.errors import BenchError

    if summary.backend is None:
        raise BenchError(summary.choice_reason, f"partial results are in {summary.out_dir}/summary.json")


@click.command("compile")
@model_options
@click.option("--target", "-t", "target_name", default="host", show_default=True, help="Target name (see `edgeprune targets`) or a target YAML file.")
@click.option("--backend", "-b", type=click.Choice(BACKEND_CHOICES), default="auto", show_default=True,
              help="auto builds every backend of the target and picks the fastest verified one.")
@click.option("--device", "-d", "device_name", default="local", show_default=True, help="Device to benchmark on (see `edgeprune devices`).")
@click.option("--devices", "devices_file", type=click.Path(dir_okay=False, path_type=Path), help="devices.yaml to read.")
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (default: out/<model>-<target>).")
@click.option("--json", "as_json", is_flag=True, help="Print summary.json to stdout instead of the table.")
@click.option("--quantize", type=click.Choice(["none", "int8"]), default="none", show_default=True,
              help="int8: also build INT8 artifacts (post-training static quantization, calibrated on the model's "
                   "training data; after pruning) and time them beside fp32. INT8 parity is accuracy-based.")
@click.option("--calibration-samples", type=click.IntRange(1), default=256, show_default=True,
              help="Training samples that calibrate the INT8 activation ranges.")
@bench_options
@prune_options
@ssh_options
@record_option
def compile_cmd(model_spec, weights, input_shape, allow_pickle, data, target_name, backend, device_name, devices_file,
                out_dir, as_json, quantize, calibration_samples, threads, min_runs, min_time, max_time, warmup, timeout,
                **prune_kw) -> None:
    """Export a model through ONNX, build it for a target, benchmark and verify it on a device.

    \b
    Writes to --out: model.onnx, bundle/ (artifacts + runner), summary.json, report.md.
    With --latency-budget / --latency-ms the model is first pruned for the target and
    fine-tuned; original and pruned are then measured side by side (original.onnx,
    pruned.pt are written too).
    Example: edgeprune compile --model zoo:digits-cnn --target host --latency-budget 0.5
    """
    from edgeprune.compile.pipeline import CompileOptions, compile_model
    from edgeprune.config.devices import get_device
    from edgeprune.config.targets import get_target

    prune = prune_settings(prune_kw, backend, required=False)
    target = get_target(target_name)
    device = get_device(device_name, devices_file)
    model = load_model_from_options(model_spec, weights, input_shape, allow_pickle, data)
    out_dir = out_dir or _default_out(model_spec, target.name)
    opts = CompileOptions(
        backends=() if backend == "auto" else (backend,),
        bench=bench_settings(threads, min_runs, min_time, max_time, warmup, timeout),
        prune=prune,
        quantize=None if quantize == "none" else quantize,
        calibration_samples=calibration_samples,
    )
    summary = compile_model(model, target, device, out_dir, opts, log=log)
    record(summary, "compile")
    print_summary(summary, as_json)
    _finish(summary)
    _finish_prune(summary)


@click.command("bench")
@model_options
@click.option("--target", "-t", "target_name", default="host", show_default=True, help="Target name or YAML file.")
@click.option("--backend", "-b", type=click.Choice(BACKEND_CHOICES[1:]), default="onnxruntime", show_default=True)
@click.option("--artifact", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A prebuilt artifact of --backend (.onnx / .xml / .so) to time instead of building one; "
                   "--model still provides inputs and reference outputs.")
@click.option("--device", "-d", "device_names", multiple=True, default=("local",), show_default=True,
              help="Device to benchmark on; repeat for several devices, benchmarked in parallel "
                   "(results in --out/<device>/).")
@click.option("--devices", "devices_file", type=click.Path(dir_okay=False, path_type=Path), help="devices.yaml to read.")
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@bench_options
@ssh_options
@record_option
def bench_cmd(model_spec, weights, input_shape, allow_pickle, data, target_name, backend, artifact, device_names,
              devices_file, out_dir, as_json, threads, min_runs, min_time, max_time, warmup, timeout) -> None:
    """Benchmark one backend (or a prebuilt artifact) of a model on one or more devices.

    \b
    Several --device options run in parallel, one thread per device; each board still
    runs one benchmark at a time (a lock on the board), also across processes.
    """
    from edgeprune.compile.pipeline import CompileOptions, compile_model
    from edgeprune.config.devices import get_device
    from edgeprune.config.targets import get_target

    target = get_target(target_name)
    devices = [get_device(n, devices_file) for n in dict.fromkeys(device_names)]
    model = load_model_from_options(model_spec, weights, input_shape, allow_pickle, data)
    out_dir = out_dir or _default_out(model_spec, target.name + "-bench")
    opts = CompileOptions(
        backends=(backend,),
        bench=bench_settings(threads, min_runs, min_time, max_time, warmup, timeout),
        prebuilt=((backend, str(artifact)),) if artifact else (),
    )
    if len(devices) > 1:
        from edgeprune.cli.multi_device import bench_many

        return bench_many(model, target, devices, out_dir, opts, as_json)
    summary = compile_model(model, target, devices[0], out_dir, opts, log=log)
    record(summary, "bench")
    print_summary(summary, as_json)
    _finish(summary)
