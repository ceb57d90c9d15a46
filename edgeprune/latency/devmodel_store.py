"""The device model's metadata: a versioned sidecar JSON next to its latency table.

Why a sidecar and not a section of the table: the points *are* the device model (it is
refitted from them, nothing is pickled), and they live in the table file every profile
of the same context writes (:mod:`edgeprune.latency.store`). What the table cannot say
is what a build knows: which suite version was measured, whether it finished or was
stopped by its time budget or a signal, how long it took over all its resumed runs, how
busy the device was, and how well the model predicts held-out shapes. That is this file.

Location: ``<table file stem>.device-model.json`` beside the table
(:func:`sidecar_path`), so it has the table's :class:`~edgeprune.latency.store.TableKey`
by construction, and the key is repeated inside (a file copied by hand is not trusted).

Format (``docs/device-model.md``)::

    {"format": "edgeprune-device-model", "version": 1, "key": {...TableKey},
     "table": "<table file name>", "suite_version", "suite_size", "lanes", "state",
     "created", "updated", "build_seconds", "builds", "suite_points", "points_measured",
     "points_by_kind": {"<kind>": {"suite", "measured", "holdout"}},
     "failed": {"<signature>": "<why>"}, "busy": {"max", "median", "cpus", "state"},
     "fit": {...DeviceModel.describe()}, "holdout": {...holdout_report()},
     "fitted_on": "<fingerprint of the points fitted>",
     "farm": {"kind", "boards": {"<board>": {"state", "points", ...}}, "check": {...}}}

``farm`` (absent in files written before board farms, and for a device's own table): which
board measured how many of the suite points in the table (the table's entries name their
board), and the last build's overlap check (:mod:`edgeprune.latency.overlap`): boards
excluded or slow, unreachable or failed. Optional and additive, so the format version is
still 1 and every older file loads.

``state``: ``complete`` (every suite point is in the table, or could not be built),
``budget`` (stopped by ``--time-budget``; a rerun measures the rest), ``interrupted``
(stopped by a signal; no new fit was made, the last one is kept).

Writes take the table's lock (:func:`edgeprune.latency.store.locked`) and replace the
file atomically (``_atomic_write``), reading the current sidecar first, so concurrent
builds add up their seconds and a reader never sees half a file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edgeprune.errors import ConfigError
from edgeprune.latency.entry import now_iso
from edgeprune.latency.store import LUTStore, TableKey, _atomic_write, locked

DM_FORMAT = "edgeprune-device-model"
DM_VERSION = 1
SIDECAR_SUFFIX = ".device-model.json"
STATES = ("complete", "budget", "interrupted")


def sidecar_path(table_path: Path) -> Path:
    """Where the device model of the table at ``table_path`` keeps its metadata."""
    table_path = Path(table_path)
    return table_path.with_name(table_path.stem + SIDECAR_SUFFIX)


@dataclass
class DeviceModelInfo:
    """What a device-model build knows beyond the points (see the module docstring)."""

    key: TableKey
    suite_version: str
    suite_size: str
    lanes: int
    state: str
    table: str = ""
    created: str = ""
    updated: str = ""
    build_seconds: float = 0.0
    builds: int = 0
    suite_points: int = 0
    points_measured: int = 0
    points_by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    busy: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)
    holdout: dict[str, Any] = field(default_factory=dict)
    #: fingerprint of the points ``fit`` and ``holdout`` were computed on (a rebuild that
    #: finds the same points reuses them instead of fitting again)
    fitted_on: str = ""
    #: the boards that measured the table's points and the last farm build's overlap check
    farm: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def complete(self) -> bool:
        return self.state == "complete"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": DM_FORMAT, "version": DM_VERSION}
        for f in fields(self):
            if f.name == "path" or (f.name == "farm" and not self.farm):  # older files have no farm
                continue
            v = getattr(self, f.name)
            d[f.name] = v.to_dict() if isinstance(v, TableKey) else v
        d["build_seconds"] = round(float(self.build_seconds), 2)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: Path | None = None) -> "DeviceModelInfo":
        if d.get("format") != DM_FORMAT:
            raise ConfigError(f"{path}: not an edgeprune device-model file (format {d.get('format')!r})",
                              "delete it and run `edgeprune device-model build` again")
        if int(d.get("version", 0)) != DM_VERSION:
            raise ConfigError(f"{path}: device-model format version {d.get('version')} is not supported "
                              f"(this is version {DM_VERSION})", "run `edgeprune device-model build` again")
        state = str(d["state"])
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        return cls(
            key=TableKey.from_dict(d["key"]), suite_version=str(d["suite_version"]),
            suite_size=str(d.get("suite_size", "full")), lanes=int(d["lanes"]), state=state,
            table=str(d.get("table", "")), created=str(d.get("created", "")), updated=str(d.get("updated", "")),
            build_seconds=float(d.get("build_seconds", 0.0)), builds=int(d.get("builds", 0)),
            suite_points=int(d.get("suite_points", 0)), points_measured=int(d.get("points_measured", 0)),
            points_by_kind={str(k): {str(a): int(b) for a, b in v.items()}
                            for k, v in dict(d.get("points_by_kind", {})).items()},
            failed={str(k): str(v) for k, v in dict(d.get("failed", {})).items()},
            busy=dict(d.get("busy", {})), fit=dict(d.get("fit", {})), holdout=dict(d.get("holdout", {})),
            fitted_on=str(d.get("fitted_on", "")), farm=dict(d.get("farm") or {}), path=path,
        )


def read_info(path: Path) -> DeviceModelInfo:
    """The sidecar at ``path``; a :class:`ConfigError` (one line, exit 3) if it cannot
    be read or is not one."""
    path = Path(path)
    hint = "delete it and run `edgeprune device-model build` again"
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read device-model file {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"device-model file {path} is not valid JSON (line {exc.lineno}): {exc.msg}", hint) from None
    if not isinstance(data, dict):
        raise ConfigError(f"device-model file {path} is not a JSON object", hint)
    try:
        return DeviceModelInfo.from_dict(data, path)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"device-model file {path} is malformed: {exc}", hint) from None


def find(store: LUTStore, key: TableKey) -> DeviceModelInfo | None:
    """The device model of ``key`` under ``store`` (None if none was built). A file whose
    key is another context's (copied or renamed by hand) is not this one's: None.
    Raises :class:`ConfigError` on a corrupt file."""
    path = sidecar_path(store.path_for(key))
    if not path.exists():
        return None
    info = read_info(path)
    return info if info.key == key else None


def update(store: LUTStore, key: TableKey,
           change: Callable[[DeviceModelInfo | None], DeviceModelInfo]) -> DeviceModelInfo:
    """Read the current sidecar of ``key`` (None if absent, unreadable or another
    context's: it is replaced), apply ``change`` and write the result atomically, all
    under the table's lock. ``created`` is kept, ``updated`` set."""
    table = store.path_for(key)
    path = sidecar_path(table)
    with locked(table):
        current: DeviceModelInfo | None = None
        if path.exists():
            try:
                current = read_info(path)
            except ConfigError:
                current = None  # corrupt: replaced, never half-merged
            if current is not None and current.key != key:
                current = None
        info = change(current)
        info.created = (current.created if current is not None and current.created else "") or now_iso()
        info.updated = now_iso()
        info.table = table.name
        _atomic_write(path, json.dumps(info.to_dict(), indent=1) + "\n")
        info.path = path
        return info
