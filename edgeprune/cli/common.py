"""Options shared by several commands, defined once, so one name means one thing.

The conventions they follow are written down in ``docs/cli.md``; ``tests/test_help.py``
checks them on every command. A decorator here that covers several options hands the
command *one typed value* instead of loose keywords, so what the user chose travels as
an object from the command line to the code that uses it:

- :func:`model_options` -> ``model: ModelArgs``
- :func:`device_options` -> ``devices: DeviceArgs`` (names, devices.yaml, host-key trust)
- :func:`bench_options` -> ``bench: BenchSettings``
- ``prune_options`` (in :mod:`edgeprune.cli.prune_cmd`) -> ``prune: PruneOptions | None``

Nothing heavy is imported at module level: ``edgeprune --help`` loads every command
module to list them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edgeprune.bench.settings import BenchSettings

if TYPE_CHECKING:
    from edgeprune.config.devices import Device
    from edgeprune.models.base import LoadedModel

#: the default of every bench option, so the CLI never restates a job default
_BENCH = BenchSettings()


# ---------------------------------------------------------------- commands
class ContractCommand(click.Command):
    """A command whose exit status is a contract for cron and CI (``nightly``): every
    failure, whatever its kind, exits with ``failure_exit_code``. The CLI's one error
    handler (:class:`edgeprune.cli.LazyGroup`) reads it; the command maps nothing itself."""

    def __init__(self, *args: Any, failure_exit_code: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failure_exit_code = failure_exit_code


# ---------------------------------------------------------------- parameter types
class Duration(click.ParamType):
    """A length of time in the one grammar of :mod:`edgeprune.durations` (``90s``,
    ``30m``, ``1h30m``, ``7d``, or a bare number of seconds), converted to seconds."""

    name = "duration"

    def __init__(self, minimum: float = 0.0, min_open: bool = True) -> None:
        self.minimum = minimum
        self.min_open = min_open

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        from edgeprune.durations import parse_duration

        if isinstance(value, (int, float)):
            seconds = float(value)
        else:
            try:
                seconds = parse_duration(str(value))
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is not a finite duration", param, ctx)
        if seconds < self.minimum or (self.min_open and seconds == self.minimum):
            bound = ">" if self.min_open else ">="
            self.fail(f"must be {bound} {self.minimum:g} s", param, ctx)
        return seconds


class FiniteFloat(click.FloatRange):
    """A float option's one type: a real, finite number, optionally in a range.

    ``click.FloatRange`` lets ``nan`` through (every comparison with it is false), so
    ``--latency-budget nan`` passed the option check and failed after the export; ``inf``
    passes any open upper end. Every float option of every command uses this type
    (``tests/test_preflight.py`` checks), so a bad number is a usage error (exit 2) before
    anything runs."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


class FiniteFloatOrNone(FiniteFloat):
    """A :class:`FiniteFloat`, or the word ``none`` (returned as :data:`NONE`): a limit
    that has a default, which the user may turn off (``--max-accuracy-drop none``)."""

    name = "number|none"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is NONE or (isinstance(value, str) and value.strip().lower() == NONE):
            return NONE
        return super().convert(value, param, ctx)


#: what :class:`FiniteFloatOrNone` returns for ``none``
NONE = "none"


