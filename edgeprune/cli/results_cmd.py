"""``edgeprune results list | show RUN | compare RUN_A RUN_B | migrate``: the history, from a terminal.

Also home of the ``--db`` option every recording command shares, and of
:func:`record`, which ``compile`` / ``bench`` call once the pipeline returns.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from edgeprune.cli.common import FiniteFloat, json_option, since_option
from edgeprune.cli.output import log, note, out, print_json, table

if TYPE_CHECKING:
    from edgeprune.results.record import RecordOptions

_FORMS = ("a SQLite file (PATH or sqlite:PATH) or a PostgreSQL database (postgresql://user[:password]@host:port/dbname, "
          "shared by a lab: docs/lab.md)")
#: ``--db`` of the commands that record a run (compile, bench, profile): ``none`` / ``off`` records nothing
DB_HELP = (f"Results database the run is recorded in: {_FORMS}. Default: $EDGEPRUNE_DB, else ./results.sqlite. "
           "'none' (or 'off') records nothing.")
#: ``--db`` of the commands that need the database (results, report, nightly): ``none`` / ``off`` is refused
READ_DB_HELP = (f"Results database: {_FORMS}. Default: $EDGEPRUNE_DB, else ./results.sqlite. This command needs "
                "one: 'none' (or 'off', which turn recording off elsewhere) is an error here.")


def db_option(f: Callable) -> Callable:
    """``--db PATH|URL`` for commands that need the results database (they read it)."""
    return click.option("--db", "db", metavar="PATH|URL", default=None, help=READ_DB_HELP)(f)


def record_option(f: Callable) -> Callable:
    """``--db PATH|URL`` for commands that *record* (compile, bench) -> ``record_to:
    RecordOptions``, stamped with the time the command started (options are parsed
    before the command runs); the command body passes it to :func:`record`."""

    def to_options(ctx: click.Context, param: click.Parameter, value: str | None) -> RecordOptions:
        from edgeprune.results.record import RecordOptions
        from edgeprune.results.records import now

        return RecordOptions(db=value, started=now())

    return click.option("--db", "record_to", metavar="PATH|URL", default=None, callback=to_options, help=DB_HELP)(f)


def record(summary, kind: str, to: RecordOptions) -> int | None:
    """Store a finished ``summary`` in the results database ``to`` names, at once (fleet
    runs: one run per device); see :func:`recording` for a run recorded from its start."""
    with recording(kind, to, Path(summary.out_dir) if summary.out_dir else None, summary.model) as rec:
        rec.done(summary)
    return rec.run_id


class Recording:
    """The run being recorded by :func:`recording`; the command calls :meth:`done`."""

    def __init__(self, run) -> None:
        self.run = run
        self.summary = None

    @property
    def run_id(self) -> int | None:
        return self.run.run_id if self.run is not None else None

    def done(self, summary) -> None:
        self.summary = summary


@contextmanager
def recording(kind: str, to: RecordOptions, out_dir: Path | None, label: str | None) -> Iterator[Recording]:
    """Record a compile/bench run from its first moment: begun ``running`` (a killed run is
    recovered from its out folder later), ended ``complete`` / ``failed`` with the summary
    given to :meth:`Recording.done`, ``incomplete`` with what was measured when a signal
    stops it, ``failed`` on an error. A database problem is a warning: the summary is on disk."""
    from edgeprune.errors import EdgepruneError, Interrupted
    from edgeprune.flows.compile import CompileInterrupted
    from edgeprune.results.record import begin_recording, finish_recording

    path = to.path
    run = None
    if path is not None:
        try:
            recover(path)
            run = begin_recording(to, kind, out_dir=out_dir, label=label)
        except (EdgepruneError, OSError) as exc:
            log(f"warning: results not stored in {path}: {exc}")
    rec = Recording(run)

    def end(summary, status: str | None = None, why: str | None = None) -> None:
        try:
            finish_recording(run, summary, status=status, note=why)
        except (EdgepruneError, OSError) as exc:
            log(f"warning: results not stored in {path}: {exc}")
            rec.run = None

    try:
        yield rec
    except CompileInterrupted as stop:
        end(stop.summary, "incomplete")
        raise
    except KeyboardInterrupt as exc:
        end(None, "incomplete", f"stopped ({Interrupted.of(exc)})")
        raise
    except BaseException as exc:
        end(None, "failed", (str(exc).splitlines() or [type(exc).__name__])[0][:2000])
        raise
    end(rec.summary)
    if rec.run is not None:
        note(f"stored as run {rec.run_id} in {path} (see `edgeprune results show {rec.run_id}`)")


def _open(db: str | None):
    """The results database ``--db`` names, to read: ``none`` / ``off`` (the switch that
    turns recording off) is a :class:`ResultsError` here, since nothing was recorded to
    read, and so is a SQLite file that does not exist yet (a PostgreSQL database that
    does not exist fails to connect, with a hint to create it)."""
    from edgeprune.errors import ResultsError
    from edgeprune.results.location import PgUrl
    from edgeprune.results.store import DB_ENV, ResultsStore, default_db_path

    path = default_db_path(db)
    if path is None:
        said = f"--db {db}" if db is not None else f"${DB_ENV}={os.environ.get(DB_ENV, '')}"
        raise ResultsError(f"{said} turns recording off, so there is no results database to read",
                           f"pass --db PATH|URL (or set ${DB_ENV}) to the database compile, bench, profile or nightly "
                           "recorded into")
    if not isinstance(path, PgUrl) and not path.exists():
        raise ResultsError(f"results database {path} does not exist",
                           f"run `edgeprune compile`, `bench`, `profile` or `nightly` first, or pass --db / set ${DB_ENV}")
    store = ResultsStore(path)
    try:
        _recover(store)  # a killed run's finished jobs, before anything is shown
    except BaseException:
        store.close()
        raise
    return store


def recover(path) -> None:
    """Recover the runs of ``path`` (a SQLite path or PostgreSQL URL) whose process was
    killed on this host (their finished jobs are on disk)."""
    from edgeprune.results.store import ResultsStore

    with ResultsStore(path) as store:
        _recover(store)


def _recover(store) -> None:
    from edgeprune.results.recover import recover_killed_runs

    for run_id, count in recover_killed_runs(store):
        note(f"run {run_id} was killed; recovered {count} measured backend(s) from its out folder")


def _profile_lines(p: dict) -> list[str]:
    """A profile run's table and points (``env["profile"]``, written by ``edgeprune profile``)."""
    if not p:
        return []
    how = "".join(f", {x}" for x in (f"{p['threads']} thread(s)" if "threads" in p else None,
                                     f"{p['timing']} timing" if "timing" in p else None) if x)
    lines = [f"latency table: {p.get('model', '?')} on {p.get('target', '?')}/{p.get('device', '?')} with "
             f"{p.get('backend', '?')}{' ' + p['backend_version'] if 'backend_version' in p else ''}{how}"]
    if p.get("table"):
        lines.append(f"table file: {p['table']}")
    if "points_measured" in p:
        done = f" ({p['points_completed']} completed after an interrupted run)" if p.get("points_completed") else ""
        lines.append(f"points: {p.get('points_used', '?')} used by the model, {p['points_measured']} measured "
                     f"now{done}, {p.get('points_reused', '?')} reused; {p.get('bundles', 0)} bundle run(s); model "
                     + ("measured end to end" if p.get("model_measured") else "end to end from the table"))
    if "points_kept" in p:
        lines.append(f"interrupted ({p.get('signal', '?')}) while {p.get('interrupted', '?')}: {p['points_kept']} "
                     f"point(s) kept ({p.get('points_cut_short', 0)} timed in only some rounds)")
    v = p.get("validation")
    if v:
        lines.append(f"validation: {v.get('variants', '?')} variant(s), median |error| "
                     f"{v.get('median_abs_pct_error', float('nan')):.2f}%, p95 {v.get('p95_abs_pct_error', float('nan')):.2f}%")
    return lines


