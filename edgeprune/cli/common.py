"""Options shared by several commands, defined once."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import click


def _parse_shape(ctx, param, values: tuple[str, ...]) -> list[tuple[int, ...]] | None:
    if not values:
        return None
    shapes = []
    for v in values:
        try:
            dims = tuple(int(d) for d in v.lower().replace(",", "x").split("x"))
        except ValueError:
            raise click.BadParameter(f"'{v}' is not a shape; write it like 1x3x224x224") from None
        if not dims or any(d <= 0 for d in dims):
            raise click.BadParameter(f"'{v}': every dimension must be a positive integer")
        shapes.append(dims)
    return shapes


def model_options(f: Callable) -> Callable:
    """--model and the options that say how to read it."""

    @click.option(
        "--model", "-m", "model_spec", required=True, metavar="SPEC",
        help="zoo:NAME, a .onnx file, module:factory (+ --weights), TorchScript (.pt/.ts) or torch.export (.pt2) file.",
    )
    @click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  help="state_dict for a module:factory model (loaded with weights_only=True).")
    @click.option("--input-shape", "input_shape", multiple=True, callback=_parse_shape, metavar="1x3x224x224",
                  help="Input shape, once per input, when the model does not say.")
    @click.option("--allow-pickle", is_flag=True,
                  help="Allow a fully pickled torch model. Unpickling EXECUTES CODE from the file: only for files you trust.")
    @click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  help=".npz with x_train, y_train, x_val, y_val for accuracy checks (and fine-tuning).")
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        return f(*args, **kwargs)

    return wrapper


def load_model_from_options(model_spec: str, weights, input_shape, allow_pickle: bool, data):
    from edgeprune.cli.output import log
    from edgeprune.models.spec import load_model

    return load_model(model_spec, weights=weights, input_shape=input_shape, allow_pickle=allow_pickle, data=data, log=log)


def bench_options(f: Callable) -> Callable:
    @click.option("--threads", type=click.IntRange(1), help="Threads per inference (default: the target's cores).")
    @click.option("--min-runs", type=click.IntRange(1), default=50, show_default=True, help="Minimum timed runs.")
    @click.option("--min-time", type=click.FloatRange(0), default=1.0, show_default=True, help="Minimum timed seconds.")
    @click.option("--max-time", type=click.FloatRange(0.1), default=30.0, show_default=True,
                  help="Stop timing one artifact after this many seconds even if --min-runs is not reached.")
    @click.option("--warmup", type=click.IntRange(0), default=10, show_default=True, help="Untimed warm-up runs.")
    @click.option("--timeout", type=click.FloatRange(1), default=1800.0, show_default=True,
                  help="Seconds before a device run is killed (results finished so far are kept).")
    @click.option("--rounds", type=click.IntRange(1), default=3, show_default=True, expose_value=False,
                  callback=_store_meta,
                  help="With several artifacts, split their timing into this many interleaved rounds (A B C, B C A, "
                       "...): they are compared in the same stretch of time, and --backend auto decides on the "
                       "fast state of the round medians (those within 10 %% of the fastest round).")
    @click.option("--steady-gate", is_flag=True, expose_value=False, callback=_store_meta,
                  help="Time each artifact in the device's steady state: the runner probes before and after each "
                       "series and waits or re-times through slow episodes (shared VMs, thermally throttling "
                       "boards); the wait is recorded in each result's env.timing.gate.")
    @click.option("--eval-samples", type=click.IntRange(1), expose_value=False, callback=_store_meta,
                  help="Score accuracy on at most this many held-out samples (default: all; "
                       "fewer for slow or emulated devices).")
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        return f(*args, **kwargs)

    return wrapper


def _store_meta(ctx: click.Context, param: click.Parameter, value):
    # options every bench command shares without widening each command's signature
    ctx.meta[f"edgeprune.{param.name}"] = value
    return value


def bench_settings(threads, min_runs, min_time, max_time, warmup, timeout):
    from edgeprune.compile.pipeline import BenchSettings

    ctx = click.get_current_context(silent=True)
    eval_samples = ctx.meta.get("edgeprune.eval_samples") if ctx is not None else None
    rounds = ctx.meta.get("edgeprune.rounds") if ctx is not None else None
    gate = bool(ctx.meta.get("edgeprune.steady_gate")) if ctx is not None else False
    return BenchSettings(warmup=warmup, min_runs=min_runs, min_time_s=min_time, max_time_s=max_time,
                         threads=threads, timeout_s=timeout, eval_samples=eval_samples, rounds=rounds or 3,
                         steady_gate=gate)
