"""Latency tables on disk: one versioned JSON file per measurement context.

Location: :func:`lut_root` (``$EDGEPRUNE_CACHE/lut/``, default ``~/.cache/edgeprune/lut/``,
through :func:`edgeprune.paths.cache_dir`), then
``<target>/<device>/<backend>-<backend version>-t<threads>-<target fingerprint>.json``.
Everything that changes a measurement is in the path *and* repeated in the file's
``key``: the target (and a fingerprint of its resolved definition: CPU, features,
cores, backend options), the device, the backend and its version, the thread count.
Inside, points are keyed by layer signature (``PrunableLayer.signature(cin, cout)``),
so every model measured in the same context shares them.

Format (``docs/latency-tables.md`` has the full description)::

    {"format": "edgeprune-lut", "version": 1,
     "key": {"target", "target_fingerprint", "device", "backend", "backend_version", "threads"},
     "env": {...what the device reported: cpu, runtime version, governor...},
     "created", "updated",
     "entries": {"<signature>": {"ms", "rounds": [...], "runs", "measured", ["device"]}},
     "models": {"<model fingerprint>": {...full-model and calibration measurements...}}}

Writers take an exclusive ``fcntl`` lock on ``<file>.lock``, re-read the file, merge
their new points into it and replace it atomically (write ``.tmp``, fsync, rename): two
profilers writing at once lose nothing, and a reader never sees half a file.

A file whose key does not match the current context is *stale*. It is never used
silently: the default lookup ignores it and says why; a file the user pins with
``--lut`` raises :class:`StaleTableError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeprune.errors import BenchError, ConfigError
from edgeprune.latency.entry import LatencyEntry, now_iso
from edgeprune.paths import cache_dir

if TYPE_CHECKING:
    from edgeprune.config.devices import Device
    from edgeprune.config.targets import Target

LUT_FORMAT = "edgeprune-lut"
LUT_VERSION = 1
Log = Callable[[str], None]


class StaleTableError(BenchError):
    """A pinned latency table was measured in a different context (backend version, target...)."""


def lut_root() -> Path:
    """Where latency tables live by default (``$EDGEPRUNE_CACHE/lut``)."""
    return cache_dir("lut")


def target_fingerprint(target: "Target", backend: str) -> str:
    """Hash of everything about a target that changes generated code or timings."""
    from edgeprune.host import cpu_model

    d = {
        "arch": target.arch, "triple": target.triple, "cpu": target.cpu,
        "features": target.resolved_features(), "cores": target.num_cores(), "accelerator": target.accelerator,
        "cuda_arch": target.cuda_arch, "vector_bits": target.vector_bits,
        "backend_options": target.options_for(backend),
    }
    if target.is_host:
        d["host_cpu"] = cpu_model()
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", s)


@dataclass(frozen=True)
class TableKey:
    target: str
    target_fingerprint: str
    device: str
    backend: str
    backend_version: str
    threads: int
    #: what a layer point's time is: "wall" or "kernel" (edgeprune.runner.timing.TIMING_MODES); tables of
    #: the two never mix (a kernel table has no per-call overhead or layout conversions)
    timing: str = "wall"

    @property
    def filename(self) -> str:
        mode = "" if self.timing == "wall" else f"-{_safe(self.timing)}"  # wall tables keep their old names
        return (f"{_safe(self.backend)}-{_safe(self.backend_version)}-t{self.threads}{mode}-"
                f"{self.target_fingerprint}.json")

    def relpath(self) -> Path:
        return Path(_safe(self.target)) / _safe(self.device) / self.filename

    def diff(self, other: "TableKey") -> list[str]:
        """Human-readable differences (``other`` is what a file says)."""
        out = []
        for k, mine in asdict(self).items():
            theirs = getattr(other, k)
            if mine != theirs:
                out.append(f"{k.replace('_', ' ')} {theirs!r} (now {mine!r})")
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TableKey":
        d = {"timing": "wall", **d}  # tables written before timing modes existed are wall-clock
        return cls(**{k: (int(d[k]) if k == "threads" else str(d[k])) for k in cls.__dataclass_fields__})


def table_key(target: "Target", device: "Device", backend: str, threads: int, timing: str = "wall") -> TableKey:
    """The measurement context of a table of ``target`` on ``device`` with ``backend``.
    Boards of one ``board_kind`` share their table (``Device.table_device``: ``kind:K``),
    each entry saying which board measured it (``LatencyEntry.device``)."""
    from edgeprune.compile.backends import get_backend

    return TableKey(target=target.name, target_fingerprint=target_fingerprint(target, backend),
                    device=device.table_device,
                    backend=backend, backend_version=get_backend(backend).version(), threads=int(threads),
                    timing=timing)


@dataclass
class TableFile:
    """The contents of one LUT file."""

    key: TableKey
    entries: dict[str, LatencyEntry] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)  # {"signature", "ms"}: the unit of every entry
    created: str = ""
    updated: str = ""
    path: Path | None = None

    @property
    def reference_ms(self) -> float | None:
        v = self.reference.get("ms")
        return float(v) if v else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": LUT_FORMAT, "version": LUT_VERSION, "key": self.key.to_dict(), "env": self.env,
            "reference": self.reference,
            "created": self.created or now_iso(), "updated": self.updated or now_iso(),
            "entries": {k: e.to_dict() for k, e in sorted(self.entries.items())},
            "models": self.models,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: Path | None = None) -> "TableFile":
        if d.get("format") != LUT_FORMAT:
            raise ConfigError(f"{path}: not an edgeprune latency table (format {d.get('format')!r})")
        if int(d.get("version", 0)) != LUT_VERSION:
            raise StaleTableError(
                f"{path}: latency table format version {d.get('version')} is not supported (this is version {LUT_VERSION})",
                "re-profile: edgeprune profile ... --refresh",
            )
        return cls(
            key=TableKey.from_dict(d["key"]),
            entries={k: LatencyEntry.from_dict(v) for k, v in d.get("entries", {}).items()},
            models=dict(d.get("models", {})),
            env=dict(d.get("env", {})),
            reference=dict(d.get("reference", {})),
            created=str(d.get("created", "")),
            updated=str(d.get("updated", "")),
            path=path,
        )


def read_table(path: Path) -> TableFile:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read latency table {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"latency table {path} is not valid JSON (line {exc.lineno}): {exc.msg}",
                          "delete it and profile again") from None
    if not isinstance(data, dict):
        raise ConfigError(f"latency table {path} is not a JSON object")
    try:
        return TableFile.from_dict(data, path)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"latency table {path} is malformed: {exc}", "delete it and profile again") from None


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``<path>.lock`` (blocks until free)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class LUTStore:
    """Finds, loads and saves latency tables under a cache root."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root else lut_root()

    def path_for(self, key: TableKey) -> Path:
        return self.root / key.relpath()

    def tables(self) -> Iterator[TableFile]:
        """Every readable table under the root, in path order, whatever its context
        (for browsing, e.g. the report's staircases); other or broken files are skipped."""
        if not self.root.is_dir():
            return
        for p in sorted(self.root.rglob("*.json")):
            try:
                yield read_table(p)
            except (ConfigError, BenchError):
                continue

    def stale_tables(self, key: TableKey) -> list[tuple[Path, list[str]]]:
        """Tables for the same target/device/backend/threads measured in another context."""
        d = self.path_for(key).parent
        out = []
        if not d.is_dir():
            return out
        for p in sorted(d.glob(f"{_safe(key.backend)}-*.json")):
            if p == self.path_for(key) or p.name.endswith(".device-model.json"):  # a table's sidecar
                continue
            try:
                other = read_table(p).key
            except (ConfigError, BenchError) as exc:
                out.append((p, [str(exc)]))
                continue
            if other.backend == key.backend and other.threads == key.threads:
                out.append((p, key.diff(other)))
        return out

    def load(self, key: TableKey, log: Log = lambda m: None) -> TableFile:
        """The table for ``key`` (empty if none yet). Stale tables next to it are named
        and ignored, so the user knows why everything is measured again."""
        for p, why in self.stale_tables(key):
            log(f"ignoring stale latency table {p}: measured with {', '.join(why) or 'another context'}")
        path = self.path_for(key)
        if not path.exists():
            return TableFile(key=key, path=path)
        tf = read_table(path)
        if tf.key != key:  # a file copied or renamed by hand
            log(f"ignoring stale latency table {path}: measured with {', '.join(key.diff(tf.key))}")
            return TableFile(key=key, path=path)
        tf.path = path
        return tf

    @staticmethod
    def load_pinned(path: Path, key: TableKey) -> TableFile:
        """A table the user named explicitly: an error if it does not match the context."""
        tf = read_table(path)
        if tf.key != key:
            raise StaleTableError(
                f"latency table {path} does not match this run: it was measured with {', '.join(key.diff(tf.key))}",
                "re-profile without --lut, or pass the matching --target/--backend/--device/--threads",
            )
        tf.path = Path(path)
        return tf

    @staticmethod
    def save(
        path: Path,
        key: TableKey,
        entries: Mapping[str, LatencyEntry] | None = None,
        models: Mapping[str, dict[str, Any]] | None = None,
        env: Mapping[str, Any] | None = None,
        reference: Mapping[str, Any] | None = None,
    ) -> tuple[TableFile, float]:
        """Merge new entries/models into the file at ``path`` under its lock.

        Entries are in units of the caller's ``reference``
        (:class:`edgeprune.latency.series.TableUnit`). If the file already has a different
        reference (another profiler got there first), the new entries are rescaled to the
        file's and the factor is returned, so the caller continues in the file's units.
        Returns (merged contents, factor)."""
        path = Path(path)
        factor = 1.0
        with locked(path):
            current = TableFile(key=key)
            if path.exists():
                try:
                    current = read_table(path)
                except (ConfigError, BenchError):
                    current = TableFile(key=key)  # corrupt or old: replaced, never half-merged
                if current.key != key:
                    current = TableFile(key=key)
            new_entries = dict(entries or {})
            new_models = {k: dict(v) for k, v in (models or {}).items()}
            if reference and reference.get("ms"):
                if current.reference_ms and current.reference.get("signature") == reference.get("signature"):
                    factor = current.reference_ms / float(reference["ms"])
                else:
                    current.reference = dict(reference)
            if factor != 1.0:
                new_entries = {k: e.rescaled(factor) for k, e in new_entries.items()}
                new_models = {k: _rescale_model(m, factor) for k, m in new_models.items()}
            current.entries.update(new_entries)
            current.models.update(new_models)
            if env:
                current.env = dict(env)
            current.created = current.created or now_iso()
            current.updated = now_iso()
            _atomic_write(path, json.dumps(current.to_dict(), indent=1, sort_keys=False) + "\n")
            current.path = path
            return current, factor


def _rescale_model(m: Mapping[str, Any], factor: float) -> dict[str, Any]:
    out = dict(m)
    out["full"] = LatencyEntry.from_dict(m["full"]).rescaled(factor).to_dict()
    out["variants"] = [{"widths": v["widths"], **LatencyEntry.from_dict(v).rescaled(factor).to_dict()}
                       for v in m.get("variants", [])]
    return out
