"""``edgeprune nightly``: run a model x target x device x backend matrix, compare every
cell with its baseline, store everything, write the reports, and say in the exit code
whether anything regressed.

The matrix file (``nightly.yaml``)::

    name: nightly-host
    matrix:                      # the cross product of these lists ...
      models: [zoo:digits-cnn, zoo:mlp-recsys]
      targets: [host]
      devices: [local]           # names from devices.yaml
      backends: [onnxruntime, openvino]
      exclude:                   # ... minus cells matching every key given here
        - {model: zoo:mlp-recsys, backend: openvino}
      include:                   # ... plus extra cells (fields default to the lists' first)
        - {model: zoo:lstm-digits, backend: onnxruntime, bench: {min_runs: 30}}
    bench: {warmup: 5, min_runs: 50, min_time_s: 0.5}   # + rounds: 3, steady_gate: false
    detection: {min_effect: 0.03, confidence: 0.99, max_remeasure: 2, accuracy_tolerance: 0.5}
    baseline: {runs: 5}          # or {pin: 42}: compare against run 42

Execution: devices run in parallel (one thread each); the cells of one device run one at
a time. Every ``kind: local`` device is this machine, so a host-wide lock lets only one
of them (in any process) time at once; SSH boards have their own per-board lock. Every cell is stored the moment it is
measured. An UNKNOWN latency verdict triggers up to ``max_remeasure`` new measurements of
that cell (the artifact is reused), judged together with the first; a first SLOWER verdict
is confirmed by one such measurement before it is reported (a slow episode of a shared
machine then has to last across two runner processes to page anyone).

Exit status (:attr:`NightlyResult.exit_code`): 0 nothing regressed, 1 a latency,
accuracy or parity regression, 2 the run itself failed (a cell could not be measured,
or the run was interrupted); cells that completed are stored and reported either way.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgeprune.config.yamlfile import load_model_file, read_yaml
from edgeprune.errors import ConfigError, EdgepruneError
from edgeprune.results import fingerprint
from edgeprune.results.detect import DetectSettings
from edgeprune.results.evaluate import CellOutcome, Policy, judge
from edgeprune.results.store import Measurement, ResultsStore, cell_name

Log = Callable[[str], None]
Backend = Literal["onnxruntime", "openvino", "tvm"]


# --------------------------------------------------------------------------- schema
class BenchSpec(BaseModel):
    """How each cell is measured (see ``edgeprune bench --help``)."""

    model_config = ConfigDict(extra="forbid")
    warmup: int = Field(5, ge=0)
    min_runs: int = Field(50, ge=5)
    min_time_s: float = Field(0.5, ge=0)
    max_time_s: float = Field(20.0, gt=0)
    threads: int | None = Field(None, ge=1)
    timeout_s: float = Field(900.0, gt=0)
    eval_samples: int | None = Field(None, ge=1)
    rounds: int = Field(3, ge=1, le=20)
    steady_gate: bool = False


class BenchOverride(BaseModel):
    model_config = ConfigDict(extra="forbid")
    warmup: int | None = Field(None, ge=0)
    min_runs: int | None = Field(None, ge=5)
    min_time_s: float | None = Field(None, ge=0)
    max_time_s: float | None = Field(None, gt=0)
    threads: int | None = Field(None, ge=1)
    timeout_s: float | None = Field(None, gt=0)
    eval_samples: int | None = Field(None, ge=1)
    rounds: int | None = Field(None, ge=1, le=20)
    steady_gate: bool | None = None


class DetectionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_effect: float = Field(0.03, gt=0, lt=1, description="relative latency change that matters (0.03 = 3 %)")
    confidence: float = Field(0.99, gt=0.5, lt=1)
    same_confidence: float = Field(0.90, gt=0.5, lt=1)
    alpha: float = Field(0.01, gt=0, lt=0.5)
    run_noise: float = Field(0.01, ge=0, lt=1, description="prior between-run noise (sd of log medians)")
    statistic: Literal["median", "p25", "p10", "p5", "min"] = Field(
        "p10", description="per-run location compared: a low quantile (steady on busy machines) or the median")
    max_remeasure: int = Field(2, ge=0, le=10)
    accuracy_tolerance: float = Field(0.5, ge=0, description="points of accuracy a cell may lose")
    fail_on_unknown: bool = False


class BaselineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    runs: int = Field(5, ge=1, le=100, description="compare with the last N good runs of the cell")
    min_runs: int = Field(3, ge=1, le=100, description="judge latency only once this many earlier runs exist")
    pin: int | None = Field(None, ge=1, description="compare with this run id instead")


class CellFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    target: str | None = None
    device: str | None = None
    backend: Backend | None = None


class CellInclude(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    target: str | None = None
    device: str | None = None
    backend: Backend | None = None
    bench: BenchOverride | None = None


class MatrixSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: list[str] = Field(min_length=1)
    targets: list[str] = Field(default_factory=lambda: ["host"], min_length=1)
    devices: list[str] = Field(default_factory=lambda: ["local"], min_length=1)
    backends: list[Backend] = Field(default_factory=lambda: ["onnxruntime"], min_length=1)
    exclude: list[CellFilter] = Field(default_factory=list)
    include: list[CellInclude] = Field(default_factory=list)


class NightlyFile(BaseModel):
    """The whole matrix file."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field("nightly", min_length=1)
    devices_file: str | None = Field(None, description="devices.yaml, relative to this file")
    matrix: MatrixSpec
    bench: BenchSpec = Field(default_factory=BenchSpec)
    detection: DetectionSpec = Field(default_factory=DetectionSpec)
    baseline: BaselineSpec = Field(default_factory=BaselineSpec)

    @model_validator(mode="after")
    def _unique(self) -> "NightlyFile":
        for key in ("models", "targets", "devices", "backends"):
            vals = getattr(self.matrix, key)
            dupes = sorted({v for v in vals if vals.count(v) > 1})
            if dupes:
                raise ValueError(f"matrix.{key} lists {', '.join(dupes)} twice")
        return self


