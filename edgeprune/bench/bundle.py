"""The deploy bundle: the contract between the host and the on-device runner.

A bundle is a directory that can be copied anywhere (local temp dir, SFTP to a board)::

    bundle/
      manifest.json     {"format": "edgeprune-bundle", "version": 1, "jobs": [BenchJob...]}
      runner.pyz        the on-device runner, edgeprune/runner/ as one zipapp (needs only
                        numpy + runtime; ``python runner.pyz BUNDLE``)
      <job files>       artifacts, inputs .npz, expected outputs .npz, eval .npz
      results.jsonl     written by the runner: one JobResult per line, appended and
                        flushed as each job finishes, so a killed run keeps what finished

The format's name and version, the job fields' defaults and the results file name are
the runner's (:mod:`edgeprune.runner.manifest`): the device side reads them, so they are
defined there once.

Paths inside the manifest are relative to the bundle directory. ``inputs``/``expected``
npz files hold arrays named ``in0, in1, ...`` / ``out0, out1, ...``; ``eval`` npz holds
``in0..inK`` of shape [chunks, *input_shape] and ``labels`` of shape [chunks, batch].
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeprune.runner.manifest import BUNDLE_FORMAT, BUNDLE_VERSION, JOB_DEFAULTS, MANIFEST_FILE, RESULTS_FILE
from edgeprune.runner.ship import RUNNER_FILE, write_runner

__all__ = ["BUNDLE_FORMAT", "BUNDLE_VERSION", "RESULTS_FILE", "RUNNER_FILE", "BenchJob", "JobResult",
           "read_results", "write_manifest"]


@dataclass
class BenchJob:
    """One artifact to load, time, verify and score on the device."""

    id: str
    backend: str
    artifact: str
    inputs: str
    expected: str | None = JOB_DEFAULTS["expected"]
    eval: str | None = JOB_DEFAULTS["eval"]
    task: str | None = JOB_DEFAULTS["task"]  # "classification" | "binary" | None
    tolerance: float = JOB_DEFAULTS["tolerance"]
    threads: int | None = JOB_DEFAULTS["threads"]
    options: dict[str, Any] = field(default_factory=dict)
    warmup: int = JOB_DEFAULTS["warmup"]
    min_runs: int = JOB_DEFAULTS["min_runs"]
    min_time_s: float = JOB_DEFAULTS["min_time_s"]
    max_time_s: float = JOB_DEFAULTS["max_time_s"]
    #: artificial slowdown factor, used only by benchmarks/tests of regression detection
    inject_slowdown: float = JOB_DEFAULTS["inject_slowdown"]
    #: time inside the runner's steady gate (edgeprune.runner.gate.SteadyGate): None = off,
    #: {} = defaults, or overrides such as {"tol": 0.1, "max_wait_s": 20}
    gate: dict[str, Any] | None = JOB_DEFAULTS["gate"]
    #: "wall" (each run's wall-clock time) or "kernel" (the layers' own work from the
    #: runtime's per-node profiling counters, less layout conversions:
    #: edgeprune.runner.timing.TIMING_MODES)
    timing: str = JOB_DEFAULTS["timing"]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BenchJob":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class JobResult:
    """What the runner reports for one job (times are per inference, milliseconds)."""

    id: str
    ok: bool
    backend: str = ""
    error: str | None = None
    times_ms: list[float] = field(default_factory=list)
    load_s: float | None = None
    max_abs_diff: float | None = None
    verified: bool | None = None
    accuracy: float | None = None
    eval_samples: int | None = None
    threads: int | None = None
    runtime_version: str | None = None
    env: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "JobResult":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def write_manifest(bundle_dir: Path, jobs: list[BenchJob]) -> Path:
    """Write manifest.json atomically and the runner (runner.pyz) next to it."""
    bundle_dir.mkdir(parents=True, exist_ok=True)
    write_runner(bundle_dir)
    manifest = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "jobs": [asdict(j) for j in jobs]}
    tmp = bundle_dir / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(bundle_dir / MANIFEST_FILE)
    return bundle_dir / MANIFEST_FILE


def read_results(bundle_dir: Path) -> list[JobResult]:
    """Parse results.jsonl; a truncated last line (killed runner) is ignored."""
    path = bundle_dir / RESULTS_FILE
    out: list[JobResult] = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(JobResult.from_dict(json.loads(line)))
        except json.JSONDecodeError:
            continue
    return out
