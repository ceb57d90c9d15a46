"""``edgeprune bench --device a --device b ...``: the same model on several devices at once."""

from __future__ import annotations

from pathlib import Path

from edgeprune.cli.output import log, out, print_json, table


def bench_many(model, target, devices, out_dir: Path, options, as_json: bool, record_to) -> None:
    """Benchmark on every device in parallel (each board serialised), print, fail if any failed."""
    from edgeprune.flows.fleet import bench_on_devices
    from edgeprune.cli.results_cmd import record
    from edgeprune.errors import BenchError

    from edgeprune.flows.fleet import FleetInterrupted

    log(f"benchmarking on {len(devices)} devices in parallel: {', '.join(d.name for d in devices)}")
    try:
        outcomes = bench_on_devices(model, target, devices, out_dir, options, log)
    except FleetInterrupted as stop:  # every device's finished jobs are recorded, then the run stops
        for o in stop.outcomes:
            if o.summary is not None:
                record(o.summary, "bench", record_to)
        raise
    for o in outcomes:  # one run per device in the results DB, failed devices included
        if o.summary is not None:
            record(o.summary, "bench", record_to)
    if as_json:
        print_json([
            {"device": o.device.name, "ok": o.ok, "error": o.error, "seconds": round(o.seconds, 2),
             "out_dir": str(o.out_dir), "summary": o.summary.to_dict() if o.summary else None}
            for o in outcomes
        ])
    else:
        rows = []
        for o in outcomes:
            s = o.summary
            b = s.chosen() if s is not None and s.backend else None
            lat = b.latency_ms if b is not None else None
            rows.append([
                o.device.name + (" (emulated)" if o.device.emulated else ""),
                s.backend if s else None,
                f"{lat.median:.3f}" if lat else None,
                f"{lat.p90:.3f}" if lat else None,
                f"{lat.cv:.1%}" if lat else None,
                None if b is None or b.verified is None else ("pass" if b.verified else "FAIL"),
                f"{b.accuracy:.2f}%" if b is not None and b.accuracy is not None else None,
                f"{o.seconds:.1f}",
                (o.error or "")[:90] or None,
            ])
        table(f"{model.name} on {len(devices)} devices (target {target.name})",
              ["device", "backend", "median ms", "p90 ms", "CV", "parity", "accuracy", "wall s", "error"], rows,
              right={2, 3, 4, 7})
        if any(o.device.emulated for o in outcomes):
            out.print("note: timings of emulated devices are meaningless (outputs and accuracy are real)",
                      highlight=False)
        out.print(f"results: {out_dir}/<device>/summary.json, report.md", highlight=False)
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise BenchError(
            f"{len(failed)} of {len(outcomes)} devices failed: "
            + "; ".join(f"{o.device.name}: {o.error}" for o in failed)
        )