def _when(iso: str | None) -> str:
    return iso[:19].replace("T", " ") if iso else "–"


def _ms(v: float | None) -> str | None:
    from edgeprune.results.report.text import fmt_ms

    return None if v is None else fmt_ms(v)


@click.group("results")
def results_cmd() -> None:
    """Look at stored runs: list them, show one, compare two; copy a history elsewhere.

    \b
    edgeprune results list --since 7d
    edgeprune results show 42
    edgeprune results compare 41 42
    edgeprune results migrate --from results.sqlite --to postgresql://edgeprune@db.lab/results
    """


@results_cmd.command("list")
@db_option
@since_option(None, "Only runs started within this window or since this date.")
@click.option("--kind", type=click.Choice(["compile", "bench", "profile", "nightly"]), help="Only runs of this kind.")
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True, metavar="N",
              help="Show at most this many runs.")
@json_option()
def list_cmd(db, since, kind, limit, as_json) -> None:
    """Runs, newest first, with how many cells they measured and what regressed."""
    from edgeprune.results.store import parse_since

    with _open(db) as store:
        runs = store.runs(since=parse_since(since), kind=kind, limit=limit)
        counts = store.run_counts()
        regs = {}
        for r in runs:
            regs[r.id] = sum(1 for v in store.verdicts(run_id=r.id) if v.regression)
        if as_json:
            print_json([{k: v for k, v in r.to_dict().items() if k != "env"}
                        | {"measurements": counts.get(r.id, (0, 0))[0], "failed": counts.get(r.id, (0, 0))[1],
                           "regressions": regs[r.id]}
                        | ({"profile": r.env["profile"]} if "profile" in r.env else {}) for r in runs])
            return
        rows = []
        for r in runs:
            n, bad = counts.get(r.id, (0, 0))
            prof = r.env.get("profile") or {}
            measured = n if "points_measured" not in prof else f"{prof['points_measured']} pts"
            rows.append([r.id, r.kind, r.status, _when(r.started),
                         f"{r.duration_s:.0f} s" if r.duration_s is not None else None,
                         measured, bad or None, regs[r.id] or None,
                         r.git_revision[:10] if r.git_revision else None, (r.label or "")[:40] or None])
        table(f"Runs in {store.path}", ["id", "kind", "status", "started (UTC)", "took", "measured", "failed",
                                         "regressions", "git", "label"], rows, right={0, 4, 5, 6, 7})
        if not runs:
            note("no runs match")


