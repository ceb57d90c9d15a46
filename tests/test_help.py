"""Every ``--help`` renders, and the option vocabulary of docs/cli.md holds on every verb.

In-process with click's CliRunner: nothing is built or measured, so this is fast.
"""

from __future__ import annotations

import re
from collections import defaultdict

import click
import pytest
from click.testing import CliRunner

from edgeprune.cli import cli
from edgeprune.cli.common import Duration, backend_names


def _commands() -> list[tuple[tuple[str, ...], click.Command]]:
    """Every command and subcommand, with the words that invoke it (the root is ``()``)."""
    ctx = click.Context(cli)
    found = []

    def walk(cmd: click.Command, path: tuple[str, ...]) -> None:
        found.append((path, cmd))
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, name), (*path, name))

    walk(cli, ())
    return found


COMMANDS = _commands()
IDS = [" ".join(p) or "edgeprune" for p, _ in COMMANDS]


def _options(cmd: click.Command) -> list[click.Option]:
    return [p for p in cmd.params if isinstance(p, click.Option)]


def _long(opt: click.Option) -> list[str]:
    return [o for o in opt.opts + opt.secondary_opts if o.startswith("--")]


def test_every_verb_is_found():
    names = {p for p, _ in COMMANDS}
    for verb in ("compile", "bench", "profile", "prune", "tune", "nightly", "report", "targets", "models",
                 "devices", "results"):
        assert (verb,) in names
    assert ("devices", "check") in names and ("results", "compare") in names


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=IDS)
def test_help_renders_without_literal_percent_escapes(path):
    for flag in ("--help", "-h"):
        res = CliRunner().invoke(cli, [*path, flag], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        assert "Usage:" in res.output
        assert "%%" not in res.output  # click does not %-format help: a "%%" shows literally


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=IDS)
def test_every_option_has_help_and_a_kebab_case_name(path, cmd):
    for opt in _options(cmd):
        assert opt.help and opt.help.strip(), f"{' '.join(path)} {opt.opts} has no help"
        for name in _long(opt):
            assert re.fullmatch(r"--[a-z][a-z0-9-]*", name), name


def _by_name() -> dict[str, list[tuple[str, click.Option]]]:
    seen: dict[str, list[tuple[str, click.Option]]] = defaultdict(list)
    for path, cmd in COMMANDS:
        for opt in _options(cmd):
            for name in opt.opts + opt.secondary_opts:
                seen[name].append((" ".join(path) or "edgeprune", opt))
    return seen


def test_one_name_is_one_kind_of_option_everywhere():
    """A name is a flag everywhere or takes a value everywhere (``--json`` is always a
    flag), and a short option always stands for the same long one."""
    for name, uses in _by_name().items():
        kinds = {(opt.is_flag, opt.count) for _, opt in uses}
        assert len(kinds) == 1, f"{name} is a flag on some commands and takes a value on others: {uses}"
        if not name.startswith("--"):
            longs = {tuple(_long(opt)) for _, opt in uses}
            assert len(longs) == 1, f"{name} stands for different options: {longs}"


def test_the_conventions_of_docs_cli_md():
    seen = _by_name()
    assert all(opt.is_flag for _, opt in seen["--json"])
    short = {"-m": "--model", "-t": "--target", "-b": "--backend", "-d": "--device", "-o": "--out",
             "-h": "--help"}
    for s, long in short.items():
        for where, opt in seen.get(s, []):
            assert long in opt.opts, f"{s} on `{where}` is {opt.opts}, not {long}"
    for where, opt in seen["--model"]:
        assert "-m" in opt.opts, where
    # --db is the results database (SQLite) wherever it appears
    for where, opt in seen["--db"]:
        assert "results database" in opt.help.lower(), where
    # --debug works after the verb, on every command
    for path, cmd in COMMANDS:
        assert any("--debug" in opt.opts for opt in _options(cmd)), " ".join(path)
    # every length of time takes the one duration grammar
    for name in ("--time-budget", "--min-time", "--max-time", "--timeout"):
        for where, opt in seen[name]:
            assert isinstance(opt.type, Duration), f"{name} on `{where}`"


def test_backend_choices_come_from_the_registry():
    from edgeprune.config.targets import KNOWN_BACKENDS
    from edgeprune.runner.probe import KNOWN_BACKENDS as RUNNER_BACKENDS

    names = backend_names()
    assert {"onnxruntime", "openvino", "tvm"} <= set(names)
    # the layers below the registry (target YAML validation, the on-device runner) cannot
    # import it and keep their own list: it must not drift from the registry
    assert set(KNOWN_BACKENDS) == set(RUNNER_BACKENDS) == set(names)
    for where, opt in _by_name()["--backend"]:
        choices = [c for c in opt.type.choices if c != "auto"]
        assert choices == names, where


def test_durations_use_one_grammar():
    d = Duration()
    assert d.convert("1h30m", None, None) == 5400.0
    assert d.convert("0.05", None, None) == 0.05
    with pytest.raises(click.BadParameter, match="30m"):
        d.convert("soon", None, None)
    with pytest.raises(click.BadParameter, match="> 0"):
        d.convert("0", None, None)
    res = CliRunner().invoke(cli, ["compile", "-m", "zoo:digits-cnn", "--min-time", "a while"])
    assert res.exit_code == 2 and "is not a duration" in res.output


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback_before_or_after_the_verb(where):
    args = ["compile", "-m", "zoo:no-such-model"]
    args = ["--debug", *args] if where == "before" else [*args, "--debug"]
    res = CliRunner().invoke(cli, args)
    from edgeprune.errors import ModelError

    assert isinstance(res.exception, ModelError)  # re-raised, not mapped to a one-line error


def test_debug_after_a_subcommand_of_a_group(tmp_path):
    from edgeprune.errors import ConfigError

    missing = str(tmp_path / "nope.yaml")
    res = CliRunner().invoke(cli, ["devices", "check", "--devices", missing, "--debug"])
    assert isinstance(res.exception, ConfigError)
    res = CliRunner().invoke(cli, ["devices", "check", "--devices", missing])
    assert res.exit_code == 3 and "does not exist" in res.output and "Traceback" not in res.output


def test_without_debug_an_error_is_one_line_with_its_exit_code():
    res = CliRunner().invoke(cli, ["compile", "-m", "zoo:no-such-model"])
    assert res.exit_code == 4  # ModelError
    assert res.output.startswith("Error: unknown zoo model 'no-such-model'")
    assert "Traceback" not in res.output
