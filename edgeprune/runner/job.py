"""One job, start to finish, in this process: load, time, verify, score.

``load_s`` is the artifact load/compile time on the device, excluding the one-time
runtime import (recorded as ``env.import_s``; ``import tvm`` takes seconds). ``env`` also
records the timing settings actually used (``env.timing``). A job that fails (runtime
missing, corrupt artifact, shape mismatch, crash) is a result with ``ok: false`` and a
one-line ``error``: :func:`run_job` never raises, so the next job still runs.
"""

from __future__ import annotations

import gc
import os
import sys
import time
import traceback

from .adapters import LOADERS, import_runtime
from .affinity import apply_affinity
from .data import check_inputs, load_arrays
from .errors import JobError, one_line
from .gate import gated_time_runs
from .manifest import job_threads
from .probe import KNOWN_BACKENDS
from .timing import TIMING_MODES, time_runs
from .verify import accuracy, verify


def empty_result(job: dict, env: dict, error: str | None = None, threads: int | None = None) -> dict:
    """A job's result before anything is known (the results.jsonl line format)."""
    return {
        "id": job["id"], "ok": False, "backend": job.get("backend", ""), "error": error, "times_ms": [],
        "load_s": None, "max_abs_diff": None, "verified": None, "accuracy": None, "eval_samples": None,
        "threads": threads, "runtime_version": None, "env": dict(env),
    }


def failed_result(job: dict, error: str, env: dict) -> dict:
    """The result of a job that never got to run (its worker crashed)."""
    return empty_result(job, env, error=error, threads=job_threads(job))


def run_job(job: dict, bundle: str, env: dict) -> dict:
    """Run one job in this process; always returns a result dict (never raises)."""
    result = empty_result(job, env)
    model = None
    try:
        backend = job["backend"]
        if backend not in LOADERS:
            raise JobError("unknown backend '%s' (this runner knows %s)" % (backend, ", ".join(KNOWN_BACKENDS)))
        threads = job_threads(job)
        result["threads"] = threads
        result["env"]["runtime"] = backend
        result["env"]["threads"] = threads
        try:
            import numpy as np
        except ImportError:
            raise JobError("numpy is not installed on this device (pip install numpy)")
        artifact = os.path.join(bundle, job["artifact"])
        if not os.path.isfile(artifact):
            raise JobError("artifact %s is missing from the bundle" % job["artifact"])
        inputs = load_arrays(np, os.path.join(bundle, job["inputs"]), "in")
        cores = apply_affinity(job.get("options") or {})  # before the runtime starts its threads
        if cores is not None:
            result["env"]["affinity"] = cores
        t0 = time.perf_counter()
        if backend == "tvm" and "tvm" not in sys.modules:
            os.environ["TVM_NUM_THREADS"] = str(threads)  # must be set before TVM is imported
        import_runtime(backend)  # import time (seconds for TVM) is not load time
        result["env"]["import_s"] = round(time.perf_counter() - t0, 4)
        t0 = time.perf_counter()
        mode = job.get("timing") or "wall"
        if mode not in TIMING_MODES:
            raise JobError("unknown timing '%s' (choose %s)" % (mode, ", ".join(TIMING_MODES)))
        try:
            model = LOADERS[backend](artifact, job.get("options") or {}, threads, kernel=mode == "kernel")
        except JobError:
            raise
        except Exception as exc:  # noqa: BLE001 - any loader failure is this job's failure
            raise JobError("cannot load %s with %s: %s" % (job["artifact"], backend, one_line(exc)))
        result["load_s"] = round(time.perf_counter() - t0, 4)
        result["runtime_version"] = model.runtime_version
        result["env"]["runtime_version"] = model.runtime_version
        if model.settings is not None:
            result["env"]["runtime_settings"] = model.settings
        if backend == "tvm" and os.environ.get("TVM_NUM_THREADS") != str(threads):
            result["env"]["threads_note"] = "TVM was already imported with TVM_NUM_THREADS=%s" % (
                os.environ.get("TVM_NUM_THREADS"))
        arrays = check_inputs(np, model, inputs)
        prepared = model.prepare(arrays)  # converted once, outside the timed loop
        try:
            if job.get("gate") is not None:  # {} = the gate with its defaults
                times, timing = gated_time_runs(np, lambda: model.run(prepared), job, bundle)
            else:
                times, timing = time_runs(lambda: model.run(prepared), job)
            if mode == "kernel":
                timing["mode"] = "kernel"
                timing["wall_median_ms"] = round(float(np.median(times)), 5)
                times = model.kernel_times(len(times))
        except JobError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise JobError("inference failed: %s" % one_line(exc))
        result["times_ms"] = times
        result["env"]["timing"] = timing
        if job.get("expected"):
            expected = load_arrays(np, os.path.join(bundle, job["expected"]), "out")
            try:
                outs = model.outputs(prepared)
            except Exception as exc:  # noqa: BLE001
                raise JobError("inference failed: %s" % one_line(exc))
            diff = verify(np, outs, expected)
            result["max_abs_diff"] = diff
            result["verified"] = bool(diff <= float(job["tolerance"]))
        if job.get("eval"):
            dtypes = [a.dtype for a in arrays]
            try:
                acc, n = accuracy(np, model, os.path.join(bundle, job["eval"]), job.get("task"), dtypes)
            except JobError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise JobError("evaluation failed: %s" % one_line(exc))
            result["accuracy"] = acc
            result["eval_samples"] = n
        result["ok"] = True
    except JobError as exc:
        result["error"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - a runner bug must not lose the other jobs
        result["error"] = "runner error: %s" % one_line(exc)
        traceback.print_exc()
    finally:
        if model is not None:
            try:
                model.close()
            except Exception:  # noqa: BLE001
                pass
        model = None
        gc.collect()
    return result
