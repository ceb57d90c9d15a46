"""The bundle contract on the device side: manifest.json in, results.jsonl out.

The host writes the manifest (``edgeprune.bench.bundle``, the same format and version
numbers); this module fills each job's defaults, rejects a bundle it cannot run
(:class:`ManifestError`, exit code 2), and appends each finished job's result so that a
killed runner keeps every job that finished.
"""

from __future__ import annotations

import json
import os

from .errors import ManifestError, one_line

BUNDLE_FORMAT = "edgeprune-bundle"
BUNDLE_VERSION = 1
MANIFEST_FILE = "manifest.json"
RESULTS_FILE = "results.jsonl"
REQUIRED_FIELDS = ("id", "backend", "artifact", "inputs")
#: a job's fields the host may leave out (the host's BenchJob has the same defaults)
JOB_DEFAULTS = {
    "expected": None,
    "eval": None,
    "task": None,
    "tolerance": 1e-3,
    "threads": None,
    "options": {},
    "warmup": 10,
    "min_runs": 50,
    "min_time_s": 1.0,
    "max_time_s": 30.0,
    "inject_slowdown": 1.0,
    "gate": None,
    "timing": "wall",
}


def load_manifest(bundle: str) -> list[dict]:
    """The bundle's jobs, each with its defaults filled in."""
    path = os.path.join(bundle, MANIFEST_FILE)
    if not os.path.isfile(path):
        raise ManifestError("no manifest.json in %s" % bundle)
    try:
        with open(path) as f:
            m = json.load(f)
    except (OSError, ValueError) as exc:
        raise ManifestError("cannot read %s: %s" % (path, one_line(exc)))
    if not isinstance(m, dict) or m.get("format") != BUNDLE_FORMAT:
        raise ManifestError("%s is not an edgeprune bundle manifest (format must be '%s')" % (path, BUNDLE_FORMAT))
    version = m.get("version")
    if not isinstance(version, int) or version > BUNDLE_VERSION:
        raise ManifestError("bundle version %r is not supported by this runner (max %d); rebuild the bundle"
                            % (version, BUNDLE_VERSION))
    jobs = m.get("jobs")
    if not isinstance(jobs, list):
        raise ManifestError("%s: 'jobs' must be a list" % path)
    out, seen = [], set()
    for i, j in enumerate(jobs):
        if not isinstance(j, dict):
            raise ManifestError("%s: job %d is not an object" % (path, i))
        missing = [k for k in REQUIRED_FIELDS if not j.get(k)]
        if missing:
            raise ManifestError("%s: job %d lacks field(s) %s" % (path, i, ", ".join(missing)))
        if j["id"] in seen:
            raise ManifestError("%s: duplicate job id '%s'" % (path, j["id"]))
        seen.add(j["id"])
        job = dict(JOB_DEFAULTS)
        job.update(j)
        if job["options"] is None:
            job["options"] = {}
        out.append(job)
    return out


def select_jobs(jobs: list[dict], only: list[str] | None) -> list[dict]:
    """``only`` those job ids (all when None), in manifest order."""
    if not only:
        return jobs
    ids = [j["id"] for j in jobs]
    unknown = [o for o in only if o not in ids]
    if unknown:
        raise ManifestError("unknown job id(s) %s; the manifest has: %s" % (", ".join(unknown), ", ".join(ids)))
    wanted = set(only)
    return [j for j in jobs if j["id"] in wanted]


def job_threads(job: dict) -> int:
    """The job's thread count: ``threads``, else a runtime's thread option, else all cores."""
    if job.get("threads"):
        return int(job["threads"])
    opts = job.get("options") or {}
    for k in ("intra_op_num_threads", "INFERENCE_NUM_THREADS", "threads"):
        if opts.get(k):
            return int(opts[k])
    return os.cpu_count() or 1


def append_result(bundle: str, result: dict) -> None:
    """Append one JSON line to results.jsonl, flushed and fsync'ed."""
    path = os.path.join(bundle, RESULTS_FILE)
    line = json.dumps(result, separators=(",", ":")) + "\n"
    with open(path, "ab") as f:
        if f.tell() > 0:  # a previous run killed mid-line must not swallow this one
            with open(path, "rb") as r:
                r.seek(-1, os.SEEK_END)
                if r.read(1) != b"\n":
                    f.write(b"\n")
        f.write(line.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
