"""Hardware targets: one YAML file per target in ``targets/``.

A target says what code to generate (triple, CPU, features, accelerator), which backends
to try in order of preference, and the options each backend gets. ``cpu: auto`` (the
``host`` target) is resolved on this machine: features from /proc/cpuinfo, the exact
LLVM CPU name by TVM when it compiles.
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgeprune.config.yamlfile import load_model_file
from edgeprune.errors import ConfigError

KNOWN_BACKENDS = ("onnxruntime", "openvino", "tvm")


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    arch: Literal["x86_64", "aarch64"]
    triple: str
    cpu: str = Field(description="LLVM CPU name, or 'auto' to detect on this host")
    features: list[str] = Field(default_factory=list)
    cores: int | Literal["auto"] = "auto"
    accelerator: Literal["none", "cuda", "opencl"] = "none"
    cuda_arch: str | None = None
    vector_bits: int = Field(128, description="width of one FMA unit's vector, for the roofline")
    fma_units: int = Field(2, ge=1)
    clock_ghz: float | Literal["auto"] = "auto"
    peak_gflops_override: float | None = Field(
        None, alias="peak_gflops", description="fp32 peak of an accelerator (GPU), used instead of the CPU formula"
    )
    backends: list[str] = Field(min_length=1, description="in order of preference")
    backend_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    source: str | None = Field(None, exclude=True)

    @field_validator("backends")
    @classmethod
    def _known_backends(cls, v: list[str]) -> list[str]:
        bad = [b for b in v if b not in KNOWN_BACKENDS]
        if bad:
            raise ValueError(f"unknown backend(s) {bad}; choose from {list(KNOWN_BACKENDS)}")
        return v

    # ---- resolved properties -------------------------------------------------------
    @property
    def is_host(self) -> bool:
        return self.cpu == "auto"

    @property
    def is_native(self) -> bool:
        """True when artifacts for this target can run on this machine."""
        return self.arch == platform.machine() and self.accelerator == "none"

    def num_cores(self) -> int:
        return os.cpu_count() or 1 if self.cores == "auto" else int(self.cores)

    def resolved_features(self) -> list[str]:
        if self.features or not self.is_host:
            return list(self.features)
        return host_features()

    def fp32_lanes(self) -> int:
        """fp32 SIMD lanes: the step size latency staircases follow."""
        feats = self.resolved_features()
        if self.is_host:
            if "+avx512f" in feats:
                return 16
            if "+avx2" in feats or "+avx" in feats:
                return 8
            return 4
        return max(1, self.vector_bits // 32)

    def clock(self) -> float:
        return host_clock_ghz() if self.clock_ghz == "auto" else float(self.clock_ghz)

    def peak_gflops(self) -> float:
        """Theoretical fp32 peak = cores x GHz x FMA units x lanes per unit x 2 (mul+add),
        or the accelerator's published peak when the target gives ``peak_gflops``."""
        if self.peak_gflops_override:
            return float(self.peak_gflops_override)
        return self.num_cores() * self.clock() * self.fma_units * (self.vector_bits // 32) * 2

    def options_for(self, backend: str) -> dict[str, Any]:
        return dict(self.backend_options.get(backend, {}))


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


@lru_cache(maxsize=1)
def host_features() -> list[str]:
    flags: set[str] = set()
    for line in _cpuinfo().splitlines():
        if line.startswith(("flags", "Features")):
            flags = set(line.split(":", 1)[1].split())
            break
    interesting = ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "neon", "asimd", "asimddp"]
    return [f"+{f}" for f in interesting if f in flags]


@lru_cache(maxsize=1)
def host_clock_ghz() -> float:
    for line in _cpuinfo().splitlines():
        if line.startswith("cpu MHz"):
            try:
                return float(line.split(":")[1]) / 1000.0
            except ValueError:
                break
    return 2.0


@lru_cache(maxsize=1)
def host_cpu_model() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def target_dirs() -> list[Path]:
    """Where targets are looked up, first match wins: $EDGEPRUNE_TARGETS_DIR, ./targets,
    then the targets shipped next to the package."""
    dirs = []
    env = os.environ.get("EDGEPRUNE_TARGETS_DIR")
    if env:
        dirs.append(Path(env))
    dirs.append(Path.cwd() / "targets")
    dirs.append(Path(__file__).resolve().parents[2] / "targets")
    seen, out = set(), []
    for d in dirs:
        r = d.resolve()
        if r not in seen and r.is_dir():
            seen.add(r)
            out.append(r)
    return out


def load_target_file(path: Path) -> Target:
    t = load_model_file(Target, path)
    if t.name != path.stem:
        raise ConfigError(f"{path}: field 'name' is '{t.name}' but the file is named '{path.stem}.yaml'; make them match")
    return t.model_copy(update={"source": str(path)})


def list_targets() -> list[Target]:
    found: dict[str, Target] = {}
    for d in target_dirs():
        for p in sorted(d.glob("*.yaml")):
            if p.stem not in found:
                found[p.stem] = load_target_file(p)
    return [found[k] for k in sorted(found)]


def get_target(name: str) -> Target:
    """Load a target by name, or from a path to a YAML file."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return load_target_file(p)
    for d in target_dirs():
        cand = d / f"{name}.yaml"
        if cand.exists():
            return load_target_file(cand)
    names = sorted({p.stem for d in target_dirs() for p in d.glob("*.yaml")})
    raise ConfigError(
        f"unknown target '{name}'. Choose from: {', '.join(names) or '(none found)'}",
        "or add targets/<name>.yaml",
    )
