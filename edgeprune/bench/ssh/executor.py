"""Run deploy bundles on a board over SSH: :class:`SSHExecutor`.

What a run does, in order::

    wait       for a free slot of this board inside this process (limits.BoardSlots)
    connect    host key verified as the device says (host_keys), retries (connection)
    check      the board's runtimes, from a probe cached for a few minutes (probe); jobs
               whose runtime is missing fail up front with the pip line that installs it
    upload     SFTP into a fresh remote directory <workdir>/run-<device>-<random> (mkdir
               fails if it exists, so two runs never share one)
    run        one fixed argv, quoted with shlex.join (command):
               [env K=V ...] PYTHON -c LAUNCHER WORKDIR SLOTS WAIT BUNDLE/runner.pyz BUNDLE
               The launcher (scripts) takes the board's lock file, becomes a process
               group leader and execs the runner, so a timeout kills the whole group.
    download   results.jsonl, also after a failure or a timeout (finished jobs are kept)
    clean up   the remote directory is removed (EDGEPRUNE_KEEP_REMOTE=1 keeps it)

The result contract is :class:`~edgeprune.bench.executor.Executor`'s: one result per
job, in manifest order; unfinished jobs come back failed with the reason.
"""

from __future__ import annotations

import os
import posixpath
import re
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeprune.bench.bundle import RESULTS_FILE, RUNNER_FILE, BenchJob, JobResult
from edgeprune.bench.executor import (Executor, RunnerInterrupted, complete_results, cpus_args, manifest_jobs,
                                      parse_results)
from edgeprune.bench.ssh.command import last_message, valid_env_name
from edgeprune.bench.ssh.connection import TRANSIENT, SSHConnection, describe
from edgeprune.bench.ssh.limits import PROCESS_BOARD_SLOTS, BoardKey, BoardSlots
from edgeprune.bench.ssh.probe import PROCESS_PROBE_CACHE, ProbeCache, run_probe
from edgeprune.bench.ssh.scripts import (
    KILLER,
    LAUNCHER,
    LOCK_FILES,
    LOCK_TIMEOUT_EXIT,
    LOCK_TIMEOUT_MARKER,
    LOCK_WAIT_MARKER,
    PGID_MARKER,
)
from edgeprune.config.devices import Device
from edgeprune.errors import BenchError, ConfigError, DeviceError, EdgepruneError, Interrupted
from edgeprune.signals import StopFlag

Log = Callable[[str], None]

#: Progress lines the runner prints on stdout; shown to the user with the device's name.
_RUNNER_PROGRESS = "edgeprune-runner: "
#: Left behind on upload: what earlier local runs of this bundle wrote.
_LOCAL_ONLY = {RESULTS_FILE, "runner.log"}


def _stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class _Outcome:
    """How the remote runner ended (``exit_code`` None: timed out or connection lost)."""

    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    lost: bool = False


