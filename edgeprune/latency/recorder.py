"""Measured points -> the table file, one chunk at a time: the one writer every
measuring flow shares (a model's profile, the device model's calibration suite, the
points the pruner confirms).

Why one writer: a point's entry is stored in the table's reference unit
(:class:`~edgeprune.latency.series.TableUnit`), completed when an interrupted run owed it
rounds, merged when it is re-measured, and saved the moment its chunk finishes so an
interruption loses nothing. Getting any of that wrong in one of three copies would put
points of different scales into one file, and the device model fits on *every* point of
the file.

Each saved entry carries ``busy``: the CPUs other processes kept busy on a local device
when its chunk was timed (:func:`edgeprune.host.busy_cores`), so a table or device model
measured on a busy host is known as such and not silently reused as quiet.

Several boards, one file: boards of one kind share a table (``Device.table_device``), and
a device-model build over a board farm (:mod:`edgeprune.flows.farm`) times on every board
at once, one thread per board, each with its own measurer
(:meth:`PointRecorder.measure`'s ``measurer``). Every chunk of every board still goes
through this one recorder: its lock serialises the conversion into the table's unit, the
in-memory entries and the file write (the store's file lock and atomic rename then keep
other processes out), so no board's chunk is lost or half-written, and each entry names
the board that measured it (``LatencyEntry.device``) where the table is shared.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeprune.latency.entry import LatencyEntry
from edgeprune.latency.layer_bundle import REFERENCE_LAYER, Job
from edgeprune.latency.series import Timing, TableUnit
from edgeprune.latency.store import LUTStore, TableFile, TableKey

if TYPE_CHECKING:
    from edgeprune.bench.settings import BenchSettings
    from edgeprune.latency.measurer import BundleMeasurer

Log = Callable[[str], None]

#: how a chunk's timings become entries: a point never measured, a point an interrupted
#: run cut short (its owed rounds are added), or more rounds for a noisy point
MODES = ("new", "complete", "remeasure")


class PointRecorder:
    """Keeps ``entries`` (cached + measured now) and writes every chunk to ``path``.

    ``busy`` is sampled before each chunk by the caller-provided ``busy_probe`` (None on
    remote devices: the host's load says nothing about a board)."""

    def __init__(self, store: LUTStore, path: Path, key: TableKey, tf: TableFile, measurer: "BundleMeasurer",
                 drift: str, log: Log, busy_probe: Callable[[], float | None] | None = None) -> None:
        self.store, self.path, self.key = store, Path(path), key
        self.measurer = measurer
        self.log = log
        self.entries: dict[str, LatencyEntry] = dict(tf.entries)
        self.cached: frozenset[str] = frozenset(tf.entries)
        self.unit = TableUnit(drift, tf.reference_ms)
        self.env: dict[str, Any] = dict(tf.env)
        self.measured: set[str] = set()
        self.completed: set[str] = set()  # points cut short by an interrupted run, completed now
        self.busy_probe = busy_probe
        self.busy: float | None = None
        #: one chunk at a time, whichever board's thread it comes from (module docstring)
        self._lock = threading.RLock()

    # ---- writing ---------------------------------------------------------------------------
    def save(self, new: Mapping[str, LatencyEntry], models: Mapping[str, dict[str, Any]] | None = None
             ) -> TableFile:
        """Merge ``new`` entries (and model measurements) into the file under its lock. If
        another profiler defined the file's unit first, adopt it (the new entries are
        rescaled to it by the store) and go on in that unit."""
        with self._lock:
            return self._save(new, models)

    def _save(self, new: Mapping[str, LatencyEntry], models: Mapping[str, dict[str, Any]] | None) -> TableFile:
        if self.measurer.last_env:
            self.env = {k: v for k, v in self.measurer.last_env.items() if k != "timing"}
        ref = {"signature": REFERENCE_LAYER.signature(), "ms": self.unit.ref_ms} if self.unit.ref_ms else None
        merged, factor = self.store.save(self.path, self.key, new, models, self.env, ref)
        if factor != 1.0:
            self.log(f"adopting the reference unit of {self.path} (written concurrently by another profiler)")
            for k in new:
                self.entries[k] = merged.entries[k]
            self.unit.ref_ms = merged.reference_ms
        return merged

    def board_of(self, measurer: "BundleMeasurer | None" = None) -> str:
        """What an entry measured by ``measurer`` records as its board: the device's name
        where the table is shared by a kind of boards, else "" (the table's own device)."""
        name = (measurer or self.measurer).device.name
        return "" if name == self.key.device else name

    def on_chunk(self, mode: str, measurer: "BundleMeasurer | None" = None,
                 tap: Callable[[dict[str, Timing]], None] | None = None) -> Callable[[dict[str, Timing]], None]:
        """The callback that turns one finished chunk's timings into entries (``mode``, see
        :data:`MODES`) and saves them at once. ``measurer``: the board it came from (default
        the recorder's own); ``tap`` sees the raw timings first (a farm's health check)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        mine = measurer is None or measurer is self.measurer
        board = self.board_of(measurer)

        def keep(timings: dict[str, Timing]) -> None:
            if tap is not None:
                tap(timings)
            with self._lock:
                busy = self.busy if mine else None  # sampled on this host: only the recorder's own device
                new = {}
                for k, tm in timings.items():
                    rounds, f = self.unit.rounds(tm)
                    old = self.entries.get(k)
                    if old is not None and mode == "complete":
                        e = old.completed(rounds, tm.runs, f, partial=tm.short)
                        if not e.partial:
                            self.completed.add(k)
                    elif old is not None and mode == "remeasure":
                        e = old.merged(rounds, tm.runs, f)
                    else:
                        e = LatencyEntry.from_rounds(rounds, tm.runs, f, partial=tm.short)
                    e = e.by(board)
                    if busy is not None:
                        e = dataclasses.replace(e, busy=round(max(busy, e.busy), 2))  # the busiest it was timed
                    self.entries[k] = new[k] = e
                    self.measured.add(k)
                self._save(new, None)
        return keep

    # ---- measuring -------------------------------------------------------------------------
    def measure(self, jobs: list[Job], mode: str, rounds: int, series: "BenchSettings",
                description: str, measurer: "BundleMeasurer | None" = None,
                tap: Callable[[dict[str, Timing]], None] | None = None) -> dict[str, str]:
        """Time ``jobs`` (keyed by point signature) in interleaved rounds on the device
        (``measurer``'s, default the recorder's own: one board of a farm each), saving each
        chunk as it finishes; returns ``{signature: error}`` for points that could not be
        measured. Safe to call from one thread per board at once."""
        m = measurer or self.measurer
        if self.busy_probe is not None and m is self.measurer:
            self.busy = self.busy_probe()
        _, errs = m.measure(jobs, rounds, series, self.on_chunk(mode, m, tap), description=description)
        return errs

    # ---- what happened ---------------------------------------------------------------------
    @property
    def cut_short(self) -> int:
        return sum(1 for k in self.measured if self.entries[k].partial)
