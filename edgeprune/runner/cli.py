"""The runner's command line: ``runner.pyz BUNDLE_DIR [--only JOB_ID ...] [--in-process]
[--cpus 0-3]`` or ``runner.pyz --probe``; the job loop, progress lines and exit codes.

For every job in BUNDLE_DIR/manifest.json the runner loads the artifact, converts the
inputs once, warms up, times single inferences (:mod:`.timing`, optionally inside the
steady gate, :mod:`.gate`), compares the outputs with ``expected`` and scores accuracy
on ``eval`` data (:mod:`.verify`). Each finished job is appended to
BUNDLE_DIR/results.jsonl at once (flushed and fsync'ed), so a killed runner keeps every
job that finished. Jobs run in worker processes (:mod:`.worker`); ``--in-process`` runs
everything in this process instead (debugging).

A run belongs to the edgeprune process that started it: when that process is gone (the
runner's parent changes: the CLI was killed, or the SSH session to the board dropped),
the runner stops its whole process group (:func:`watch_parent`), so a killed CLI never
leaves a board timing for nobody, unlocked, beside the next run.

Exit code: 0 if every job ran, 1 if any job failed, 2 on a bad manifest or usage.
Progress lines on stdout start with ``edgeprune-runner: `` (the SSH executor relays them).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

from .affinity import pin_runner
from .errors import ManifestError
from .job import run_job
from .manifest import append_result, load_manifest, select_jobs
from .probe import base_env, print_probe
from .worker import groups_of, run_worker_group, serve

LOG_PREFIX = "edgeprune-runner: "


def log(msg: str) -> None:
    print(LOG_PREFIX + msg, flush=True)


def report(i: int, n: int, r: dict) -> None:
    """One progress line per finished job."""
    if r["ok"]:
        t = sorted(r["times_ms"])
        med = t[len(t) // 2] if len(t) % 2 else (t[len(t) // 2 - 1] + t[len(t) // 2]) / 2
        msg = "ok, median %.4f ms over %d runs" % (med, len(t))
        if r["verified"] is not None:
            msg += ", %s (max diff %.3g)" % ("verified" if r["verified"] else "NOT VERIFIED", r["max_abs_diff"])
        if r["accuracy"] is not None:
            msg += ", accuracy %.2f%% on %d samples" % (r["accuracy"], r["eval_samples"])
    else:
        msg = "FAILED: %s" % r["error"]
    log("[%d/%d] %s (%s): %s" % (i, n, r["id"], r["backend"], msg))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="runner.pyz", description="edgeprune on-device benchmark runner")
    ap.add_argument("bundle", nargs="?", help="bundle directory (with manifest.json)")
    ap.add_argument("--only", nargs="+", metavar="JOB_ID", help="run only these jobs")
    ap.add_argument("--probe", action="store_true", help="print JSON about this device and exit")
    ap.add_argument("--in-process", action="store_true", help="run jobs in this process (no worker processes)")
    ap.add_argument("--cpus", metavar="LIST", help="pin the runner and its workers to these CPUs (0-3,6)")
    ap.add_argument("--worker-fd", type=int, default=None, help=argparse.SUPPRESS)
    return ap


#: how often the runner checks that the process that started it is still there
PARENT_POLL_S = 0.5


def watch_parent(poll_s: float = PARENT_POLL_S) -> threading.Thread:
    """A daemon thread that ends this process group once the parent process is gone
    (re-parented to init or a subreaper): finished jobs are already in results.jsonl."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        log("the process that started this run is gone; stopping (finished jobs are kept)")
        try:
            if os.getpgrp() == os.getpid():  # our own group (local session / SSH launcher): workers too
                os.killpg(os.getpgrp(), signal.SIGTERM)
            else:
                os.kill(os.getpid(), signal.SIGTERM)
        except OSError:
            os._exit(143)

    t = threading.Thread(target=watch, name="edgeprune-parent-watch", daemon=True)
    t.start()
    return t


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.probe:
        return print_probe()
    if not args.bundle:
        ap.print_usage(sys.stderr)
        print("runner.pyz: error: BUNDLE_DIR is required (or --probe)", file=sys.stderr)
        return 2
    bundle = os.path.abspath(args.bundle)
    try:
        jobs = select_jobs(load_manifest(bundle), args.only)
    except ManifestError as exc:
        print(LOG_PREFIX + "bad manifest: %s" % exc, file=sys.stderr)
        return 2
    if args.cpus and args.worker_fd is None:  # the device's cpu_affinity: workers inherit the mask
        try:
            log("pinned to CPUs %s" % pin_runner(args.cpus))
        except ValueError as exc:
            print(LOG_PREFIX + str(exc), file=sys.stderr)
            return 2
    env = base_env()
    if args.worker_fd is not None:  # internal: run jobs, stream results to the parent
        return serve(args.worker_fd, jobs, bundle, env)

    if os.name == "posix":
        watch_parent()
    n = len(jobs)
    counts = {"done": 0, "failed": 0}

    def on_result(r: dict) -> None:
        append_result(bundle, r)
        counts["done"] += 1
        counts["failed"] += 0 if r.get("ok") else 1
        report(counts["done"], n, r)

    log("running %d job(s) from %s" % (n, bundle))
    if args.in_process or os.name != "posix":  # workers need pass_fds, which is POSIX-only
        for job in jobs:
            on_result(run_job(job, bundle, env))
    else:
        for _key, group in groups_of(jobs):
            run_worker_group(bundle, group, env, on_result)
    return 1 if counts["failed"] else 0
