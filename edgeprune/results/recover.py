"""Recovering a compile/bench run whose process was killed (SIGKILL, OOM, a power cut).

A stopped run (Ctrl-C, SIGTERM, SIGHUP) saves itself. A *killed* one cannot: its row
stays ``running``, and the database marks it ``incomplete`` the next time it is opened
(:meth:`~edgeprune.results.store.ResultsStore.reap_stale_runs`). What it measured is
still on disk: before timing, ``compile`` writes ``summary.json`` with status
``running`` (every backend with its bundle job id), and the runner appends one complete
line per finished job to ``bundle/results.jsonl``. :func:`recover_killed_runs` joins the
two the way a finished run would (:func:`~edgeprune.compile.summarize.apply_job_result`),
rewrites ``summary.json`` / ``report.md`` as ``incomplete`` and stores the measurements.
"""

from __future__ import annotations

from pathlib import Path

from edgeprune.bench import rounds as _rounds
from edgeprune.bench.bundle import read_results
from edgeprune.compile.report import write_report
from edgeprune.compile.summarize import apply_job_result
from edgeprune.compile.summary import CompileSummary
from edgeprune.results import fingerprint
from edgeprune.results.records import Run, parse_time
from edgeprune.results.store import ResultsStore

KILLED = "the edgeprune process was killed"


def recover_killed_runs(store: ResultsStore) -> list[tuple[int, int]]:
    """Recover every killed run of ``store`` that left a summary: (run id, measurements
    stored) for each. Safe to call on every start: a recovered summary is ``incomplete``,
    not ``running``, so nothing is stored twice."""
    done = []
    for run in store.killed_runs():
        summary = _running_summary(run)
        note = f"{KILLED}; nothing measured was found in {run.out_dir}"
        count = 0
        if summary is not None:
            count = _fill(summary)
            summary.status, summary.stopped = "incomplete", f"{KILLED} (recovered into run {run.id})"
            summary.write(Path(summary.out_dir))
            write_report(summary, Path(summary.out_dir) / "report.md")
            from edgeprune.results.record import measurements_from_summary

            rows = measurements_from_summary(summary, fingerprint.collect(),
                                             backends=[b.name for b in summary.backends if b.ok])
            for m in rows:
                store.add_measurement(run.id, m)
            note = (f"{KILLED}; {count} finished backend result(s) recovered from "
                    f"{Path(summary.out_dir) / 'bundle'}")
        store.set_note(run.id, note)
        done.append((run.id, count))
    return done


def _running_summary(run: Run) -> CompileSummary | None:
    """The run's ``summary.json`` if it is this run's and still says ``running``."""
    out = Path(run.out_dir or "")
    try:
        summary = CompileSummary.load(out)
    except (OSError, ValueError, TypeError):
        return None
    if summary.status != "running" or not summary.created:
        return None
    try:  # written after the run began (a summary left by an earlier run in the same folder is not it)
        if parse_time(summary.created) < parse_time(run.started).replace(microsecond=0):
            return None
    except ValueError:
        return None
    return summary


def _fill(summary: CompileSummary) -> int:
    """Fill the summary's backends from the bundle's finished job lines; how many got figures."""
    raw = read_results(Path(summary.out_dir) / "bundle")
    merged, medians = _rounds.merge({r.id: r for r in raw})
    count = 0
    for b in summary.backends:
        jr = merged.get(b.job_id) if b.job_id else None
        if jr is not None:
            apply_job_result(b, jr, medians.get(b.job_id or "", []))
            count += b.ok
        elif b.error is None or b.latency_ms is None:
            b.error = f"not measured: {KILLED}"
    return count
