"""Hardware targets: one YAML file per target.

A target says what code to generate (triple, CPU, features, accelerator), which backends
to try in order of preference, the options each backend gets, and what its fp32 peak is
(the roofline every report divides by).

Where targets are found, first match by name wins (:func:`target_dirs`):

1. ``$EDGEPRUNE_TARGETS_DIR`` (one folder), for targets kept outside any project;
2. ``./targets`` of the current folder, a project's own boards;
3. the targets shipped inside the package (``edgeprune/targets/*.yaml``, found through
   :func:`edgeprune.paths.package_data`, so an installed wheel has them anywhere).

A user file with a shipped name (``./targets/host.yaml``) replaces the shipped one.

``cpu: auto`` (the shipped ``host`` target) means *this machine*: every ``auto`` field
(``arch``, ``triple``, ``cores``, ``vector_bits``, ``fma_units``, ``clock_ghz``; empty
``features``, ``int8``, ``bf16``) is filled from
:func:`edgeprune.host.host_cpu` when the target is loaded, never assumed, and
:meth:`Target.peak_description` says how the peak was computed from them. ``auto``
is refused on any other target: a board's width cannot be read on the host.

``cuda_arch: auto`` (the shipped ``host-cuda`` target) means *this machine's NVIDIA GPU*:
its architecture, name and fp32 peak are read when the target is loaded
(:func:`edgeprune.config.gpu.detect_gpu`, from ``nvidia-smi``). Where there is none the
target still lists, marked ``unavailable``, and :func:`get_target` refuses it in one line
("no NVIDIA GPU found (nvidia-smi not found): use --target host, ...").
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgeprune import host
from edgeprune.config.gpu import NvidiaGpu, detect_gpu, no_gpu_message
from edgeprune.config.yamlfile import load_model_file
from edgeprune.errors import ConfigError
from edgeprune.host import HostCpu
from edgeprune.paths import package_data

KNOWN_BACKENDS = ("onnxruntime", "openvino", "tvm")
TARGETS_ENV = "EDGEPRUNE_TARGETS_DIR"
#: what an explicit board target gets when its file leaves the roofline fields out
_BOARD_DEFAULTS = {"vector_bits": 128, "fma_units": 2}
_HOST_ONLY = ("arch", "triple", "vector_bits", "fma_units", "cuda_arch")
#: machine -> the GNU triple a host target builds for
_TRIPLES = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}

Auto = Literal["auto"]


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    arch: Literal["x86_64", "aarch64"] | Auto
    triple: str = Field(description="GNU triple, or 'auto' (host only) for this machine's")
    cpu: str = Field(description="LLVM CPU name, or 'auto' to detect on this host")
    features: list[str] = Field(default_factory=list)
    cores: int | Auto = "auto"
    accelerator: Literal["none", "cuda", "opencl"] = "none"
    cuda_arch: str | None = None
    vector_bits: int | Auto = Field("auto", description="width of one FMA unit's datapath, for the roofline")
    fma_units: int | Auto = Field("auto", description="FMA units per core, for the roofline")
    clock_ghz: float | Auto = Field("auto", description="nominal clock; 'auto' reads this machine's")
    int8: list[str] = Field(default_factory=list, description="int8 instruction sets (VNNI, AMX-INT8, dot product)")
    bf16: list[str] = Field(default_factory=list, description="bf16 instruction sets (AVX512-BF16, AMX-BF16)")
    peak_gflops_override: float | None = Field(
        None, alias="peak_gflops", description="fp32 peak of an accelerator (GPU), used instead of the CPU formula"
    )
    backends: list[str] = Field(min_length=1, description="in order of preference")
    backend_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    source: str | None = Field(None, exclude=True)
    #: where the host facts came from ("AVX2 from /proc/cpuinfo flags; clock: ..."), None
    #: for a target whose numbers are all in its file
    detected: str | None = Field(None, exclude=True)
    #: fp32 register lanes of the detected host (AVX-512 on Zen 4: 16 lanes, 256-bit datapath)
    detected_lanes: int | None = Field(None, exclude=True)
    #: the NVIDIA GPU a ``cuda_arch: auto`` target was detected on (None: none found, or a board)
    gpu: NvidiaGpu | None = Field(None, exclude=True)
    #: why this machine cannot use the target (no NVIDIA GPU for ``cuda_arch: auto``); None when it can
    unavailable: str | None = Field(None, exclude=True)

    @field_validator("backends")
    @classmethod
    def _known_backends(cls, v: list[str]) -> list[str]:
        bad = [b for b in v if b not in KNOWN_BACKENDS]
        if bad:
            raise ValueError(f"unknown backend(s) {bad}; choose from {list(KNOWN_BACKENDS)}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _auto_is_for_the_host(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("cpu") == "auto":
            return data
        data = dict(data)
        for key, default in _BOARD_DEFAULTS.items():
            data.setdefault(key, default)
        bad = [k for k in _HOST_ONLY if data.get(k) == "auto"]
        if bad:
            raise ValueError(f"{', '.join(bad)}: 'auto' is detected on this machine, so only for cpu: auto; "
                             "give the board's numbers")
        return data

    # ---- resolved properties -------------------------------------------------------
    @property
    def is_host(self) -> bool:
        return self.cpu == "auto"

    @property
    def is_native(self) -> bool:
        """True when artifacts for this target can run on this machine: its CPU, or the
        NVIDIA GPU a ``cuda_arch: auto`` target was detected on."""
        return self.arch == platform.machine() and (self.accelerator == "none" or self.gpu is not None)

    def num_cores(self) -> int:
        return host.cores() if self.cores == "auto" else int(self.cores)

    def resolved_features(self) -> list[str]:
        return list(self.features)

    def fp32_lanes(self) -> int:
        """fp32 SIMD lanes of one register: the step size latency staircases follow."""
        if self.detected_lanes:
            return self.detected_lanes
        return max(1, self._vector_bits() // 32)

    def clock(self) -> float:
        if self.clock_ghz == "auto":  # only an unresolved host target (built by hand)
            return host.nominal_clock().ghz
        return float(self.clock_ghz)

    def _vector_bits(self) -> int:
        return 128 if self.vector_bits == "auto" else int(self.vector_bits)

    def _fma_units(self) -> int:
        return 1 if self.fma_units == "auto" else int(self.fma_units)

    def peak_gflops(self) -> float:
        """Theoretical fp32 peak = cores x GHz x FMA units x lanes per unit x 2 (mul+add),
        or the accelerator's published peak when the target gives ``peak_gflops``."""
        if self.peak_gflops_override:
            return float(self.peak_gflops_override)
        if self.cuda_arch == "auto" or self.gpu is not None:  # this machine's GPU: 0 where unknown
            return (self.gpu.peak_gflops() if self.gpu is not None else None) or 0.0
        return self.num_cores() * self.clock() * self._fma_units() * (self._vector_bits() // 32) * 2

    def peak_description(self) -> str:
        """How :meth:`peak_gflops` was computed, in one line for reports, e.g.
        ``2 cores x 2.60 GHz nominal x 2 FMA x 8 fp32 lanes x 2 = 166 GFLOP/s; AVX2 from
        /proc/cpuinfo flags, clock from 'cpu MHz' in /proc/cpuinfo``."""
        where = f" ({Path(self.source).name})" if self.source else ""
        if self.peak_gflops_override:
            return f"{self.peak_gflops():.0f} GFLOP/s: the accelerator's published fp32 peak, from the target file{where}"
        if self.gpu is not None:
            return self.gpu.peak_description()
        if self.cuda_arch == "auto":
            return "fp32 peak unknown: no NVIDIA GPU detected"
        text = (f"{self.num_cores()} cores x {self.clock():.2f} GHz nominal x {self._fma_units()} FMA x "
                f"{self._vector_bits() // 32} fp32 lanes x 2 = {self.peak_gflops():.0f} GFLOP/s")
        return f"{text}; {self.detected}" if self.detected else f"{text}; from the target file{where}"

    def options_for(self, backend: str) -> dict[str, Any]:
        return dict(self.backend_options.get(backend, {}))

    def detected_on(self, cpu: HostCpu) -> Target:
        """This target with every ``auto`` field filled from ``cpu`` (a host target only).

        Fields the file states are kept (a user may write the all-core boost clock).
        """
        if not self.is_host:
            return self
        update: dict[str, Any] = {}
        said: list[str] = []
        simd = cpu.simd
        if self.arch == "auto":
            update["arch"] = cpu.arch
        if self.triple == "auto":
            update["triple"] = _TRIPLES.get(cpu.arch, f"{cpu.arch}-linux-gnu")
        if not self.features:
            update["features"] = cpu.features()
        if self.cores == "auto":
            update["cores"] = cpu.cores
        if self.vector_bits == "auto":
            update["vector_bits"] = simd.vector_bits
            update["detected_lanes"] = simd.fp32_lanes
        if self.fma_units == "auto":
            update["fma_units"] = simd.fma_units
        if self.vector_bits == "auto" or self.fma_units == "auto":
            said.append(f"{simd.isa} ({simd.fma_units} x {simd.vector_bits}-bit FMA) from /proc/cpuinfo flags")
        if not self.int8:
            update["int8"] = list(simd.int8)
        if not self.bf16:
            update["bf16"] = list(simd.bf16)
        if self.clock_ghz == "auto":
            update["clock_ghz"] = cpu.clock.ghz
            said.append(f"clock from {cpu.clock.source}")
        if said:
            update["detected"] = f"{'; '.join(said)} ({cpu.model})"
        return self.model_copy(update=update)

    def with_gpu(self, gpu: NvidiaGpu | None, why: str | None) -> Target:
        """This target with ``cuda_arch: auto`` filled from ``gpu``, or marked
        :attr:`unavailable` with ``why`` there is none (a host GPU target only)."""
        if not (self.is_host and self.cuda_arch == "auto"):
            return self
        if gpu is None:
            return self.model_copy(update={"unavailable": no_gpu_message(self.name, why or "none detected")})
        said = f"GPU {gpu.describe()} from nvidia-smi"
        return self.model_copy(update={"cuda_arch": gpu.arch, "gpu": gpu,
                                       "detected": f"{self.detected}; {said}" if self.detected else said})


def target_dirs() -> list[Path]:
    """Where targets are looked up, first match wins: ``$EDGEPRUNE_TARGETS_DIR``,
    ``./targets``, then the targets shipped in the package (see the module docstring)."""
    dirs = []
    env = os.environ.get(TARGETS_ENV)
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(Path.cwd() / "targets")
    dirs.append(package_data("targets"))
    seen, out = set(), []
    for d in dirs:
        r = d.resolve()
        if r not in seen and r.is_dir():
            seen.add(r)
            out.append(r)
    return out


def load_target_file(path: Path, cpu: HostCpu | None = None,
                     gpu: tuple[NvidiaGpu | None, str | None] | None = None) -> Target:
    """One target file, validated; a host target (``cpu: auto``) detected on ``cpu``
    (default: this machine's, :func:`edgeprune.host.host_cpu`) and, for ``cuda_arch:
    auto``, on ``gpu`` ((GPU, None) or (None, why not); default :func:`detect_gpu`)."""
    t = load_model_file(Target, path)
    if t.name != path.stem:
        raise ConfigError(f"{path}: field 'name' is '{t.name}' but the file is named '{path.stem}.yaml'; make them match")
    t = t.model_copy(update={"source": str(path)})
    if t.is_host:
        t = t.detected_on(cpu or host.host_cpu())
        if t.cuda_arch == "auto":
            t = t.with_gpu(*(gpu or detect_gpu()))
    return t


def usable(t: Target) -> Target:
    """``t``, or the :class:`ConfigError` saying why this machine cannot use it (no GPU)."""
    if t.unavailable:
        raise ConfigError(t.unavailable)
    return t


def list_targets() -> list[Target]:
    found: dict[str, Target] = {}
    for d in target_dirs():
        for p in sorted(d.glob("*.yaml")):
            if p.stem not in found:
                found[p.stem] = load_target_file(p)
    return [found[k] for k in sorted(found)]


def get_target(name: str) -> Target:
    """Load a target by name, or from a path to a YAML file; one this machine cannot use
    (``host-cuda`` without an NVIDIA GPU) is a :class:`ConfigError` saying why."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return usable(load_target_file(p))
    for d in target_dirs():
        cand = d / f"{name}.yaml"
        if cand.exists():
            return usable(load_target_file(cand))
    names = sorted({p.stem for d in target_dirs() for p in d.glob("*.yaml")})
    raise ConfigError(
        f"unknown target '{name}'. Choose from: {', '.join(names) or '(none found)'}",
        f"or add ./targets/<name>.yaml (or a folder named by ${TARGETS_ENV})",
    )