@dataclass(frozen=True)
class Cell:
    model: str
    target: str
    device: str
    backend: str
    bench: BenchSpec

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return (self.model, self.target, self.device, self.backend, "")

    @property
    def name(self) -> str:
        return cell_name(self.key)

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.model}-{self.target}-{self.device}-{self.backend}").strip("_")


@dataclass
class NightlyConfig:
    spec: NightlyFile
    path: Path
    cells: list[Cell]

    @property
    def devices_file(self) -> Path | None:
        if not self.spec.devices_file:
            return None
        p = Path(self.spec.devices_file).expanduser()
        return p if p.is_absolute() else self.path.parent / p

    def policy(self, pin: int | None = None) -> Policy:
        d = self.spec.detection
        return Policy(
            detect=DetectSettings(min_effect=d.min_effect, confidence=d.confidence, same_confidence=d.same_confidence,
                                  alpha=d.alpha, run_noise=d.run_noise, statistic=d.statistic),
            baseline_runs=self.spec.baseline.runs,
            min_baseline_runs=min(self.spec.baseline.min_runs, self.spec.baseline.runs),
            pin=pin if pin is not None else self.spec.baseline.pin,
            accuracy_tolerance=d.accuracy_tolerance,
            max_remeasure=d.max_remeasure,
            fail_on_unknown=d.fail_on_unknown,
        )


def _line_of(node: Any, *path: Any) -> int | None:
    """1-based line of ``path`` (keys / list indices) in a composed YAML tree."""
    import yaml

    for key in path:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == str(key)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            break
        if node is None:
            return None
    return node.start_mark.line + 1 if node is not None else None


def expand(spec: NightlyFile) -> list[Cell]:
    """The cells of a matrix: cross product - exclude + include, in file order, no duplicates."""
    m = spec.matrix

    def bench_for(override: BenchOverride | None) -> BenchSpec:
        if override is None:
            return spec.bench
        return spec.bench.model_copy(update={k: v for k, v in override.model_dump().items() if v is not None})

    cells: dict[tuple[str, str, str, str], Cell] = {}
    for model, target, device, backend in itertools.product(m.models, m.targets, m.devices, m.backends):
        c = {"model": model, "target": target, "device": device, "backend": backend}
        if any(all(v is None or c[k] == v for k, v in ex.model_dump().items()) for ex in m.exclude):
            continue
        cells[(model, target, device, backend)] = Cell(model, target, device, backend, spec.bench)
    for inc in m.include:
        key = (inc.model or m.models[0], inc.target or m.targets[0], inc.device or m.devices[0],
               inc.backend or m.backends[0])
        cells[key] = Cell(*key, bench=bench_for(inc.bench))
    return list(cells.values())


