"""Checks before the work: refuse a run that cannot finish before it spends the user's time.

Why this module exists: each long stage (export, build, profiling, pruning, fine-tuning,
tuning, timing) used to find its own problems when it got there. Measured on ``main``:
an unwritable ``prune --out`` failed after 452 s of profiling, pruning and fine-tuning;
an unsupported backend was refused after 14 s of export (exit 6, not 5); an unreachable
SSH board after export and build (exit 6, not 7, the message printed three times); a
``--db`` in an unwritable place only warned at the end. Every check here costs a probe
file, a registry look-up or one SSH connect, and is what the stage would find out later
anyway, so nothing is lost by asking first.

Commands call :func:`check_run` before they load the model (loading a zoo model may
train it); :func:`check_build` and :func:`make_out_dir` are cheap enough that
``flows.compile`` calls them too, so a library caller gets the same early refusal.

A folder counts as writable when a file can be created in it, never from mode bits
(``os.access``): root ignores mode bits, and neither a read-only mount nor a path under
a regular file is caught by them. The probe leaves nothing behind: it creates and removes
one file in the nearest folder that exists, so a check that passes creates no folders and
a command that then fails for another reason leaves no trace.
"""

from __future__ import annotations

import math
import os
import socket
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeprune.errors import BackendError, DeviceError, EdgepruneError, OutputError, PruneError, ResultsError

if TYPE_CHECKING:
    from edgeprune.config.devices import Device
    from edgeprune.config.targets import Target
    from edgeprune.prune.options import PruneOptions
    from edgeprune.results.location import PgUrl

Log = Callable[[str], None]

_HINT = "choose a folder you can write to"


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ output paths
def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (``lexists``: a dangling link stops the walk)."""
    base = path
    while not os.path.lexists(base) and base != base.parent:
        base = base.parent
    return base


def _probe_write(folder: Path) -> str | None:
    """Create and remove one file in ``folder``; the reason it failed, or None."""
    try:
        fd, name = tempfile.mkstemp(prefix=".edgeprune-probe-", dir=folder)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    os.close(fd)
    try:
        os.unlink(name)
    except OSError:
        pass
    return None


def _refuse_unless_writable(path: Path, folder: Path, what: str, error: type[EdgepruneError], hint: str) -> None:
    """Raise ``error`` unless a file can be created in ``folder`` (which need not exist yet)."""
    base = _nearest_existing(folder.absolute())
    if not base.is_dir():
        raise error(f"cannot write {what} {path}: {base} is a file, not a folder", hint)
    why = _probe_write(base)
    if why is not None:
        raise error(f"cannot write {what} {path}: {why} ({base})", hint)


def writable_dir(path: str | os.PathLike, what: str = "--out", error: type[EdgepruneError] = OutputError,
                 hint: str = _HINT) -> Path:
    """``path`` as a folder this process can create (if needed) and write into.

    Raises ``error`` (default :class:`OutputError`, exit 2) naming ``what`` (the option,
    or what the folder is for) with the reason: a file in the way, a file where a parent
    folder should be, or the probe file refused (permissions, read-only file system, full
    disk). Creates nothing.
    """
    path = Path(path).expanduser()
    if os.path.lexists(path) and not path.is_dir():
        raise error(f"{what} {path} is a file, not a folder", f"{hint}, or remove the file")
    _refuse_unless_writable(path, path, what, error, hint)
    return path


def writable_file(path: str | os.PathLike, what: str = "--out", error: type[EdgepruneError] = OutputError,
                  hint: str = _HINT) -> Path:
    """``path`` as a file this process can create or overwrite, and files beside it
    (``prune`` writes ``OUT.onnx`` and ``OUT.json`` next to ``OUT``). See :func:`writable_dir`."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise error(f"{what} {path} is a folder, not a file", "give a file name")
    if path.exists():
        try:
            with open(path, "ab"):  # opens for writing, changes nothing
                pass
        except OSError as exc:
            raise error(f"cannot write {what} {path}: {exc.strerror or type(exc).__name__}", hint) from None
    _refuse_unless_writable(path, path.parent, what, error, hint)
    return path


