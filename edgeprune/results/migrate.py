"""Copying a results history into another database: ``edgeprune results migrate``.

The case it is for: a lab moves from one SQLite file per machine to one PostgreSQL
database (``--from results.sqlite --to postgresql://...``), possibly several files
into the same database; it works between any two stores (a PostgreSQL history into a
SQLite file is a backup).

What it promises:

- **Ids and links stay consistent.** A row keeps its id when the target has none with
  that id (a first copy into a new database keeps every id, so ``results show 42`` and a
  matrix's ``baseline.pin: 42`` mean the same run). A row whose id is taken gets a new
  one, and everything that points at it follows: measurements' and verdicts' ``run_id``,
  a verdict's ``measurement_id``, its baseline measurement ids and its reference run.
- **Idempotent.** A run already in the target (the same kind, start, host, process,
  command, label and fingerprint, with the same measurements) is recognised and not
  copied again, whatever id it has there; so a second run of the same command copies
  nothing, an interrupted one carries on, and a file copied twice is merged once.
- **Nothing half-copied.** Each run is copied with its measurements and verdicts in one
  transaction that holds the target's tables (``LOCK TABLE`` on PostgreSQL, the write
  lock on SQLite), so runners writing at the same time wait a moment and ids never clash.
- Runs still ``running`` in the source are left out (their process may still add rows)
  and named, to be copied by a later run of the command.

Why no schema change for this: recognising a copied run needs no marker column, since a
run is identified by what it recorded; a new column would have forced every SQLite user
onto a new schema version for a one-off command.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgeprune.errors import ResultsError
from edgeprune.results import schema
from edgeprune.results.dialect import Db
from edgeprune.results.store import ResultsStore

#: the columns that say *which* run a row is (they never change once the run has begun)
IDENTITY = ("kind", "started", "host", "pid", "command", "label", "env_hash", "edgeprune_version", "git_revision",
            "out_dir")
#: the columns that say which measurement a row is, within its run
_SIGNATURE = "id, created, model, target, device, backend, variant, attempt, median_ms"
TABLES = ("runs", "measurements", "verdicts")


@dataclass
class MigrateResult:
    """What one migration copied (counts of rows inserted into the target)."""

    source: str
    target: str
    runs: int = 0
    measurements: int = 0
    verdicts: int = 0
    already: int = 0
    #: source run id -> target run id, for the runs whose id was taken in the target
    renumbered: dict[int, int] = field(default_factory=dict)
    #: (source run id, host) of runs left out because they are still ``running``
    running: list[tuple[int, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "runs": self.runs, "measurements": self.measurements,
                "verdicts": self.verdicts, "already_there": self.already,
                "renumbered": {str(k): v for k, v in self.renumbered.items()},
                "still_running": [{"run": r, "host": h} for r, h in self.running]}


def _signature(rows: Sequence[Any]) -> list[tuple]:
    return [tuple(r[k] for k in ("created", "model", "target", "device", "backend", "variant", "attempt", "median_ms"))
            for r in rows]


class _Copier:
    """One migration's state: the id maps from source to target, and the target runs
    already matched (a match is one to one: two identical source runs, as a fleet run's
    failed devices can be, are two target runs)."""

    def __init__(self, src: ResultsStore, dst: ResultsStore, result: MigrateResult) -> None:
        self.src, self.dst, self.result = src, dst, result
        self.run_ids: dict[int, int] = {}
        self.measurement_ids: dict[int, int] = {}
        self.claimed: set[int] = set()

    def copy_run(self, run: Any) -> None:
        rid = int(run["id"])
        ms = self.src.query("SELECT * FROM measurements WHERE run_id = ? ORDER BY id", (rid,))
        vs = self.src.query("SELECT * FROM verdicts WHERE run_id = ? ORDER BY id", (rid,))
        with self.dst.transaction() as db:
            db.lock_tables(TABLES)
            match = self._match(db, run, ms, vs)
            if match is not None:
                self.claimed.add(match)
                self.run_ids[rid] = match
                theirs = db.query("SELECT id FROM measurements WHERE run_id = ? ORDER BY id", (match,))
                self.measurement_ids.update({int(a["id"]): int(b[0]) for a, b in zip(ms, theirs)})
                self.result.already += 1
                return
            explicit: set[str] = set()
            new = self._insert(db, "runs", schema.RUN_COLUMNS, dict(run), explicit)
            self.run_ids[rid] = new
            self.claimed.add(new)
            if new != rid:
                self.result.renumbered[rid] = new
            for m in ms:
                row = dict(m) | {"run_id": new}
                self.measurement_ids[int(m["id"])] = self._insert(db, "measurements",
                                                                  ["id", *schema.MEASUREMENT_COLUMNS], row, explicit)
            for v in vs:
                self._insert(db, "verdicts", ["id", *schema.VERDICT_COLUMNS], self._relink(dict(v), new), explicit)
            for table in sorted(explicit):
                db.sync_ids(table)
        self.result.runs += 1
        self.result.measurements += len(ms)
        self.result.verdicts += len(vs)

    def _match(self, db: Db, run: Any, ms: Sequence[Any], vs: Sequence[Any]) -> int | None:
        """The target run that is this source run, if it was copied before."""
        found = db.query("SELECT * FROM runs WHERE kind = ? AND started = ? ORDER BY id", (run["kind"], run["started"]))
        found = [r for r in found if int(r["id"]) not in self.claimed and all(r[k] == run[k] for k in IDENTITY)]
        found.sort(key=lambda r: int(r["id"]) != int(run["id"]))  # the same id first
        want = _signature(ms)
        for cand in found:
            cid = int(cand["id"])
            theirs = db.query(f"SELECT {_SIGNATURE} FROM measurements WHERE run_id = ? ORDER BY id", (cid,))
            n = db.execute("SELECT COUNT(*) FROM verdicts WHERE run_id = ?", (cid,)).fetchone()[0]
            if _signature(theirs) == want and int(n) == len(vs):
                return cid
        return None

    def _relink(self, v: dict[str, Any], run_id: int) -> dict[str, Any]:
        """A verdict row pointing at the target's ids: its run, its measurement, the
        measurements of its baseline and (paired verdicts) the reference run."""
        v["run_id"] = run_id
        if v.get("measurement_id") is not None:
            v["measurement_id"] = self.measurement_ids.get(int(v["measurement_id"]))
        try:
            base = json.loads(v.get("baseline_json") or "[]")
            v["baseline_json"] = json.dumps([self.measurement_ids[int(i)] for i in base
                                             if int(i) in self.measurement_ids])
        except (TypeError, ValueError):
            pass
        try:
            data = json.loads(v.get("data_json") or "{}")
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("reference_run"), int):
            ref = self.run_ids.get(data["reference_run"])
            if ref is not None and ref != data["reference_run"]:
                data["reference_run"] = ref
                v["data_json"] = json.dumps(data, default=str)
        return v

    @staticmethod
    def _insert(db: Db, table: str, columns: list[str], row: dict[str, Any], explicit: set[str]) -> int:
        """Insert ``row`` keeping its id when the target has no row with it (``table`` then
        joins ``explicit``: its id generator must be moved past it); the id it got."""
        if db.execute(f"SELECT 1 FROM {table} WHERE id = ?", (row["id"],)).fetchone() is None:
            cols = columns
            explicit.add(table)
        else:
            cols = [c for c in columns if c != "id"]
        sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        return db.insert(sql, [row.get(c) for c in cols])


def _same(src: ResultsStore, dst: ResultsStore) -> bool:
    a, b = src.path, dst.path
    if src.engine != dst.engine:
        return False
    if src.engine == "sqlite":
        return a.resolve() == b.resolve()  # type: ignore[union-attr]
    return str(a) == str(b)


def migrate(src: ResultsStore, dst: ResultsStore, log: Callable[[str], None] | None = None,
            every: int = 500) -> MigrateResult:
    """Copy every finished run of ``src`` (with its measurements and verdicts) into ``dst``
    that ``dst`` does not have yet. ``log`` hears progress every ``every`` runs."""
    if _same(src, dst):
        raise ResultsError(f"--from and --to are the same database ({src.path})", "name the database to copy into")
    result = MigrateResult(source=str(src.path), target=str(dst.path))
    copier = _Copier(src, dst, result)
    runs = src.query("SELECT * FROM runs ORDER BY id")
    for i, run in enumerate(runs, 1):
        if run["status"] == "running":
            result.running.append((int(run["id"]), run["host"] or "?"))
            continue
        copier.copy_run(run)
        if log is not None and i % every == 0:
            log(f"{i} of {len(runs)} runs done ({result.runs} copied, {result.already} already there)")
    return result