def load_matrix(path: Path) -> NightlyConfig:
    """Read and validate a matrix file; every problem is ``file:line: what``."""
    spec = load_model_file(NightlyFile, path)
    _, node = read_yaml(path)
    cfg = NightlyConfig(spec=spec, path=path, cells=expand(spec))
    if not cfg.cells:
        raise ConfigError(f"{path}: the matrix has no cells left after 'exclude'")

    from edgeprune.config.devices import load_devices
    from edgeprune.config.targets import get_target

    problems = []
    try:
        devices = {d.name for d in load_devices(cfg.devices_file)}
    except ConfigError as exc:
        raise ConfigError(f"{path}: devices_file: {exc}") from None
    for key, kind in (("targets", "target"), ("devices", "device")):
        for i, name in enumerate(getattr(spec.matrix, key)):
            line = _line_of(node, "matrix", key, i)
            where = f"{path}:{line}" if line else str(path)
            if kind == "device" and name not in devices:
                problems.append(f"{where}: unknown device '{name}'. Choose from: {', '.join(sorted(devices))}")
            elif kind == "target":
                try:
                    get_target(name)
                except ConfigError as exc:
                    problems.append(f"{where}: {exc.message}")
    for i, inc in enumerate(spec.matrix.include):
        line = _line_of(node, "matrix", "include", i)
        where = f"{path}:{line}" if line else str(path)
        if inc.device and inc.device not in devices:
            problems.append(f"{where}: unknown device '{inc.device}'. Choose from: {', '.join(sorted(devices))}")
        if inc.target:
            try:
                get_target(inc.target)
            except ConfigError as exc:
                problems.append(f"{where}: {exc.message}")
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg


def shard(cells: list[Cell], spec: str | None) -> list[Cell]:
    """``"2/4"`` -> the second of four deterministic slices (for CI runners in parallel)."""
    if not spec:
        return cells
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise ConfigError(f"--shard '{spec}' must look like I/N with 1 <= I <= N, e.g. 1/4")
    i, n = int(m.group(1)), int(m.group(2))
    return [c for k, c in enumerate(sorted(cells, key=lambda c: c.name)) if k % n == i - 1]


# --------------------------------------------------------------------------- running
@dataclass
class NightlyResult:
    run_id: int
    status: str  # complete | incomplete | failed
    fail_on_unknown: bool = False
    outcomes: list[CellOutcome] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    reports: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def regressions(self) -> list[CellOutcome]:
        return [o for o in self.outcomes if o.regression]

    @property
    def unknown(self) -> list[CellOutcome]:
        return [o for o in self.outcomes if o.unknown]

    @property
    def exit_code(self) -> int:
        if self.status != "complete":
            return 2
        return 1 if self.regressions or (self.fail_on_unknown and self.unknown) else 0