def make_out_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """Create the output folder ``path`` now; an :class:`OutputError` (one line, exit 2)
    instead of a bare ``PermissionError`` / ``NotADirectoryError`` if it cannot be."""
    path = writable_dir(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a race, or a limit the probe cannot see (a name too long)
        raise OutputError(f"cannot create {what} {path}: {exc.strerror or exc}", _HINT) from None
    return path


def check_db(path: str | os.PathLike | PgUrl | None) -> None:
    """The results database ``path`` (None: recording is off) can be opened and written:
    an existing one is opened now (a damaged or too new file fails here), a new one's folder
    is probed; a PostgreSQL URL is connected to (and its schema brought up to date), so an
    unreachable server or a wrong password is one line before any work. A
    :class:`ResultsError` (exit 10) instead of a warning after the run."""
    if path is None:
        return
    from edgeprune.results.location import PgUrl, parse_location
    from edgeprune.results.store import ResultsStore

    path = parse_location(path)  # an unknown scheme (mysql://) is refused here
    if isinstance(path, PgUrl):
        ResultsStore(path).close()
        return
    path = Path(path).expanduser()
    if path.is_dir():
        raise ResultsError(f"--db {path} is a folder, not a database file", "give a file path, e.g. results.sqlite")
    writable_file(path, "--db", ResultsError, "give --db a file in a folder you can write to, or --db none to record "
                                             "nothing")
    if not path.exists():
        return  # created by the first run that records
    ResultsStore(path).close()


# ------------------------------------------------------------------ backends and pruning
def check_backends(requested: Sequence[str], target: Target, prebuilt: Iterable[str] = ()) -> list[str]:
    """The backends to build: ``requested``, or every backend the target lists (``auto``).

    A requested backend that the target cannot use, or whose compiler is not installed
    here, is a :class:`BackendError` (exit 5) now, not a failed build after the export.
    With ``auto`` such backends are skipped by the build (it records why), and only a
    target none of whose backends can build is refused. ``prebuilt`` backends (``bench
    --artifact``) need no compiler on this host.
    """
    from edgeprune.compile.backends import get_backend

    names = list(requested) or list(target.backends)
    ready = set(prebuilt)
    why_not: dict[str, EdgepruneError] = {}
    for name in names:
        backend = get_backend(name)  # an unknown name: BackendError with the valid ones
        ok, why = backend.supports(target)
        if not ok:
            why_not[name] = BackendError(f"backend '{name}' cannot build for target {target.name}: {why}",
                                         f"target {target.name} lists: {', '.join(target.backends)}")
            continue
        if name not in ready:
            try:
                backend.version()
            except BackendError as exc:
                why_not[name] = exc
    if requested and why_not:
        raise next(iter(why_not.values()))
    if len(why_not) == len(names):
        raise BackendError(f"no backend of target {target.name} can build here: "
                           + "; ".join(f"{n}: {e.message}" for n, e in why_not.items()),
                           "pick a target whose backends this host has (see `edgeprune targets`)")
    return [n for n in names if n not in why_not]


def check_prune(options: PruneOptions | None) -> None:
    """A pruning request that can be attempted: one finite budget in range, finite limits.
    (The CLI's option types refuse these already; this holds for library callers.)"""
    if options is None:
        return
    for name, value in (("--latency-budget", options.budget), ("--latency-ms", options.latency_ms),
                        ("--max-accuracy-drop", options.max_accuracy_drop),
                        ("--finetune-epochs", options.finetune_epochs)):
        if value is not None and not math.isfinite(value):
            raise PruneError(f"{name} must be a finite number, got {value}")
    options.validate()


def check_build(target: Target, backends: Sequence[str], prebuilt: Iterable[str] = (),
                prune: PruneOptions | None = None) -> list[str]:
    """:func:`check_prune` then :func:`check_backends`: what ``compile_model`` checks
    before its export."""
    check_prune(prune)
    return check_backends(backends, target, prebuilt)


# ------------------------------------------------------------------ devices
def reach(device: Device) -> dict[str, Any] | None:
    """Connect to ``device`` and probe it (arch, CPU, Python, runtimes); None for a local
    device (this process is the proof it runs). Raises :class:`DeviceError` (exit 7).

    The probe goes through the process's probe cache
    (:data:`~edgeprune.bench.ssh.probe.PROCESS_PROBE_CACHE`), so the run that follows
    does not probe the board a second time.
    """
    if device.kind == "local":
        return None
    if device.kind != "ssh":
        raise DeviceError(f"device '{device.name}' has unsupported kind '{device.kind}'")
    from edgeprune.bench.ssh.connection import SSHConnection
    from edgeprune.bench.ssh.probe import PROCESS_PROBE_CACHE

    with SSHConnection(device) as conn:
        return PROCESS_PROBE_CACHE.probe(conn)


def _ready(device: Device, backends: Sequence[str], target: Target | None, log: Log) -> None:
    """Reach ``device``; refuse it when it has none of ``backends``' runtimes."""
    from edgeprune.bench.install import missing_runtimes

    probe = reach(device)
    if probe is None or not backends:
        return
    missing = missing_runtimes(probe, list(backends), device.python)
    if len(missing) == len(backends):
        raise DeviceError(f"device '{device.name}': {', '.join(missing)} not installed for {device.python} on the board",
                          "; ".join(missing.values()) + f" (see: edgeprune devices check {device.name})")
    for name in missing:
        log(f"note: device '{device.name}' has no {name} runtime: {name} is built but not timed there")
    arch = str(probe.get("arch") or probe.get("machine") or "").lower()
    arch = {"arm64": "aarch64", "amd64": "x86_64"}.get(arch, arch)
    if target is not None and arch and arch != target.arch:
        log(f"warning: device '{device.name}' is {arch} but target {target.name} is {target.arch}: "
            "compiled artifacts may not load there")


def check_devices(devices: Sequence[Device], backends: Sequence[str] = (), target: Target | None = None,
                  log: Log = _stderr) -> None:
    """Every device that will time something is reachable and has a runtime of
    ``backends``; all are probed at once. One :class:`DeviceError` (exit 7) names every
    device that is not, before any export or build."""
    from concurrent.futures import ThreadPoolExecutor

    remote = list({d.name: d for d in devices if d.kind != "local"}.values())
    if not remote:
        return

    def one(dev: Device) -> DeviceError | None:
        try:
            _ready(dev, backends, target, log)
        except DeviceError as exc:
            return exc
        return None

    with ThreadPoolExecutor(max_workers=min(8, len(remote))) as pool:
        failed = [e for e in pool.map(one, remote) if e is not None]
    if len(failed) == 1 and len(remote) == 1:
        raise failed[0]
    if failed:
        raise DeviceError(f"{len(failed)} of {len(remote)} devices not ready: " + "; ".join(e.message for e in failed),
                          "see: edgeprune devices check")


def check_tracker(address: str | None, timeout_s: float = 5.0) -> None:
    """A TVM RPC tracker ``HOST:PORT`` accepts a TCP connection (:class:`DeviceError`, exit 7)."""
    if not address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise DeviceError(f"RPC tracker address {address!r} is not HOST:PORT", "e.g. --rpc-tracker 10.0.0.2:9190")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise DeviceError(f"cannot reach the RPC tracker {address}: {exc.strerror or exc}",
                          "is `python -m tvm.exec.rpc_tracker` running there, and the port right?") from None


# ------------------------------------------------------------------ one call per command
def check_run(target: Target | None = None, devices: Sequence[Device] = (), backends: Sequence[str] = (), *,
              dirs: Mapping[str, Path | None] | None = None, files: Mapping[str, Path | None] | None = None,
              db: Path | PgUrl | None = None, prune: PruneOptions | None = None, prebuilt: Iterable[str] = (),
              lut: Path | bool = False, log: Log = _stderr) -> list[str]:
    """Everything a command can know before it loads the model, cheapest first.

    ``dirs`` / ``files``: output folders / files by the option that names them (None
    values skipped); ``db``: the results database it will record into; ``backends``:
    the requested ones (empty: the target's, ``auto``); ``lut``: the run measures latency
    tables (True: into the default cache, a path: into that folder). Devices are reached
    last (the network is the slow part). Returns the backends that will be built.
    """
    for what, path in (dirs or {}).items():
        if path is not None:
            writable_dir(path, what)
    for what, path in (files or {}).items():
        if path is not None:
            writable_file(path, what)
    if lut:
        from edgeprune.latency.store import LUTStore

        root = LUTStore(lut if isinstance(lut, Path) else None).root
        writable_dir(root, "--cache-dir" if isinstance(lut, Path) else "the latency-table cache ($EDGEPRUNE_CACHE/lut)")
    check_db(db)
    names = check_build(target, backends, prebuilt, prune) if target is not None else list(backends)
    check_devices(devices, names, target, log)
    return names
