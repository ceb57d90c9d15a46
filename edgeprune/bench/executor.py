"""Executors run a deploy bundle's runner somewhere and bring back its results.

:class:`Executor` is the interface (local process today, SSH later); everything a
subclass needs to know about *where* the bundle lives stays inside the subclass. The
result contract is the same for all: one :class:`JobResult` per requested job, in
manifest order; a job that did not finish (timeout, runner crash) comes back with
``ok=False`` and an error instead of throwing away the jobs that did finish.
:class:`BenchError` is raised only when nothing at all was measured.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from edgeprune.bench.bundle import RESULTS_FILE, RUNNER_FILE, JobResult
from edgeprune.errors import BenchError, DeviceError, Interrupted
from edgeprune.runner.ship import probe_source
from edgeprune.signals import StopFlag

PROBE_TIMEOUT_S = 120.0
#: how long a stopped runner gets to exit on SIGTERM before its group is killed
STOP_GRACE_S = 3.0
#: how often a runner's wait in a worker thread checks the run's stop flag
STOP_POLL_S = 0.25


class RunnerInterrupted(Interrupted):
    """The run was stopped while a runner was timing; the runner (locally or on the board)
    has been stopped too, and ``results`` are the jobs it had finished (complete lines of
    its results.jsonl), never a partial job."""

    def __init__(self, stop: Interrupted, results: list[JobResult]) -> None:
        super().__init__(stop.signum, f"{len(results)} finished job result(s) kept")
        self.results = results


class Executor(ABC):
    """Runs bundles on one device."""

    name: str = ""

    @abstractmethod
    def run_bundle(self, bundle_dir: Path, timeout_s: float, only: list[str] | None = None,
                   stop: StopFlag | None = None) -> list[JobResult]:
        """Run the bundle's jobs (or ``only`` those ids) within ``timeout_s`` seconds.

        Stopped (a signal in this thread, or ``stop`` set by the main thread while this
        runs in a worker thread): the runner is stopped too, and :class:`RunnerInterrupted`
        carries the jobs it had finished."""

    @abstractmethod
    def probe(self) -> dict[str, Any]:
        """What the device is: ``python runner.pyz --probe`` output (arch, cpu, python, runtimes)."""


# ---- helpers shared by executors ---------------------------------------------------------
def manifest_jobs(bundle_dir: Path) -> list[dict[str, Any]]:
    """The job dicts of a local bundle's manifest (BenchError if unreadable)."""
    path = bundle_dir / "manifest.json"
    try:
        m = json.loads(path.read_text())
        jobs = m["jobs"]
        if not isinstance(jobs, list):
            raise TypeError("'jobs' is not a list")
        return jobs
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"cannot read bundle manifest {path}: {exc}", "rebuild the bundle") from None


def parse_results(text: str) -> list[JobResult]:
    """JobResults from results.jsonl text; a truncated line (killed runner) is skipped."""
    out: list[JobResult] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(d, dict) and "id" in d and "ok" in d:
            out.append(JobResult.from_dict(d))
    return out


def complete_results(jobs: list[dict[str, Any]], results: list[JobResult], missing_error: str) -> list[JobResult]:
    """One result per job in manifest order (the last line wins); absent jobs get ``missing_error``."""
    by_id = {r.id: r for r in results}
    out = []
    for j in jobs:
        r = by_id.get(j["id"])
        if r is None:
            r = JobResult(id=j["id"], ok=False, backend=j.get("backend", ""), error=missing_error,
                          threads=j.get("threads"))
        out.append(r)
    return out


def cpus_args(cpus: list[int] | None) -> list[str]:
    """The runner's ``--cpus`` argv items for a device's ``cpu_affinity`` (validated ints)."""
    return ["--cpus", ",".join(str(int(c)) for c in cpus)] if cpus else []


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