@results_cmd.command("show")
@click.argument("run_id", type=int)
@db_option
@json_option("Print the run, its measurements (with every per-run time) and verdicts as JSON.")
def show_cmd(run_id, db, as_json) -> None:
    """One run: its environment, every measurement and the verdicts."""
    with _open(db) as store:
        run = store.run(run_id)
        ms = store.measurements(run_id=run_id)
        vs = store.verdicts(run_id=run_id)
        if as_json:
            print_json({"run": run.to_dict(), "measurements": [m.to_dict() for m in ms],
                        "verdicts": [v.to_dict() for v in vs]})
            return
        env = run.env
        out.print(f"run {run.id}: {run.kind}, {run.status}, started {_when(run.started)} UTC"
                  + (f", took {run.duration_s:.0f} s" if run.duration_s is not None else ""), highlight=False)
        out.print(f"  edgeprune {run.edgeprune_version}, git {run.git_revision or '–'}, fingerprint {run.env_hash}",
                  highlight=False)
        out.print(f"  {env.get('cpu_model', '?')}, {env.get('cores', '?')} cores, governor {env.get('governor') or 'n/a'}, "
                  f"{env.get('platform', '?')}, Python {env.get('python', '?')}", highlight=False)
        if run.command:
            out.print(f"  command: {run.command}", highlight=False)
        if run.note:
            out.print(f"  note: {run.note}", highlight=False)
        for line in _profile_lines(env.get("profile") or {}):
            out.print(f"  {line}", highlight=False)
        if not ms and run.kind == "profile":
            return  # a profile's measurements are its latency table, not result rows
        by_m = {}
        for v in vs:
            by_m.setdefault(v.cell, []).append(v)
        rows = []
        for m in ms:
            lat = next((v for v in by_m.get(m.cell, []) if v.kind == "latency"), None)
            flags = [f"{v.kind} {v.verdict}" for v in by_m.get(m.cell, []) if v.regression]
            rows.append([
                m.id, m.model, f"{m.backend} {m.backend_version or ''}".strip(), f"{m.target}/{m.device}",
                m.variant or None, m.attempt or None, _ms(m.median_ms), _ms(m.p90_ms),
                f"{m.cv:.1%}" if m.cv is not None else None, len(m.times_ms) or None,
                f"{m.accuracy:.2f}%" if m.accuracy is not None else None,
                None if m.verified is None else ("pass" if m.verified else "FAIL"),
                (lat.verdict + (f" {lat.ratio - 1:+.1%}" if lat.ratio else "")) if lat and m.attempt == 0 else None,
                ", ".join(flags) or (m.error or "")[:60] or None,
            ])
        table(f"Measurements of run {run.id}", ["id", "model", "backend", "target/device", "variant", "retry",
                                                "median ms", "p90 ms", "CV", "runs", "accuracy", "parity", "latency",
                                                "regression / error"], rows, right={0, 5, 6, 7, 8, 9, 10})
        for v in vs:
            if v.regression or v.verdict in ("UNKNOWN", "NEW_SERIES", "FAILED"):
                out.print(f"{v.cell_name}: {v.kind} {v.verdict}: {v.detail}", highlight=False)