class OutPath(click.Path):
    """An output path (``--out``, a ``-dir`` option) that this process can write, checked
    when the command line is read, before anything runs (:mod:`edgeprune.flows.preflight`:
    a probe file, not mode bits). An unwritable one is an :class:`~edgeprune.errors.OutputError`
    (one line, exit 2). ``-`` (stdout) passes as it is."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from edgeprune.flows.preflight import writable_dir, writable_file

        path = super().convert(value, param, ctx)
        if str(path) == "-" and self.allow_dash:
            return path
        what = next((o for o in getattr(param, "opts", ()) if o.startswith("--")), "output path")
        (writable_file if not self.dir_okay else writable_dir)(path, what)
        return path


def _parse_shape(ctx, param, values: tuple[str, ...]) -> tuple[tuple[int, ...], ...] | None:
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
    return tuple(shapes)


def backend_names() -> list[str]:
    """The registered backends: the one list every ``--backend`` choice comes from."""
    from edgeprune.compile.backends import BACKENDS

    return BACKENDS.names()


# ---------------------------------------------------------------- option groups -> typed values
def collect_options(options: list[Callable], into: str, build: Callable[[dict[str, Any], dict[str, Any]], Any],
             keys: tuple[str, ...]) -> Callable[[Callable], Callable]:
    """Apply ``options`` and hand the command ``into=build(values, other_kwargs)`` in place
    of the keywords ``keys`` (which the command then never sees)."""

    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            values = {k: kwargs.pop(k) for k in keys}
            kwargs[into] = build(values, kwargs)
            return f(*args, **kwargs)

        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorate


@dataclass(frozen=True)
class ModelArgs:
    """What ``--model`` and the options that say how to read it asked for. Loading is
    deferred to :meth:`load`, so a command can refuse bad options before paying for
    torch and the model."""

    spec: str
    weights: Path | None = None
    input_shapes: tuple[tuple[int, ...], ...] | None = None
    allow_pickle: bool = False
    data: Path | None = None

    @property
    def stem(self) -> str:
        """A file-name-safe short name, for default output folders (``zoo:digits-cnn`` ->
        ``digits-cnn``, ``models/net.onnx`` -> ``models_net``)."""
        flat = self.spec.replace("zoo:", "").replace(":", "-").replace("/", "_").rsplit(".", 1)[0]
        return Path(flat).name

    def load(self) -> LoadedModel:
        from edgeprune.cli.output import log
        from edgeprune.models.spec import load_model

        return load_model(self.spec, weights=self.weights, input_shape=self.input_shapes,
                          allow_pickle=self.allow_pickle, data=self.data, log=log)


model_options = collect_options(
    [
        click.option("--model", "-m", "spec", required=True, metavar="SPEC",
                     help="zoo:NAME, a .onnx file, module:factory (+ --weights), TorchScript (.pt/.ts) or "
                          "torch.export (.pt2) file."),
        click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="state_dict for a module:factory model (loaded with weights_only=True)."),
        click.option("--input-shape", "input_shapes", multiple=True, callback=_parse_shape, metavar="1x3x224x224",
                     help="Input shape, once per input, when the model does not say."),
        click.option("--allow-pickle", is_flag=True,
                     help="Allow a fully pickled torch model. Unpickling EXECUTES CODE from the file: only for "
                          "files you trust."),
        click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help=".npz with x_train, y_train, x_val, y_val for accuracy checks (and fine-tuning)."),
    ],
    into="model",
    build=lambda v, _: ModelArgs(**v),
    keys=("spec", "weights", "input_shapes", "allow_pickle", "data"),
)
model_options.__doc__ = "--model/-m and the options that say how to read it -> ``model: ModelArgs``."


@dataclass(frozen=True)
class DeviceArgs:
    """``--device`` (one or several), ``--devices`` and ``--insecure-accept-new-host-key``:
    which devices, from which devices.yaml, and whether an unknown SSH host key may be
    trusted on this run (it becomes each device's ``host_key_policy``)."""

    names: tuple[str, ...] = ("local",)
    devices_file: Path | None = None
    accept_new_host_key: bool = False

    def resolve(self) -> list[Device]:
        """The named devices, each once, in the order given (ConfigError if unknown)."""
        from edgeprune.config.devices import get_device

        return [get_device(n, self.devices_file, self.accept_new_host_key) for n in dict.fromkeys(self.names)]

    def one(self) -> Device:
        """The first named device (commands that run on one)."""
        return self.resolve()[0]

    def all(self) -> list[Device]:
        """Every device of the devices file (``devices check`` with no names)."""
        from edgeprune.config.devices import load_devices

        return load_devices(self.devices_file, self.accept_new_host_key)


def devices_file_option(f: Callable) -> Callable:
    """``--devices FILE``: the devices.yaml to read."""
    return click.option("--devices", "devices_file", type=click.Path(dir_okay=False, path_type=Path),
                        help="devices.yaml to read (default: $EDGEPRUNE_DEVICES, else ./devices.yaml).")(f)


def host_key_option(f: Callable) -> Callable:
    """``--insecure-accept-new-host-key`` for every command that may open an SSH connection."""
    return click.option(
        "--insecure-accept-new-host-key", "accept_new_host_key", is_flag=True,
        help="Trust (and save to known_hosts) the key of an SSH device seen for the first time. "
             "A changed key is still refused. Default: unknown keys are refused.",
    )(f)


def device_options(multiple: bool = False, help: str = "Device to run on (see `edgeprune devices`).") -> Callable:
    """``--device/-d NAME`` (repeatable when ``multiple``), ``--devices FILE`` and
    ``--insecure-accept-new-host-key`` -> ``devices: DeviceArgs``."""
    return collect_options(
        [
            click.option("--device", "-d", "device_names", multiple=multiple,
                         default=("local",) if multiple else "local", show_default=True, metavar="NAME", help=help),
            devices_file_option,
            host_key_option,
        ],
        into="devices",
        build=lambda v, _: DeviceArgs(
            names=tuple(v["device_names"]) if multiple else (v["device_names"],),
            devices_file=v["devices_file"], accept_new_host_key=v["accept_new_host_key"],
        ),
        keys=("device_names", "devices_file", "accept_new_host_key"),
    )


def target_option(f: Callable) -> Callable:
    """``--target/-t NAME|FILE`` (the command resolves it with ``get_target``)."""
    return click.option("--target", "-t", "target_name", default="host", show_default=True, metavar="NAME|FILE",
                        help="Hardware target: a name from `edgeprune targets` or a target YAML file.")(f)


def backend_option(auto: str | None, help: str, default: str = "auto") -> Callable:
    """``--backend/-b``, its choices from the backend registry; ``auto`` (when ``auto`` says
    what it means for this command) lets edgeprune choose."""
    names = backend_names()
    choices = (["auto"] if auto else []) + names
    text = help + (f" auto: {auto}" if auto else "")
    return click.option("--backend", "-b", type=click.Choice(choices), default=default, show_default=True,
                        help=text)


def out_option(help: str, dest: str, *, file: bool = False, default: Path | None = None,
               callback: Callable | None = None, allow_dash: bool = False) -> Callable:
    """``--out/-o``: where the command writes its result (a folder, or a file when ``file``)."""
    kind = OutPath(dir_okay=not file, file_okay=file, allow_dash=allow_dash, path_type=Path)
    return click.option("--out", "-o", dest, type=kind, default=default, show_default=default is not None,
                        metavar="FILE" if file else "DIR", callback=callback, help=help)


def json_option(help: str = "Print the result as JSON on stdout instead of tables (messages stay on stderr).") \
        -> Callable:
    """``--json``: always a flag; the machine-readable result goes to stdout."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def threads_option(help: str = "Threads per inference (default: the target's cores).") -> Callable:
    return click.option("--threads", type=click.IntRange(1), metavar="N", help=help)


def tables_option() -> Callable:
    """``--tables model|full``: where layer latencies come from (ProfileSettings.tables)."""
    return click.option(
        "--tables", type=click.Choice(["model", "full"]), default="model", show_default=True,
        help="model: the device latency model (built once per device with `edgeprune device-model build`) plus "
             "the few points this model needs; full: measure a table of every layer of this model (slow; the "
             "reference). Without a device model, model falls back to full and says so.")


def profile_budget_option() -> Callable:
    """``--profile-budget DURATION``: device time a device-model profile may spend on the model."""
    return click.option(
        "--profile-budget", "profile_budget", type=Duration(), default="3m", show_default=True, metavar="DURATION",
        help="With --tables model: device time to spend measuring this model's own layers (full-width anchors, "
             "then the most uncertain widths) and its end-to-end calibration, e.g. 90s, 5m.")


def keep_layer_option(help: str) -> Callable:
    """``--keep-layer NAME`` (repeatable): a layer whose channels are never pruned."""
    return click.option("--keep-layer", "keep_layers", multiple=True, metavar="NAME", help=help)


def seed_option(help: str) -> Callable:
    return click.option("--seed", type=int, default=0, show_default=True, metavar="N", help=help)


def since_option(default: str | None, help: str) -> Callable:
    """``--since``: a window back from now (a duration) or an ISO date."""
    return click.option("--since", default=default, show_default=default is not None, metavar="30d|DATE",
                        help=help + " A duration (30d, 12h, 2w) or an ISO date.")


def steady_gate_option(default: bool, help: str) -> Callable:
    return click.option("--steady-gate/--no-steady-gate", "steady_gate", default=default, show_default=True,
                        help=help)


def _bench_settings(v: dict[str, Any], _: dict[str, Any]) -> BenchSettings:
    return BenchSettings(warmup=v["warmup"], min_runs=v["min_runs"], min_time_s=v["min_time"],
                         max_time_s=v["max_time"], threads=v["threads"], timeout_s=v["timeout"],
                         eval_samples=v["eval_samples"], rounds=v["rounds"], steady_gate=v["steady_gate"],
                         wait_for_device=not v["no_wait"])


bench_options = collect_options(
    [
        threads_option(),
        click.option("--min-runs", type=click.IntRange(1), default=_BENCH.min_runs, show_default=True, metavar="N",
                     help="Minimum timed runs."),
        click.option("--min-time", type=Duration(0, min_open=False), default=_BENCH.min_time_s, show_default=True,
                     help="Minimum timed duration (seconds, or like 30s)."),
        click.option("--max-time", type=Duration(0.1, min_open=False), default=_BENCH.max_time_s, show_default=True,
                     help="Stop timing one artifact after this long even if --min-runs is not reached."),
        click.option("--warmup", type=click.IntRange(0), default=_BENCH.warmup, show_default=True, metavar="N",
                     help="Untimed warm-up runs."),
        click.option("--timeout", type=Duration(1, min_open=False), default=_BENCH.timeout_s, show_default=True,
                     help="Kill a device run after this long (results finished so far are kept)."),
        click.option("--rounds", type=click.IntRange(1), default=_BENCH.rounds, show_default=True, metavar="N",
                     help="With several artifacts, split their timing into this many interleaved rounds (A B C, "
                          "B C A, ...): they are compared in the same stretch of time, and --backend auto decides "
                          "on the fast state of the round medians (those within 10 % of the fastest round)."),
        steady_gate_option(_BENCH.steady_gate,
                           "Time each artifact in the device's steady state: the runner probes before and after "
                           "each series and waits or re-times through slow episodes (shared VMs, thermally "
                           "throttling boards); the wait is recorded in each result's env.timing.gate."),
        click.option("--eval-samples", type=click.IntRange(1), metavar="N",
                     help="Score accuracy on at most this many held-out samples (default: all; fewer for slow or "
                          "emulated devices)."),
        click.option("--no-wait", "no_wait", is_flag=True,
                     help="Fail at once (exit code 7) when the device is busy with another run, instead of "
                          "waiting for it: one device times one run at a time."),
    ],
    into="bench",
    build=_bench_settings,
    keys=("threads", "min_runs", "min_time", "max_time", "warmup", "timeout", "rounds", "steady_gate",
          "eval_samples", "no_wait"),
)
bench_options.__doc__ = "How long and how carefully to measure -> ``bench: BenchSettings``."
