"""One paired batch: the baseline's kept artifact and tonight's, timed in alternating
rounds by one runner process (:func:`~edgeprune.bench.measure.measure_on`).

Why one bundle: two artifacts timed in one process, seconds apart and in turns
(``new base``, ``base new``, ...), see the same machine; whatever load the host has
tonight hits both, and the paired difference of each round cancels it
(:mod:`edgeprune.results.paired`). The rounds are laid out by the library's own
:func:`edgeprune.bench.rounds.expand` (shortened timing per round, verification only in
the first) and kept apart by their job ids, because the verdict needs each round's
samples, not one merged series.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edgeprune.bench import rounds as _rounds
from edgeprune.bench.bundle import BenchJob, JobResult
from edgeprune.bench.measure import Bundle, measure_on
from edgeprune.errors import BenchError
from edgeprune.flows.nightly.keep import copy_job
from edgeprune.results.paired import PairedBatch

if TYPE_CHECKING:
    from edgeprune.bench.settings import BenchSettings
    from edgeprune.config.devices import Device

NEW, BASE = "new", "base"
_ROUND = "@"  # job id of round k: "new@k" (not the rounds module's separator: no merging)


def paired_bundle(folder: Path, new: tuple[BenchJob, Path], base: tuple[BenchJob, Path], settings: "BenchSettings",
                  rounds: int) -> Bundle:
    """A fresh bundle in ``folder`` timing ``new`` and ``base`` (each a job and the folder
    its paths are relative to) in ``rounds`` alternating rounds, with the cell's timing
    ``settings`` split over the rounds."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    timing = dict(warmup=settings.warmup, min_runs=settings.min_runs, min_time_s=settings.min_time_s,
                  max_time_s=settings.max_time_s, gate=settings.gate)
    jobs = []
    for name, (job, root) in ((NEW, new), (BASE, base)):
        placed = copy_job(job, root, folder, name)
        jobs.append(dataclasses.replace(placed, id=name, **timing))
    laid = _rounds.expand(jobs, max(2, rounds))
    renamed = []
    for j in laid:
        k = int(j.id.split(_rounds.SEP, 1)[1]) if _rounds.SEP in j.id else 1
        renamed.append(dataclasses.replace(j, id=f"{_rounds.base_id(j.id)}{_ROUND}{k}"))
    return Bundle(folder, renamed)


def time_paired(device: "Device", bundle: Bundle, *, timeout_s: float,
                log: Callable[[str], None]) -> tuple[PairedBatch, JobResult, list[float]]:
    """Run a :func:`paired_bundle` on ``device``: (the batch's pairs, tonight's artifact as
    one merged result, its per-round medians). Raises :class:`BenchError` when either
    artifact failed in the first round (nothing to pair)."""
    rounds = len(bundle.jobs) // 2

    def say(msg: str) -> None:  # measure counts the rounds' jobs as artifacts: say what runs instead
        log(f"timing tonight's artifact and the baseline's in {rounds} alternating rounds on device "
            f"'{device.name}' ..." if msg.startswith("benchmarking ") else msg)

    measured = measure_on(device, bundle, rounds=1, timeout_s=timeout_s, log=say)
    by_round: dict[int, dict[str, JobResult]] = {}
    for jid, r in measured.results.items():
        name, _, k = jid.partition(_ROUND)
        if k.isdigit():
            by_round.setdefault(int(k), {})[name] = r
    first = by_round.get(1, {})
    for name, what in ((NEW, "tonight's artifact"), (BASE, "the baseline's artifact")):
        r = first.get(name)
        if r is None or not r.ok or not r.times_ms:
            raise BenchError(f"paired timing: {what} did not run: {r.error if r else 'no result'}",
                             "the verdict falls back to the history")
    pairs = []
    for k in sorted(by_round):
        n, b = by_round[k].get(NEW), by_round[k].get(BASE)
        if n is not None and b is not None and n.ok and b.ok and n.times_ms and b.times_ms:
            pairs.append((list(n.times_ms), list(b.times_ms)))
    # tonight's rounds folded into one result, as measure folds a cell's own rounds
    merged, medians = _rounds.merge({(NEW if k == 1 else f"{NEW}{_rounds.SEP}{k}"): rs[NEW]
                                     for k, rs in by_round.items() if NEW in rs})
    return PairedBatch(rounds=pairs), merged[NEW], medians.get(NEW, [])