@results_cmd.command("compare")
@click.argument("run_a", type=int)
@click.argument("run_b", type=int)
@db_option
@click.option("--min-effect", type=FiniteFloat(0.001, 0.9), default=0.03, show_default=True,
              help="Relative latency change that matters.")
@click.option("--confidence", type=FiniteFloat(0.5, 0.9999), default=0.99, show_default=True,
              help="Confidence of the interval a change must clear to be called.")
@click.option("--statistic", type=click.Choice(["p10", "median", "p25", "p5", "min"]), default="p10", show_default=True,
              help="Per-run latency compared (a low quantile is steadier on busy machines).")
@json_option()
def compare_cmd(run_a, run_b, db, min_effect, confidence, statistic, as_json) -> None:
    """Latency and accuracy of every cell measured in both RUN_A (before) and RUN_B (after).

    With one measurement per side the between-run noise is not observed and comes from
    the prior (1 %), so only clear changes are called; nightly baselines use several runs.
    """
    from edgeprune.results import fingerprint
    from edgeprune.results.detect import DetectSettings, compare

    settings = DetectSettings(min_effect=min_effect, confidence=confidence, statistic=statistic)
    with _open(db) as store:
        store.run(run_a)
        store.run(run_b)
        a = {}
        for m in store.measurements(run_id=run_a):
            a.setdefault(m.cell, []).append(m)
        b = {}
        for m in store.measurements(run_id=run_b):
            b.setdefault(m.cell, []).append(m)
        common = [c for c in a if c in b]
        results = []
        for cell in common:
            ga = [m for m in a[cell] if m.ok and m.times_ms]
            gb = [m for m in b[cell] if m.ok and m.times_ms]
            entry = {"cell": list(cell), "name": ga[0].cell_name if ga else str(cell)}
            if not ga or not gb:
                entry["error"] = "not measured in " + ("both runs" if not ga and not gb else f"run {run_a if not ga else run_b}")
                results.append(entry)
                continue
            c = compare([m.times_ms for m in ga], [m.times_ms for m in gb], settings, baseline_same_session=True)
            changes = fingerprint.diff(ga[-1].env, gb[-1].env)
            if ga[-1].backend_version != gb[-1].backend_version:
                changes.append(f"{cell[3]} {ga[-1].backend_version} -> {gb[-1].backend_version}")
            entry |= c.to_dict() | {"accuracy_a": ga[-1].accuracy, "accuracy_b": gb[-1].accuracy,
                                    "same_series": ga[-1].series == gb[-1].series, "environment_changes": changes}
            results.append(entry)
        if as_json:
            print_json({"run_a": run_a, "run_b": run_b, "settings": settings.to_dict(), "cells": results,
                        "only_in_a": [list(c) for c in a if c not in b], "only_in_b": [list(c) for c in b if c not in a]})
            return
        rows = []
        for e in results:
            if "error" in e:
                rows.append([e["name"], None, None, None, "–", None, e["error"]])
                continue
            acc = None
            if e["accuracy_a"] is not None and e["accuracy_b"] is not None:
                acc = f"{e['accuracy_b'] - e['accuracy_a']:+.2f}"
            rows.append([
                e["name"], _ms(e["baseline_ms"]), _ms(e["current_ms"]),
                f"{e['ratio'] - 1:+.1%} [{e['ci_low'] - 1:+.1%}, {e['ci_high'] - 1:+.1%}]",
                e["verdict"], acc,
                ("environment differs: " + "; ".join(e["environment_changes"]))[:90] if not e["same_series"] else None,
            ])
        table(f"Run {run_a} -> run {run_b} ({settings.statistic} of each run's per-inference times)",
              ["cell", f"#{run_a} ms", f"#{run_b} ms", f"change [{confidence:.0%} CI]",
                                               "verdict", "Δ accuracy", "note"], rows, right={1, 2, 5})
        only_a = [c for c in a if c not in b]
        only_b = [c for c in b if c not in a]
        if only_a or only_b:
            note(f"{len(only_a)} cell(s) only in run {run_a}, {len(only_b)} only in run {run_b}")
        if not common:
            note("the two runs have no cell in common")