@contextlib.contextmanager
def host_lock(device_name: str, log: Log) -> Iterator[None]:
    """Exclusive lock for timing on *this machine* (across threads and processes).

    Every ``kind: local`` device is this host's CPU, whatever its name: two of them
    timing at once would disturb each other, so they share one lock.
    """
    d = Path(tempfile.gettempdir()) / "edgeprune-locks"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "local-host.lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"this host is busy with another benchmark (device '{device_name}' waits for it) ...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class NightlyRunner:
    """Runs the cells of a matrix into one run of a results store."""

    def __init__(self, cfg: NightlyConfig, store: ResultsStore, work_dir: Path, policy: Policy, log: Log,
                 command: str | None = None) -> None:
        self.cfg, self.store, self.work_dir, self.policy, self.log = cfg, store, work_dir, policy, log
        self.command = command
        self.stop = threading.Event()
        self.host_env = fingerprint.collect()
        self._models: dict[str, Any] = {}
        self._model_locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._out_lock = threading.Lock()
        self.outcomes: list[CellOutcome] = []
        self.errors: list[str] = []
        self.run_id: int | None = None

    # -- helpers ----------------------------------------------------------------------
    def _say(self, cell: Cell | None, msg: str) -> None:
        with self._out_lock:
            self.log(f"[{cell.device}] {msg}" if cell else msg)

    def _model(self, spec: str):
        from edgeprune.models.spec import load_model

        with self._locks_lock:
            lock = self._model_locks.setdefault(spec, threading.Lock())
        with lock:
            if spec not in self._models:
                self._models[spec] = load_model(spec, log=lambda m: self._say(None, m))
            return self._models[spec]

    def _bench_settings(self, cell: Cell):
        from edgeprune.compile.pipeline import BenchSettings

        b = cell.bench
        return BenchSettings(warmup=b.warmup, min_runs=b.min_runs, min_time_s=b.min_time_s, max_time_s=b.max_time_s,
                             threads=b.threads, timeout_s=b.timeout_s, eval_samples=b.eval_samples,
                             rounds=b.rounds, steady_gate=b.steady_gate)

    def _record(self, outcome: CellOutcome) -> None:
        for v in outcome.verdicts:
            self.store.add_verdict(self.run_id, v)  # type: ignore[arg-type]
        with self._out_lock:
            self.outcomes.append(outcome)

    def _failed_cell(self, cell: Cell, error: str) -> None:
        m = Measurement(model=cell.model, backend=cell.backend, target=cell.target, device=cell.device, ok=False,
                        error=error)
        self.store.add_measurement(self.run_id, m)  # type: ignore[arg-type]
        self._record(judge(self.store, self.run_id, [m], self.policy))  # type: ignore[arg-type]
        with self._out_lock:
            self.errors.append(f"{cell.name}: {error}")

    # -- one cell ---------------------------------------------------------------------
    def run_cell(self, cell: Cell) -> None:
        from edgeprune.compile.pipeline import CompileOptions, compile_model
        from edgeprune.config.devices import get_device
        from edgeprune.config.targets import get_target
        from edgeprune.results.record import measurements_from_summary

        t0 = time.monotonic()
        self._say(cell, f"{cell.name}: compiling and measuring ...")
        try:
            device = get_device(cell.device, self.cfg.devices_file)
            target = get_target(cell.target)
            model = self._model(cell.model)
            out_dir = self.work_dir / cell.slug
            opts = CompileOptions(backends=(cell.backend,), bench=self._bench_settings(cell))
            lock = host_lock(device.name, lambda m: self._say(cell, m)) if device.kind == "local" else contextlib.nullcontext()
            with lock:
                summary = compile_model(model, target, device, out_dir, opts, log=lambda m: self._say(cell, "  " + m))
        except EdgepruneError as exc:
            if self.stop.is_set():  # the interrupt killed it: not a failure of the cell
                return
            self._say(cell, f"{cell.name}: FAILED: {exc}")
            self._failed_cell(cell, str(exc))
            return
        if self.stop.is_set():
            return
        local = device.kind == "local"
        first = measurements_from_summary(summary, self.host_env, local, backends=[cell.backend])[0]
        self.store.add_measurement(self.run_id, first)  # type: ignore[arg-type]
        attempts = [first]
        outcome = judge(self.store, self.run_id, attempts, self.policy)  # type: ignore[arg-type]
        while (outcome.unknown or (outcome.slower and len(attempts) == 1)) \
                and len(attempts) <= self.policy.max_remeasure and not self.stop.is_set():
            why = "confirming" if outcome.slower else "measuring again"
            self._say(cell, f"{cell.name}: {outcome.latency.detail.split(';')[0]} -> {why} "  # type: ignore[union-attr]
                            f"({len(attempts)}/{self.policy.max_remeasure})")
            again = self._remeasure(cell, device, out_dir, first, len(attempts), local)
            if again is None:
                break
            self.store.add_measurement(self.run_id, again)  # type: ignore[arg-type]
            attempts.append(again)
            outcome = judge(self.store, self.run_id, attempts, self.policy)  # type: ignore[arg-type]
        self._record(outcome)
        lat = outcome.latency
        med = f"{first.median_ms:.3f} ms" if first.median_ms else "no latency"
        flags = [v.kind + " " + v.verdict for v in outcome.verdicts if v.regression]
        self._say(cell, f"{cell.name}: {med}, latency {lat.verdict if lat else '–'}"
                        + (f" ({lat.ratio:.3f}x)" if lat and lat.ratio else "")
                        + (f", REGRESSION: {', '.join(flags)}" if flags else "")
                        + f" [{time.monotonic() - t0:.0f} s]")
        if not first.ok:
            with self._out_lock:
                self.errors.append(f"{cell.name}: {first.error}")

    def _remeasure(self, cell: Cell, device, out_dir: Path, first: Measurement, attempt: int,
                   local: bool) -> Measurement | None:
        """Time the already-built artifact of ``cell`` again (a fresh runner process)."""
        from edgeprune.bench.devices import executor_for
        from edgeprune.bench.stats import LatencyStats

        bundle = out_dir / "bundle"
        try:
            lock = host_lock(device.name, lambda m: self._say(cell, m)) if local else contextlib.nullcontext()
            with lock:
                results = executor_for(device).run_bundle(bundle, timeout_s=cell.bench.timeout_s, only=[cell.backend])
        except EdgepruneError as exc:
            self._say(cell, f"{cell.name}: re-measurement failed: {exc}")
            return None
        jr = next((r for r in results if r.id == cell.backend), None)
        if jr is None or not jr.ok or not jr.times_ms:
            self._say(cell, f"{cell.name}: re-measurement failed: {jr.error if jr else 'no result'}")
            return None
        s = LatencyStats.from_times(jr.times_ms)
        env = fingerprint.merge(jr.env, self.host_env, local)
        version = first.backend_version or jr.runtime_version
        return Measurement(
            model=first.model, backend=first.backend, target=first.target, device=first.device, ok=True,
            model_hash=first.model_hash, artifact_hash=first.artifact_hash, backend_version=version,
            emulated=first.emulated, times_ms=list(jr.times_ms), median_ms=s.median, p90_ms=s.p90, cv=s.cv,
            accuracy=jr.accuracy, parity_max_diff=jr.max_abs_diff, parity_tolerance=first.parity_tolerance,
            verified=jr.verified, threads=jr.threads, pruned=first.pruned, variant=first.variant,
            variant_info=first.variant_info, env=env,
            series=fingerprint.series_key(env, first.backend, version, jr.threads), attempt=attempt,
        )

    # -- the whole matrix -------------------------------------------------------------
    def _device_worker(self, cells: list[Cell]) -> None:
        for cell in cells:
            if self.stop.is_set():
                return
            try:
                self.run_cell(cell)
            except Exception as exc:  # noqa: BLE001 - one broken cell must not stop the others
                if self.stop.is_set():
                    return
                self._say(cell, f"{cell.name}: FAILED: unexpected {type(exc).__name__}: {exc}")
                try:
                    self._failed_cell(cell, f"unexpected {type(exc).__name__}: {exc}")
                except Exception:  # noqa: BLE001
                    pass

    def run(self, cells: list[Cell]) -> NightlyResult:
        t0 = time.monotonic()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.run_id = self.store.begin_run("nightly", env=self.host_env, command=self.command, label=self.cfg.spec.name,
                                           cwd=self.cfg.path.parent)
        by_device: dict[str, list[Cell]] = {}
        for c in cells:
            by_device.setdefault(c.device, []).append(c)
        self.log(f"nightly run {self.run_id}: {len(cells)} cell(s) on {len(by_device)} device(s) "
                 f"({', '.join(by_device)}), results in {self.store.path}")
        threads = [threading.Thread(target=self._device_worker, args=(cs,), name=f"nightly-{d}", daemon=True)
                   for d, cs in by_device.items()]
        status, note = "complete", None
        try:
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(timeout=0.2)
        except KeyboardInterrupt:
            self.stop.set()
            status, note = "incomplete", "interrupted; the cells measured before are kept"
            self.log("interrupted: stopping; cells measured so far are kept")
            _kill_children()
            for t in threads:
                t.join(timeout=5)
        if status == "complete":
            measured = {o.cell for o in self.outcomes}
            missing = [c for c in cells if c.key not in measured]
            if self.errors or missing:
                status = "failed"
                note = "; ".join(self.errors + [f"{c.name}: not run" for c in missing])[:4000]
        self.store.finish_run(self.run_id, status, note)
        return NightlyResult(run_id=self.run_id, status=status, fail_on_unknown=self.policy.fail_on_unknown,
                             outcomes=list(self.outcomes), errors=list(self.errors), seconds=time.monotonic() - t0)


