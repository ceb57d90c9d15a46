"""The deploy bundle: the contract between the host and the on-device runner.

A bundle is a directory that can be copied anywhere (local temp dir, SFTP to a board)::

    bundle/
      manifest.json     {"format": "edgeprune-bundle", "version": 1, "jobs": [BenchJob...]}
      runner.py         copy of edgeprune/bench/runner.py (needs only numpy + runtime)
      <job files>       artifacts, inputs .npz, expected outputs .npz, eval .npz
      results.jsonl     written by the runner: one JobResult per line, appended and
                        flushed as each job finishes, so a killed run keeps what finished

Paths inside the manifest are relative to the bundle directory. ``inputs``/``expected``
npz files hold arrays named ``in0, in1, ...`` / ``out0, out1, ...``; ``eval`` npz holds
``in0..inK`` of shape [chunks, *input_shape] and ``labels`` of shape [chunks, batch].
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BUNDLE_FORMAT = "edgeprune-bundle"
BUNDLE_VERSION = 1
RUNNER_SOURCE = Path(__file__).with_name("runner.py")


@dataclass
class BenchJob:
    """One artifact to load, time, verify and score on the device."""

    id: str
    backend: str
    artifact: str
    inputs: str
    expected: str | None = None
    eval: str | None = None
    task: str | None = None  # "classification" | "binary" | None
    tolerance: float = 1e-3
    threads: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    warmup: int = 10
    min_runs: int = 50
    min_time_s: float = 1.0
    max_time_s: float = 30.0
    #: artificial slowdown factor, used only by benchmarks/tests of regression detection
    inject_slowdown: float = 1.0
    #: time inside the runner's steady gate (runner.SteadyGate): None = off, {} = defaults,
    #: or overrides such as {"tol": 0.1, "max_wait_s": 20}
    gate: dict[str, Any] | None = None
    #: "wall" (each run's wall-clock time) or "kernel" (the layers' own work from the
    #: runtime's per-node profiling counters, less layout conversions: runner.TIMING_MODES)
    timing: str = "wall"

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
    """Write manifest.json atomically and copy the runner next to it."""
    bundle_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(RUNNER_SOURCE, bundle_dir / "runner.py")
    manifest = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "jobs": [asdict(j) for j in jobs]}
    tmp = bundle_dir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(bundle_dir / "manifest.json")
    return bundle_dir / "manifest.json"


def read_results(bundle_dir: Path) -> list[JobResult]:
    """Parse results.jsonl; a truncated last line (killed runner) is ignored."""
    path = bundle_dir / "results.jsonl"
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
