"""``edgeprune targets``, ``edgeprune devices``, ``edgeprune models``: what is available."""

from __future__ import annotations

from pathlib import Path

import click

from edgeprune.cli.common import devices_file_option, json_option
from edgeprune.cli.output import print_json, table


@click.command("targets")
@json_option()
def targets_cmd(as_json: bool) -> None:
    """List hardware targets: $EDGEPRUNE_TARGETS_DIR, ./targets/*.yaml and the built-in ones."""
    from edgeprune.config.targets import list_targets

    ts = list_targets()
    if as_json:
        print_json([t.model_dump() | {"peak_gflops": round(t.peak_gflops(), 1), "source": t.source} for t in ts])
        return
    rows = [
        [t.name, t.arch, "auto" if t.is_host else t.cpu, ",".join(f.lstrip("+") for f in t.resolved_features()), t.num_cores(),
         t.accelerator if t.accelerator == "none" else f"{t.accelerator} {t.cuda_arch or ''}".strip(),
         ", ".join(t.backends), f"{t.peak_gflops():.0f}"]
        for t in ts
    ]
    table("Targets", ["name", "arch", "cpu", "features", "cores", "accelerator", "backends", "peak GFLOP/s"],
          rows, right={4, 7})


@click.group("devices", invoke_without_command=True)
@devices_file_option
@json_option()
@click.pass_context
def devices_cmd(ctx: click.Context, devices_file: Path | None, as_json: bool) -> None:
    """List devices (devices.yaml); `devices check` connects to them."""
    if ctx.invoked_subcommand is not None:  # `check` reads --devices from this context's params
        return
    from edgeprune.config.devices import load_devices

    devs = load_devices(devices_file)
    if as_json:
        print_json([d.model_dump() for d in devs])
        return
    rows = [
        [d.name, d.kind, d.target or "–",
         "this machine" if d.kind == "local" else f"{d.user + '@' if d.user else ''}{d.host or d.ssh_config_alias}:{d.port}",
         d.concurrency, "yes" if d.emulated else "", d.board_kind or "",
         ",".join(str(c) for c in d.cpu_affinity) if d.cpu_affinity else ""]
        for d in devs
    ]
    table("Devices", ["name", "kind", "target", "address", "concurrency", "emulated", "board kind", "cpus"], rows,
          right={4})


@click.command("models")
@json_option()
def models_cmd(as_json: bool) -> None:
    """List the built-in model zoo (use as --model zoo:NAME)."""
    from edgeprune.models.zoo import list_zoo

    entries = list_zoo()
    if as_json:
        print_json([{"name": n, "description": d} for n, d in entries])
        return
    table("Model zoo", ["spec", "description"], [[f"zoo:{n}", d] for n, d in entries])


# `edgeprune devices check [NAME...]` (connects over SSH; lives in its own module)
from edgeprune.cli.devices_check import check_cmd as _check_cmd  # noqa: E402

devices_cmd.add_command(_check_cmd)
