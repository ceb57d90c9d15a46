"""The ``edgeprune`` command: a thin click layer over the library.

Subcommands live in one module each and import heavy frameworks only inside the command
body, so ``edgeprune --help`` does not pay for torch/TVM. Every :class:`EdgepruneError`
is caught here, once, and printed as one line with its exit code; ``--debug`` (or
``EDGEPRUNE_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from edgeprune import __version__
from edgeprune.errors import EdgepruneError

# command name -> "module:attribute", loaded on first use
_COMMANDS = {
    "compile": "edgeprune.cli.compile_cmd:compile_cmd",
    "bench": "edgeprune.cli.compile_cmd:bench_cmd",
    "targets": "edgeprune.cli.info:targets_cmd",
    "devices": "edgeprune.cli.info:devices_cmd",
    "models": "edgeprune.cli.info:models_cmd",
    "profile": "edgeprune.cli.profile_cmd:profile_cmd",
    "prune": "edgeprune.cli.prune_cmd:prune_cmd",
    "results": "edgeprune.cli.results_cmd:results_cmd",
    "nightly": "edgeprune.cli.nightly_cmd:nightly_cmd",
    "report": "edgeprune.cli.report_cmd:report_cmd",
    "tune": "edgeprune.cli.tune_cmd:tune_cmd",
}


class _Failure(click.ClickException):
    def __init__(self, err: EdgepruneError) -> None:
        super().__init__(str(err))
        self.exit_code = err.exit_code


class LazyGroup(click.Group):
    """Loads subcommand modules on demand and maps package errors to exit codes."""

    extra_commands: dict[str, str] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({**_COMMANDS, **self.extra_commands})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = {**_COMMANDS, **self.extra_commands}.get(name)
        if target is None:
            return None
        mod, attr = target.split(":")
        return getattr(importlib.import_module(mod), attr)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgepruneError as err:
            if _debug(ctx):
                raise
            raise _Failure(err) from None
        except KeyboardInterrupt:
            click.echo("interrupted: results already written are kept", err=True)
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug or an unexpected library failure
            if _debug(ctx):
                raise
            first = (str(exc).strip().splitlines() or [""])[0]
            click.echo(
                f"Error: unexpected {type(exc).__name__}: {first} (rerun with --debug for the traceback)", err=True
            )
            sys.exit(1)


def _debug(ctx: click.Context) -> bool:
    root = ctx.find_root()
    return bool((root.obj or {}).get("debug")) or os.environ.get("EDGEPRUNE_DEBUG") == "1"


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeprune")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Hardware-aware pruning, compilation and on-device benchmarking for edge targets.

    \b
    Quick start:
      edgeprune compile --model zoo:digits-cnn --target host
      edgeprune targets          # hardware targets you can compile for
      edgeprune devices          # devices you can benchmark on
    """
    ctx.obj = {"debug": debug}


def main() -> None:
    cli(prog_name="edgeprune")