def _kill_children() -> None:
    """End the benchmark processes this process started (runners live in their own
    sessions, so they would not see the interrupt)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover
        return
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child.kill()


def run_nightly(
    matrix: Path,
    db: Path,
    report_dir: Path | None,
    log: Log,
    shard_spec: str | None = None,
    pin: int | None = None,
    work_dir: Path | None = None,
    keep_work: bool = False,
    formats: tuple[str, ...] = ("html", "md", "json", "junit"),
    since: str = "30d",
    command: str | None = None,
) -> NightlyResult:
    """Library form of ``edgeprune nightly``: run, judge, store, report."""
    cfg = load_matrix(matrix)
    cells = shard(cfg.cells, shard_spec)
    if not cells:
        raise ConfigError(f"shard {shard_spec} of {matrix} has no cells ({len(cfg.cells)} in total)")
    policy = cfg.policy(pin)
    with ResultsStore(db) as store:
        if policy.pin is not None:
            store.run(policy.pin)  # fails clearly when the pinned run does not exist
        # a folder per invocation, so concurrent nightly runs never share bundles
        root = work_dir or Path("out") / "nightly"
        runner = NightlyRunner(cfg, store, root / f"run-{os.getpid()}-{int(time.time())}", policy, log, command)
        try:
            result = runner.run(cells)
        finally:
            if not keep_work:
                shutil.rmtree(runner.work_dir, ignore_errors=True)
        if report_dir is not None:
            from edgeprune.results.report import gather, write_reports

            data = gather(store, run_id=result.run_id, since=since, title=f"edgeprune nightly: {cfg.spec.name}",
                          policy=policy)
            result.reports = write_reports(data, report_dir, formats)
    return result