class LocalExecutor(Executor):
    """Runs ``python runner.pyz BUNDLE`` as a child process on this machine."""

    name = "local"

    def __init__(self, python: str = sys.executable, cpus: list[int] | None = None) -> None:
        self.python = python
        self.cpus = cpus  # the device's cpu_affinity: the runner pins itself (runner.pyz --cpus)
        self.last_stdout = ""
        self.last_stderr = ""

    def run_bundle(self, bundle_dir: Path, timeout_s: float, only: list[str] | None = None,
                   stop: StopFlag | None = None) -> list[JobResult]:
        bundle_dir = Path(bundle_dir).resolve()
        runner = bundle_dir / RUNNER_FILE
        if not runner.is_file():
            raise BenchError(f"{bundle_dir} has no {RUNNER_FILE}; it is not a deploy bundle", "rebuild the bundle")
        jobs = manifest_jobs(bundle_dir)
        if only:
            known = {j["id"] for j in jobs}
            unknown = [o for o in only if o not in known]
            if unknown:
                raise BenchError(f"unknown job id(s) {unknown}; the bundle has {sorted(known)}")
            jobs = [j for j in jobs if j["id"] in set(only)]

        results_path = bundle_dir / RESULTS_FILE
        if only is None and results_path.exists():
            results_path.unlink()  # a full run starts clean; partial runs append
        offset = results_path.stat().st_size if results_path.exists() else 0

        cmd = [self.python, str(runner), str(bundle_dir)] + (["--only", *only] if only else []) + cpus_args(self.cpus)
        try:
            proc = subprocess.Popen(
                cmd, cwd=str(bundle_dir), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True,  # own process group: killable as a whole
            )
        except OSError as exc:
            raise BenchError(f"cannot start the runner with {self.python}: {exc}") from None

        timed_out = False
        try:
            out, err = self._wait(proc, timeout_s, stop)
        except subprocess.TimeoutExpired:
            timed_out = True
            self._kill_group(proc)
            out, err = proc.communicate()
        except KeyboardInterrupt as exc:  # Ctrl-C / SIGTERM / SIGHUP: stop the runner, keep its finished jobs
            self._stop_group(proc)
            out, err = proc.communicate()
            self.last_stdout, self.last_stderr = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
            self._write_log(bundle_dir)
            raise RunnerInterrupted(Interrupted.of(exc), self._new_results(results_path, offset)) from None
        self.last_stdout = out.decode("utf-8", "replace")
        self.last_stderr = err.decode("utf-8", "replace")
        self._write_log(bundle_dir)
        rc = proc.returncode

        results = self._new_results(results_path, offset)
        if timed_out:
            missing = f"timed out after {timeout_s:g}s"
        elif rc == 2 and not results:
            raise BenchError(f"runner rejected the bundle: {last_line(self.last_stderr) or 'exit code 2'}")
        elif rc not in (0, 1):
            tail = last_line(self.last_stderr)
            missing = f"runner crashed (exit code {rc})" + (f": {tail}" if tail else "")
        else:
            missing = "runner finished without reporting this job" + (
                f": {last_line(self.last_stderr)}" if last_line(self.last_stderr) else "")
        if not results and (timed_out or rc not in (0, 1)):
            raise BenchError(f"benchmark on device '{self.name}' produced no results: {missing}")
        return complete_results(jobs, results, missing)

    def probe(self) -> dict[str, Any]:
        # the probe module on stdin, as over SSH: ``self.python`` may be any interpreter
        try:
            cp = subprocess.run([self.python, "-", "--probe"], capture_output=True,
                                timeout=PROBE_TIMEOUT_S, input=probe_source())
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DeviceError(f"cannot run the runner probe with {self.python}: {exc}") from None
        if cp.returncode != 0:
            tail = last_line(cp.stderr.decode("utf-8", "replace"))
            raise DeviceError(f"runner probe failed (exit code {cp.returncode}): {tail}")
        try:
            return json.loads(cp.stdout.decode("utf-8", "replace"))
        except json.JSONDecodeError as exc:
            raise DeviceError(f"runner probe printed invalid JSON: {exc}") from None

    # ---- internals -------------------------------------------------------------------
    @staticmethod
    def _wait(proc: subprocess.Popen, timeout_s: float, stop: StopFlag | None) -> tuple[bytes, bytes]:
        """``proc.communicate(timeout_s)``; with ``stop``, in short slices that check it."""
        if stop is None:
            return proc.communicate(timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while True:
            stop.check()
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(proc.args, timeout_s)
            try:
                return proc.communicate(timeout=min(left, STOP_POLL_S))
            except subprocess.TimeoutExpired:
                continue

    @classmethod
    def _stop_group(cls, proc: subprocess.Popen) -> None:
        """SIGTERM to the runner's group (its workers exit cleanly), SIGKILL after a grace."""
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
        cls._kill_group(proc)  # anything left of the group (a hung worker) goes now

    @staticmethod
    def _kill_group(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the runner and its worker processes
        except (ProcessLookupError, PermissionError):
            proc.kill()

    @staticmethod
    def _new_results(path: Path, offset: int) -> list[JobResult]:
        if not path.exists():
            return []
        with path.open("rb") as f:
            f.seek(offset)
            return parse_results(f.read().decode("utf-8", "replace"))

    def _write_log(self, bundle_dir: Path) -> None:
        try:
            (bundle_dir / "runner.log").write_text(
                "--- stdout ---\n" + self.last_stdout + "\n--- stderr ---\n" + self.last_stderr
            )
        except OSError:
            pass
