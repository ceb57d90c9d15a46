"""The ``edgeprune`` command: a thin click layer over the library.

Subcommands live in one module each and import heavy frameworks only inside the command
body, so ``edgeprune --help`` does not pay for torch/TVM. Errors are mapped to exit
codes here and nowhere else (:meth:`LazyGroup.invoke`): every :class:`EdgepruneError`
prints as one line and exits with its kind's code (:mod:`edgeprune.errors`); ``--debug``
(before or after the verb) or ``EDGEPRUNE_DEBUG=1`` shows the traceback instead. The
option conventions are in ``docs/cli.md``.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass

import click

from edgeprune import __version__
from edgeprune.errors import EdgepruneError, Interrupted
from edgeprune.signals import stop_signals_raise

# command name -> "module:attribute", loaded on first use
_COMMANDS = {
    "compile": "edgeprune.cli.compile_cmd:compile_cmd",
    "bench": "edgeprune.cli.compile_cmd:bench_cmd",
    "targets": "edgeprune.cli.info:targets_cmd",
    "devices": "edgeprune.cli.info:devices_cmd",
    "device-model": "edgeprune.cli.device_model_cmd:device_model_cmd",
    "models": "edgeprune.cli.info:models_cmd",
    "profile": "edgeprune.cli.profile_cmd:profile_cmd",
    "prune": "edgeprune.cli.prune_cmd:prune_cmd",
    "results": "edgeprune.cli.results_cmd:results_cmd",
    "nightly": "edgeprune.cli.nightly_cmd:nightly_cmd",
    "report": "edgeprune.cli.report_cmd:report_cmd",
    "tune": "edgeprune.cli.tune_cmd:tune_cmd",
}

#: exit status of a failure that is not an EdgepruneError (a bug, or a library surprise)
EXIT_UNEXPECTED = 1

DEBUG_HELP = "Show full tracebacks on errors (also after the verb; or set EDGEPRUNE_DEBUG=1)."


@dataclass
class CliState:
    """The root context's ``obj``: what holds for the whole invocation, whichever
    command set it (``--debug`` may come before or after the verb)."""

    debug: bool = False


def _state(ctx: click.Context) -> CliState:
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState()
    return root.obj


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        _state(ctx).debug = True


def _debug_option() -> click.Option:
    return click.Option(["--debug"], is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
                        help=DEBUG_HELP)


def _with_debug(cmd: click.Command) -> click.Command:
    """Give ``cmd`` (and, for a group, each subcommand) the ``--debug`` option, once."""
    if not any(p.name == "debug" for p in cmd.params):
        cmd.params.append(_debug_option())
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            _with_debug(sub)
    return cmd


class _Failure(click.ClickException):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class LazyGroup(click.Group):
    """Loads subcommand modules on demand and maps every failure to its exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = _COMMANDS.get(name)
        if target is None:
            return None
        mod, attr = target.split(":")
        return _with_debug(getattr(importlib.import_module(mod), attr))

    def invoke(self, ctx: click.Context):
        try:
            with stop_signals_raise():  # SIGTERM / SIGHUP stop a run the way Ctrl-C does
                return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except EdgepruneError as err:
            if _debug(ctx):
                raise
            raise _Failure(str(err), self._contract(ctx) or err.exit_code) from None
        except KeyboardInterrupt as exc:
            stop = Interrupted.of(exc)
            click.echo(f"interrupted ({stop}): {_kept(stop)}", err=True)
            sys.exit(self._contract(ctx) or stop.exit_code)
        except Exception as exc:  # a bug or an unexpected library failure
            if _debug(ctx):
                raise
            first = (str(exc).strip().splitlines() or [""])[0]
            click.echo(
                f"Error: unexpected {type(exc).__name__}: {first} (rerun with --debug for the traceback)", err=True
            )
            sys.exit(self._contract(ctx) or EXIT_UNEXPECTED)

    def _contract(self, ctx: click.Context) -> int | None:
        """The exit code a command promises for *every* failure (``nightly``: 2), if any."""
        name = ctx.invoked_subcommand
        cmd = self.get_command(ctx, name) if name else None
        return getattr(cmd, "failure_exit_code", None)


def _kept(stop: Interrupted) -> str:
    """What an interrupted run kept, as the layer that was stopped reported it."""
    return stop.kept or "results already written are kept"


def _debug(ctx: click.Context) -> bool:
    return _state(ctx).debug or os.environ.get("EDGEPRUNE_DEBUG") == "1"


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeprune")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Hardware-aware pruning, compilation and on-device benchmarking for edge targets.

    \b
    Quick start:
      edgeprune compile --model zoo:digits-cnn --target host
      edgeprune targets          # hardware targets you can compile for
      edgeprune devices          # devices you can benchmark on
    Options mean the same on every command: see docs/cli.md.
    """
    _state(ctx)


_with_debug(cli)


def main() -> None:
    cli(prog_name="edgeprune")