@results_cmd.command("migrate")
@click.option("--from", "source", required=True, metavar="PATH|URL",
              help="The results database to copy from: a SQLite file or a postgresql:// URL (read; an older schema "
                   "is upgraded in place, as any command that opens it does).")
@click.option("--to", "target", required=True, metavar="PATH|URL",
              help="The results database to copy into (created or upgraded): usually the lab's "
                   "postgresql://user@host:port/dbname.")
@json_option("Print what was copied as JSON.")
def migrate_cmd(source, target, as_json) -> None:
    """Copy a results history into another database (e.g. a SQLite file into the lab's PostgreSQL).

    Ids are kept where the target has them free (a first copy keeps them all), else the
    run gets a new id and every link to it follows. Runs already in the target are
    recognised and skipped, so the command can be run again (after an interruption, or
    with another runner's file) without copying anything twice.

    \b
    edgeprune results migrate --from results.sqlite --to postgresql://edgeprune@db.lab:5432/results
    """
    from edgeprune.errors import ResultsError
    from edgeprune.results.migrate import migrate
    from edgeprune.results.store import ResultsStore, default_db_path

    src_loc, dst_loc = default_db_path(source), default_db_path(target)
    if src_loc is None or dst_loc is None:
        raise ResultsError("results migrate copies from one database to another: 'none' / 'off' is not a database",
                           "e.g. --from results.sqlite --to postgresql://edgeprune@db.lab/results")
    with _open(source) as src, ResultsStore(dst_loc) as dst:
        result = migrate(src, dst, log=log)
    if as_json:
        print_json(result.to_dict())
        return
    out.print(f"copied {result.runs} run(s), {result.measurements} measurement(s) and {result.verdicts} verdict(s) "
              f"from {result.source} to {result.target}"
              + (f"; {result.already} run(s) were already there" if result.already else ""), highlight=False)
    if result.renumbered:
        pairs = ", ".join(f"{a}->{b}" for a, b in list(result.renumbered.items())[:10])
        more = f" and {len(result.renumbered) - 10} more (--json lists all)" if len(result.renumbered) > 10 else ""
        out.print(f"{len(result.renumbered)} run(s) got a new id (theirs was taken in the target): {pairs}{more}",
                  highlight=False)
    elif result.runs:
        out.print("every run kept its id", highlight=False)
    if result.running:
        which = ", ".join(f"{r} on {h}" for r, h in result.running[:10])
        note(f"{len(result.running)} run(s) still running were not copied ({which}): run the command again once "
             "they have ended")
