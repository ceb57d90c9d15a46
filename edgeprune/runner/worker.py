"""Worker processes: isolation of runtimes from each other, and of a crash from the run.

Jobs run in worker processes, one per run of consecutive jobs with the same backend and
thread count, so thread settings such as TVM_NUM_THREADS are set before the runtime is
imported, one runtime's thread pool cannot disturb another's timing, and a segfaulting
runtime only fails its own job (a new worker carries on with the next). A worker is this
runner started again (:func:`self_command`) with ``--worker-fd``: it streams one JSON
result per line through that pipe, and the parent records them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile

from .gate import BLAS_ENV
from .job import failed_result, run_job
from .manifest import job_threads


def self_command() -> list[str]:
    """The command that starts this runner again: ``python runner.pyz`` when it came in a
    zipapp, else this package through ``-c`` (``python -m edgeprune.runner``, tests)."""
    archive = getattr(__spec__.loader, "archive", None)  # zipimport.zipimporter
    if archive:
        return [sys.executable, archive]
    pkg = __package__
    root = os.path.abspath(__file__)
    for _ in range(pkg.count(".") + 2):  # up past worker.py and every package level
        root = os.path.dirname(root)
    code = "import sys; sys.path.insert(0, %r); from %s.cli import main; sys.exit(main())" % (root, pkg)
    return [sys.executable, "-c", code]


def groups_of(jobs: list[dict]) -> list[tuple[tuple, list[dict]]]:
    """Consecutive jobs with the same backend and thread count share a worker process."""
    out = []
    for j in jobs:
        key = (j["backend"], job_threads(j))
        if out and out[-1][0] == key:
            out[-1][1].append(j)
        else:
            out.append((key, [j]))
    return out


def last_error_line(text: str) -> str:
    """The line of a crashed worker's stderr most likely to say why."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "error" in ln or "Fatal" in ln:
            return ln
    return lines[-1] if lines else ""


def serve(fd: int, jobs: list[dict], bundle: str, env: dict) -> int:
    """The worker's side: run ``jobs`` here, one JSON result per line to ``fd``."""
    with os.fdopen(fd, "w") as out:
        for job in jobs:
            r = run_job(job, bundle, env)
            out.write(json.dumps(r, separators=(",", ":")) + "\n")
            out.flush()
    return 0


def run_worker_group(bundle: str, jobs: list[dict], env: dict, on_result) -> None:
    """Run ``jobs`` in worker processes; a crash fails the job it hit and a new worker continues."""
    pending = list(jobs)
    while pending:
        rfd, wfd = os.pipe()
        child_env = dict(os.environ)
        for k, v in BLAS_ENV.items():  # read by OpenBLAS when numpy loads (steady-gate probe)
            child_env.setdefault(k, v)
        if pending[0]["backend"] == "tvm":
            child_env["TVM_NUM_THREADS"] = str(job_threads(pending[0]))
        cmd = self_command() + [bundle, "--worker-fd", str(wfd), "--only"]
        cmd += [j["id"] for j in pending]
        with tempfile.TemporaryFile() as errf:
            try:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=errf, env=child_env,
                                        pass_fds=(wfd,), close_fds=True)
            finally:
                os.close(wfd)
            done = set()
            with os.fdopen(rfd, "r") as rf:
                for line in rf:
                    try:
                        r = json.loads(line)
                    except ValueError:
                        continue
                    done.add(r.get("id"))
                    on_result(r)
            rc = proc.wait()
            errf.seek(0)
            err = errf.read().decode("utf-8", "replace")
        if err:
            sys.stderr.write(err)
            sys.stderr.flush()
        pending = [j for j in pending if j["id"] not in done]
        if pending:
            if rc < 0:
                try:
                    how = "killed by %s" % signal.Signals(-rc).name
                except ValueError:
                    how = "killed by signal %d" % -rc
            else:
                how = "exit code %d" % rc
            tail = last_error_line(err)
            msg = "runner worker crashed (%s) during this job" % how + (": " + tail if tail else "")
            on_result(failed_result(pending[0], msg, env))
            pending = pending[1:]
