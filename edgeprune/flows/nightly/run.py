"""A whole nightly run: one thread per device, the cells of a device one at a time,
Ctrl-C / SIGTERM handled, the run's status and the reports at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgeprune.errors import EXIT_FAILED, EXIT_OK, EXIT_REGRESSION, ConfigError  # the nightly exit contract
from edgeprune.flows.nightly.cell import CellRunner
from edgeprune.flows.nightly.keep import ArtifactKeep
from edgeprune.flows.nightly.matrix import Cell, NightlyConfig, load_matrix, shard
from edgeprune.results import fingerprint
from edgeprune.results.evaluate import CellOutcome, Policy
from edgeprune.results.store import ResultsStore

Log = Callable[[str], None]


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
        """0 nothing regressed, 1 a regression (or an UNKNOWN with ``fail_on_unknown``),
        2 the run itself failed or was interrupted."""
        if self.status != "complete":
            return EXIT_FAILED
        return EXIT_REGRESSION if self.regressions or (self.fail_on_unknown and self.unknown) else EXIT_OK


class NightlyRunner:
    """Runs the cells of a matrix into one run of a results store."""

    def __init__(self, cfg: NightlyConfig, store: ResultsStore, work_dir: Path, policy: Policy, log: Log,
                 command: str | None = None, accept_new_host_key: bool = False,
                 keep: ArtifactKeep | None = None) -> None:
        self.cfg, self.store, self.work_dir, self.policy, self.log = cfg, store, work_dir, policy, log
        self.keep = keep
        self.command = command
        self.accept_new_host_key = accept_new_host_key  # --insecure-accept-new-host-key, onto each device
        self.stop = threading.Event()
        self.host_env = fingerprint.collect()
        self._out_lock = threading.Lock()
        self.outcomes: list[CellOutcome] = []
        self.errors: list[str] = []
        self.run_id: int | None = None

    def _say(self, cell: Cell | None, msg: str) -> None:
        with self._out_lock:
            self.log(f"[{cell.device}] {msg}" if cell else msg)

    def _record(self, cell: Cell, outcome: CellOutcome) -> None:
        first = outcome.measurements[0]
        with self._out_lock:
            self.outcomes.append(outcome)
            if not first.ok:
                self.errors.append(f"{cell.name}: {first.error}")

    def _device_worker(self, cells: list[Cell], runner: CellRunner) -> None:
        for cell in cells:
            if self.stop.is_set():
                return
            try:
                outcome = runner.run(cell)
            except Exception as exc:  # noqa: BLE001 - one broken cell must not stop the others
                if self.stop.is_set():
                    return
                self._say(cell, f"{cell.name}: FAILED: unexpected {type(exc).__name__}: {exc}")
                try:
                    outcome = runner.failed(cell, f"unexpected {type(exc).__name__}: {exc}")
                except Exception:  # noqa: BLE001
                    continue
            if outcome is not None:
                self._record(cell, outcome)

    def run(self, cells: list[Cell]) -> NightlyResult:
        t0 = time.monotonic()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.run_id = self.store.begin_run("nightly", env=self.host_env, command=self.command, label=self.cfg.spec.name,
                                           cwd=self.cfg.path.parent)
        runner = CellRunner(self.store, self.run_id, self.policy, self.work_dir, devices_file=self.cfg.devices_file,
                            accept_new_host_key=self.accept_new_host_key, host_env=self.host_env, stop=self.stop,
                            say=self._say, keep=self.keep)
        by_device: dict[str, list[Cell]] = {}
        for c in cells:
            by_device.setdefault(c.device, []).append(c)
        self.log(f"nightly run {self.run_id}: {len(cells)} cell(s) on {len(by_device)} device(s) "
                 f"({', '.join(by_device)}), results in {self.store.path}")
        threads = [threading.Thread(target=self._device_worker, args=(cs, runner), name=f"nightly-{d}", daemon=True)
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
    accept_new_host_key: bool = False,
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
        keep = ArtifactKeep(cfg.artifacts_dir(db), cfg.spec.baseline.keep) if policy.retime else None
        runner = NightlyRunner(cfg, store, root / f"run-{os.getpid()}-{int(time.time())}", policy, log, command,
                               accept_new_host_key, keep)
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