class SSHExecutor(Executor):
    """Runs deploy bundles on ``device`` over SSH; see the module docstring.

    ``slots`` and ``probes`` default to the process-wide registries (see
    :mod:`.limits` and :mod:`.probe` for why those are shared).
    """

    def __init__(self, device: Device, log: Log | None = None, keep_remote: bool | None = None,
                 slots: BoardSlots = PROCESS_BOARD_SLOTS, probes: ProbeCache = PROCESS_PROBE_CACHE) -> None:
        if device.kind != "ssh":
            raise DeviceError(f"device '{device.name}' is not an SSH device")
        if device.python.startswith("-"):
            raise ConfigError(f"device '{device.name}': python {device.python!r} must not start with '-'")
        for k in device.env:
            if not valid_env_name(k):
                raise ConfigError(f"device '{device.name}': env name {k!r} is not a valid variable name")
        self.device = device
        self.name = device.name
        self.log: Log = log or _stderr_log
        self.keep_remote = os.environ.get("EDGEPRUNE_KEEP_REMOTE") == "1" if keep_remote is None else keep_remote
        self.slots = slots
        self.probes = probes
        self._probe: dict[str, Any] | None = None

    # --- probe ------------------------------------------------------------------------
    def probe(self) -> dict[str, Any]:
        """``runner --probe`` on the device: arch, CPU, Python, runtimes (always fresh)."""
        with SSHConnection(self.device) as conn:
            self._probe = run_probe(conn)
        return self._probe

    # --- run --------------------------------------------------------------------------
    def run_bundle(self, bundle_dir: Path, timeout_s: float, only: list[str] | None = None,
                   stop: StopFlag | None = None) -> list[JobResult]:
        bundle_dir = Path(bundle_dir)
        jobs = [BenchJob.from_dict(j) for j in manifest_jobs(bundle_dir)]
        if only:
            known = {j.id for j in jobs}
            unknown = [o for o in only if o not in known]
            if unknown:
                raise BenchError(f"unknown job id(s) {unknown}; the bundle has {sorted(known)}")
            jobs = [j for j in jobs if j.id in set(only)]
        conn = SSHConnection(self.device)  # resolves the address; connects later
        board = BoardKey.of(conn.addr, self.device.workdir)
        with self.slots.hold(board, self.device.concurrency, on_wait=lambda: self.log(
                f"device '{self.name}' is busy with another run of this process; waiting ...")):
            return self._run_holding_slot(conn, bundle_dir, jobs, timeout_s, partial=bool(only), stop=stop)

    def _run_holding_slot(self, conn: SSHConnection, bundle_dir: Path, jobs: list[BenchJob], timeout_s: float,
                          partial: bool, stop: StopFlag | None = None) -> list[JobResult]:
        dev = self.device
        local_results = bundle_dir / RESULTS_FILE
        if not partial and local_results.exists():
            local_results.unlink()  # a full run starts clean; partial runs append (as LocalExecutor)
        conn.connect()
        remote_dir = None
        missing: dict[str, str] = {}
        try:
            missing = self._missing_runtimes(conn, jobs)
            runnable = [j for j in jobs if j.backend not in missing]
            if not runnable:
                which = ", ".join(sorted(missing))
                if self._probe is not None and self._probe.get("numpy", "") is None:
                    which = "numpy, " + which
                raise DeviceError(
                    f"device '{dev.name}': {which} not installed for {dev.python} on the board",
                    "; ".join(missing.values()) + f" (see: edgeprune devices check {dev.name})",
                )
            workdir = conn.abspath(dev.workdir)
            remote_dir = self._upload(conn, bundle_dir, workdir)
            argv = [dev.python, "-c", LAUNCHER, workdir, str(dev.concurrency), str(dev.command_timeout_s),
                    posixpath.join(remote_dir, RUNNER_FILE), remote_dir]
            if partial or len(runnable) != len(jobs):
                argv += ["--only", *(j.id for j in runnable)]
            argv += cpus_args(dev.cpu_affinity)  # the runner pins itself and its workers
            outcome = self._execute(conn, argv, timeout_s, stop)
            results = self._download_results(conn, remote_dir, bundle_dir)
            self._write_log(bundle_dir, outcome)
        except EdgepruneError:
            raise
        except KeyboardInterrupt as exc:  # the runner is stopped (_execute); fetch what it finished
            results = []
            if remote_dir is not None:
                try:
                    results = self._download_results(conn, remote_dir, bundle_dir)
                except (EdgepruneError, *TRANSIENT):
                    pass
            raise RunnerInterrupted(Interrupted.of(exc), results) from None
        except TRANSIENT as exc:
            # The connection broke mid-run: reconnect once to rescue finished results.
            self.log(f"device '{dev.name}': connection lost ({describe(exc)}); fetching finished results ...")
            outcome = _Outcome(None, "", f"connection to the board lost: {describe(exc)}", lost=True)
            results = []
            if remote_dir is not None:
                conn.close()
                try:
                    conn.connect()
                    results = self._download_results(conn, remote_dir, bundle_dir)
                except (EdgepruneError, *TRANSIENT):
                    pass
        finally:
            if remote_dir is not None and not self.keep_remote:
                self._cleanup(conn, remote_dir)
            conn.close()
        return self._complete(jobs, results, missing, outcome, timeout_s)

    def _missing_runtimes(self, conn: SSHConnection, jobs: list[BenchJob]) -> dict[str, str]:
        """backend -> install hint, for job backends whose runtime the board lacks."""
        from edgeprune.bench.install import missing_runtimes

        if self._probe is None:
            self._probe = self.probes.probe(conn)
        return missing_runtimes(self._probe, sorted({j.backend for j in jobs}), self.device.python)

    def _upload(self, conn: SSHConnection, bundle_dir: Path, workdir: str) -> str:
        """The bundle copied into a new ``<workdir>/run-<device>-<random>``; returns that path."""
        dev = self.device
        t0 = time.monotonic()
        try:
            conn.makedirs(workdir)
            remote_dir = posixpath.join(workdir, f"run-{_safe_component(dev.name)}-{secrets.token_hex(6)}")
            conn.sftp.mkdir(remote_dir, 0o700)  # fails if it exists: a fresh directory
        except OSError as exc:
            if not conn.alive:
                raise
            raise DeviceError(
                f"device '{dev.name}': cannot upload the bundle into {workdir}: {describe(exc)}",
                "is `workdir` writable by that user and the board's disk not full?",
            ) from None
        try:
            sent = conn.upload_tree(bundle_dir, remote_dir, skip=_LOCAL_ONLY)
        except OSError as exc:
            if not conn.alive:
                raise
            self._cleanup(conn, remote_dir)
            raise DeviceError(
                f"device '{dev.name}': cannot upload the bundle into {workdir}: {describe(exc)}",
                "is `workdir` writable by that user and the board's disk not full?",
            ) from None
        self.log(f"uploaded bundle to {dev.name}:{remote_dir} ({sent / 1e6:.1f} MB, {time.monotonic() - t0:.1f} s)")
        return remote_dir

    def _execute(self, conn: SSHConnection, argv: list[str], timeout_s: float, stop: StopFlag | None = None
                 ) -> _Outcome:
        dev = self.device
        pgid: list[int] = []

        def on_err(line: str) -> None:
            if line.startswith(PGID_MARKER):
                pgid.append(int(line[len(PGID_MARKER):]))
            elif line == LOCK_WAIT_MARKER:
                self.log(f"device '{dev.name}' is busy (another benchmark holds its lock); waiting ...")

        def on_out(line: str) -> None:
            if line.startswith(_RUNNER_PROGRESS):
                self.log(f"{dev.name}: {line[len(_RUNNER_PROGRESS):]}")

        try:
            r = conn.run(argv, timeout_s, env=dict(dev.env), on_stderr_line=on_err, on_stdout_line=on_out,
                         start_clock=lambda line: line.startswith(PGID_MARKER), stop=stop)
        except KeyboardInterrupt:  # stopped here: stop the runner's group on the board too
            self.log(f"device '{dev.name}': stopping the runner on the board (finished jobs are kept) ...")
            self._kill_remote(conn, pgid)
            raise
        if r.timed_out:
            self.log(f"device '{dev.name}': run exceeded {timeout_s:.0f} s; killing it (finished jobs are kept)")
            self._kill_remote(conn, pgid)
            return _Outcome(None, r.stdout, r.stderr, timed_out=True)
        if r.exit_code is None:
            return _Outcome(None, r.stdout, r.stderr or "connection to the board lost", lost=True)
        if r.exit_code == LOCK_TIMEOUT_EXIT and LOCK_TIMEOUT_MARKER in r.stderr:
            raise DeviceError(
                f"device '{dev.name}': still busy after waiting {dev.command_timeout_s:.0f} s for its benchmark lock",
                f"another run holds {dev.workdir}/{LOCK_FILES}; try again later",
            )
        return _Outcome(r.exit_code, r.stdout, r.stderr)

    def _kill_remote(self, conn: SSHConnection, pgid: list[int]) -> None:
        """SIGTERM, then SIGKILL, to the run's process group on the board (KILLER)."""
        if not pgid:
            return  # the launcher had not started the runner yet: the closed channel ends it
        try:
            conn.run([self.device.python, "-c", KILLER, str(pgid[0])], min(self.device.command_timeout_s, 60.0))
        except TRANSIENT:
            pass

    def _download_results(self, conn: SSHConnection, remote_dir: str, bundle_dir: Path) -> list[JobResult]:
        """This run's results.jsonl from the board, appended to the local one."""
        tmp = bundle_dir / f".results.{secrets.token_hex(4)}.jsonl"
        try:
            conn.sftp.get(posixpath.join(remote_dir, RESULTS_FILE), str(tmp))
        except FileNotFoundError:
            return []
        try:
            text = tmp.read_text(errors="replace")
        finally:
            tmp.unlink(missing_ok=True)
        with open(bundle_dir / RESULTS_FILE, "a") as fh:
            fh.write(text if not text or text.endswith("\n") else text + "\n")
        return parse_results(text)

    @staticmethod
    def _write_log(bundle_dir: Path, outcome: _Outcome) -> None:
        try:
            (bundle_dir / "runner.log").write_text(
                "--- stdout ---\n" + outcome.stdout + "\n--- stderr ---\n" + outcome.stderr)
        except OSError:
            pass

    def _cleanup(self, conn: SSHConnection, remote_dir: str) -> None:
        try:
            if not conn.alive:
                conn.close()
                conn.connect()
            conn.run(["rm", "-rf", "--", remote_dir], min(self.device.command_timeout_s, 120.0))
        except Exception as exc:  # cleanup must not hide the run's outcome
            self.log(f"warning: device '{self.device.name}': could not remove {remote_dir}: {describe(exc)}")

    def _complete(self, jobs: list[BenchJob], results: list[JobResult], missing: dict[str, str],
                  outcome: _Outcome, timeout_s: float) -> list[JobResult]:
        """One result per job: finished ones as the runner wrote them, the rest failed with why."""
        dev = self.device
        if outcome.exit_code not in (0, 1, None) and not results:
            # The runner died before any job finished: that is the device's problem, say why.
            raise DeviceError(
                f"device '{dev.name}': the runner failed (exit {outcome.exit_code}): {last_message(outcome.stderr)}",
                f"see: edgeprune devices check {dev.name}",
            )
        if not results and (outcome.timed_out or outcome.lost):
            what = f"timed out after {timeout_s:g} s" if outcome.timed_out else last_message(outcome.stderr)
            raise BenchError(f"benchmark on device '{dev.name}' produced no results: {what}")
        if outcome.timed_out:
            why = f"timed out after {timeout_s:.0f} s on device '{dev.name}' (run killed)"
        elif outcome.lost:
            why = f"device '{dev.name}': {last_message(outcome.stderr)}"
        elif outcome.exit_code not in (0, None):
            why = f"runner exited with {outcome.exit_code} on device '{dev.name}': {last_message(outcome.stderr)}"
        else:
            why = f"no result from the runner on device '{dev.name}'"
        not_run = [JobResult(id=j.id, ok=False, backend=j.backend, threads=j.threads,
                             error=f"{j.backend} is not installed on device '{dev.name}' ({missing[j.backend]})")
                   for j in jobs if j.backend in missing]
        return complete_results([asdict(j) for j in jobs], not_run + results, why)


def _safe_component(name: str) -> str:
    """A device name as one harmless path component (names may hold spaces, ``;``, ``/``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:40] or "device"
