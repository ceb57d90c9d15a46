"""``edgeprune devices check [NAME...]``: connect to devices and say what each one lacks."""

from __future__ import annotations

from pathlib import Path

import click

from edgeprune.cli.common import DeviceArgs, devices_file_option, host_key_option, json_option
from edgeprune.cli.output import log, out, print_json


def check_device(device, target=None):
    """Connect, verify the host key, probe; returns a DeviceCheck (never raises for the device)."""
    from edgeprune.bench.devices import executor_for
    from edgeprune.bench.install import DeviceCheck, assess
    from edgeprune.errors import EdgepruneError

    address = "this machine" if device.kind == "local" else (
        f"{device.user + '@' if device.user else ''}{device.host or device.ssh_config_alias}:{device.port}"
    )
    python = device.python if device.kind == "ssh" else "python"
    try:
        probe = executor_for(device).probe()
    except EdgepruneError as exc:
        return DeviceCheck(name=device.name, address=address, ok=False, emulated=device.emulated, error=str(exc))
    if device.kind == "local":
        import sys

        python = sys.executable
    return assess(device.name, address, probe, python, target, device.emulated)


@click.command("check")
@click.argument("names", nargs=-1)
@devices_file_option
@host_key_option
@json_option()
@click.pass_context
def check_cmd(ctx: click.Context, names: tuple[str, ...], devices_file: Path | None, accept_new_host_key: bool,
              as_json: bool) -> None:
    """Connect to devices (all, or NAMES): host key, arch, CPU, Python, runtimes, what is missing.

    \b
    Example: edgeprune devices check pi-lab-1
    Exit code 7 if a device cannot be reached or lacks what its target needs.
    """
    from concurrent.futures import ThreadPoolExecutor

    from edgeprune.errors import ConfigError, DeviceError

    if devices_file is None and ctx.parent is not None:  # `edgeprune devices --devices FILE check`
        devices_file = ctx.parent.params.get("devices_file")
    chosen = DeviceArgs(names=names, devices_file=devices_file, accept_new_host_key=accept_new_host_key)
    devs = chosen.resolve() if names else chosen.all()

    def target_of(dev):
        if not dev.target:
            return None
        from edgeprune.config.targets import get_target

        try:
            return get_target(dev.target)
        except ConfigError:
            return None

    def one(dev):
        return check_device(dev, target_of(dev))

    if len(devs) > 1:
        log(f"checking {len(devs)} devices ...")
    with ThreadPoolExecutor(max_workers=min(8, len(devs)) or 1) as pool:
        checks = list(pool.map(one, devs))

    if as_json:
        print_json([c.to_dict() for c in checks])
    else:
        for c in checks:
            _print_check(c)
    bad = [c.name for c in checks if not c.ok or c.missing]
    if bad:
        raise DeviceError(f"device(s) not ready: {', '.join(bad)}", "see the messages above")


def _print_check(c) -> None:
    title = f"device {c.name} ({c.address})" + (" — EMULATED: timings meaningless" if c.emulated else "")
    if not c.ok:
        out.print(f"[bold red]✗[/bold red] {title}", highlight=False)
        out.print(f"  error: {c.error}", highlight=False, markup=False)
        return
    rows = [
        ["arch", c.arch],
        ["cpu", c.cpu],
        ["python", c.python],
        ["numpy", c.numpy or "MISSING"],
    ]
    for b, v in c.runtimes.items():
        rows.append([b, v or ("MISSING" if b in c.missing else "not installed")])
    if c.target:
        rows.append(["target", f"{c.target} ({c.target_arch})"])
    mark = "[green]✓[/green]" if not c.missing else "[yellow]![/yellow]"
    out.print(f"{mark} {title}", highlight=False)
    from rich.table import Table

    t = Table(show_header=False, box=None, padding=(0, 2))
    for k, v in rows:
        t.add_row(k, "–" if v is None else str(v))
    out.print(t)
    for what, how in c.missing.items():
        out.print(f"  missing {what}: {how}", highlight=False, markup=False)
    for w in c.warnings:
        out.print(f"  warning: {w}", highlight=False, markup=False)
