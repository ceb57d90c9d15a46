"""The nightly matrix file: its schema, the cells it expands to, and CI shards.

Every problem in a matrix file is reported as ``file:line: what`` (the schema through
:func:`edgeprune.config.yamlfile.load_model_file`; unknown devices and targets here), so
a broken nightly fails before it measures anything.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from edgeprune.bench.settings import BenchSettings
from edgeprune.config.yamlfile import load_model_file, read_yaml
from edgeprune.errors import ConfigError
from edgeprune.results.detect import STATISTICS, DetectSettings
from edgeprune.results.evaluate import Policy
from edgeprune.results.location import DbLocation, beside
from edgeprune.results.records import Cell as CellKey
from edgeprune.results.records import cell_name


def _registered_backend(name: str) -> str:
    """A backend name from the one registry (:data:`edgeprune.compile.backends.BACKENDS`)."""
    from edgeprune.compile.backends import BACKENDS

    names = BACKENDS.names()
    if name not in names:
        raise ValueError(f"unknown backend '{name}'. Choose from: {', '.join(names)}")
    return name


Backend = Annotated[str, AfterValidator(_registered_backend)]


class BenchSpec(BaseModel):
    """How each cell is measured (see ``edgeprune bench --help``). Nightly's defaults
    are shorter than a one-off ``bench``: a matrix times many cells every night."""

    model_config = ConfigDict(extra="forbid")
    warmup: int = Field(5, ge=0)
    min_runs: int = Field(50, ge=5)
    min_time_s: float = Field(0.5, ge=0)
    max_time_s: float = Field(20.0, gt=0)
    threads: int | None = Field(None, ge=1)
    timeout_s: float = Field(900.0, gt=0)
    eval_samples: int | None = Field(None, ge=1)
    rounds: int = Field(3, ge=1, le=20)
    steady_gate: bool = False

    def settings(self) -> BenchSettings:
        """The library's timing settings for a cell measured with this spec."""
        return BenchSettings(**self.model_dump())


class BenchOverride(BaseModel):
    model_config = ConfigDict(extra="forbid")
    warmup: int | None = Field(None, ge=0)
    min_runs: int | None = Field(None, ge=5)
    min_time_s: float | None = Field(None, ge=0)
    max_time_s: float | None = Field(None, gt=0)
    threads: int | None = Field(None, ge=1)
    timeout_s: float | None = Field(None, gt=0)
    eval_samples: int | None = Field(None, ge=1)
    rounds: int | None = Field(None, ge=1, le=20)
    steady_gate: bool | None = None


class DetectionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_effect: float = Field(0.03, gt=0, lt=1, description="relative latency change that matters (0.03 = 3 %)")
    confidence: float = Field(0.99, gt=0.5, lt=1)
    same_confidence: float = Field(0.90, gt=0.5, lt=1)
    alpha: float = Field(0.01, gt=0, lt=0.5)
    run_noise: float = Field(0.01, ge=0, lt=1, description="prior between-run noise (sd of log medians)")
    pair_noise: float = Field(0.005, ge=0, lt=1, description="prior noise of a paired batch (sd of log ratios)")
    busy_noise: float = Field(0.03, gt=0, lt=1, description="pairs scattering more than this: device busy")
    busy_shift: float = Field(0.25, gt=0, description="baseline artifact this much slower than its history: busy")
    statistic: Literal[tuple(STATISTICS)] = Field(  # type: ignore[valid-type]
        "p10", description="per-run location compared: a low quantile (steady on busy machines) or the median")
    max_remeasure: int = Field(2, ge=0, le=10)
    accuracy_tolerance: float = Field(0.5, ge=0, description="points of accuracy a cell may lose")
    fail_on_unknown: bool = False


class BaselineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    runs: int = Field(5, ge=1, le=100, description="compare with the last N good runs of the cell")
    min_runs: int = Field(3, ge=1, le=100, description="judge latency only once this many earlier runs exist")
    pin: int | None = Field(None, ge=1, description="compare with this run id instead")
    retime: bool = Field(True, description="time the baseline's kept artifact beside tonight's (paired verdicts)")
    rounds: int = Field(6, ge=2, le=40, description="alternating rounds of a paired batch")
    artifacts: str | None = Field(None, description="where artifacts are kept (default: beside the database)")
    keep: int = Field(3, ge=1, le=100, description="artifacts kept per cell")


class CellFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    target: str | None = None
    device: str | None = None
    backend: Backend | None = None


class CellInclude(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    target: str | None = None
    device: str | None = None
    backend: Backend | None = None
    bench: BenchOverride | None = None


class MatrixSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: list[str] = Field(min_length=1)
    targets: list[str] = Field(default_factory=lambda: ["host"], min_length=1)
    devices: list[str] = Field(default_factory=lambda: ["local"], min_length=1)
    backends: list[Backend] = Field(default_factory=lambda: ["onnxruntime"], min_length=1)
    exclude: list[CellFilter] = Field(default_factory=list)
    include: list[CellInclude] = Field(default_factory=list)


class NightlyFile(BaseModel):
    """The whole matrix file."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field("nightly", min_length=1)
    devices_file: str | None = Field(None, description="devices.yaml, relative to this file")
    matrix: MatrixSpec
    bench: BenchSpec = Field(default_factory=BenchSpec)
    detection: DetectionSpec = Field(default_factory=DetectionSpec)
    baseline: BaselineSpec = Field(default_factory=BaselineSpec)

    @model_validator(mode="after")
    def _unique(self) -> "NightlyFile":
        for key in ("models", "targets", "devices", "backends"):
            vals = getattr(self.matrix, key)
            dupes = sorted({v for v in vals if vals.count(v) > 1})
            if dupes:
                raise ValueError(f"matrix.{key} lists {', '.join(dupes)} twice")
        return self


@dataclass(frozen=True)
class Cell:
    """One model x target x device x backend of the matrix, with its bench settings."""

    model: str
    target: str
    device: str
    backend: str
    bench: BenchSpec

    @property
    def key(self) -> CellKey:
        """The results database's cell (a matrix cell is never a pruned variant)."""
        return (self.model, self.target, self.device, self.backend, "")

    @property
    def name(self) -> str:
        return cell_name(self.key)

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.model}-{self.target}-{self.device}-{self.backend}").strip("_")


@dataclass
class NightlyConfig:
    """A validated matrix file and its cells."""

    spec: NightlyFile
    path: Path
    cells: list[Cell]

    @property
    def devices_file(self) -> Path | None:
        if not self.spec.devices_file:
            return None
        p = Path(self.spec.devices_file).expanduser()
        return p if p.is_absolute() else self.path.parent / p

    def policy(self, pin: int | None = None) -> Policy:
        """How cells are judged; ``pin`` (``--baseline``) overrides the file's pin."""
        d = self.spec.detection
        return Policy(
            detect=DetectSettings(min_effect=d.min_effect, confidence=d.confidence, same_confidence=d.same_confidence,
                                  alpha=d.alpha, run_noise=d.run_noise, statistic=d.statistic,
                                  pair_noise=d.pair_noise, busy_noise=d.busy_noise, busy_shift=d.busy_shift),
            baseline_runs=self.spec.baseline.runs,
            min_baseline_runs=min(self.spec.baseline.min_runs, self.spec.baseline.runs),
            pin=pin if pin is not None else self.spec.baseline.pin,
            accuracy_tolerance=d.accuracy_tolerance,
            max_remeasure=d.max_remeasure,
            fail_on_unknown=d.fail_on_unknown,
            retime=self.spec.baseline.retime,
            pair_rounds=self.spec.baseline.rounds + self.spec.baseline.rounds % 2,  # even: both go first equally
        )

    def artifacts_dir(self, db: DbLocation) -> Path:
        """Where the cells' artifacts are kept: ``baseline.artifacts`` (relative to this
        file), else beside the results database (``results.sqlite.artifacts``; for a
        PostgreSQL database, under the cache: :func:`~edgeprune.results.location.beside`)."""
        if self.spec.baseline.artifacts:
            p = Path(self.spec.baseline.artifacts).expanduser()
            return p if p.is_absolute() else self.path.parent / p
        return beside(db, ".artifacts")


def _line_of(node: Any, *path: Any) -> int | None:
    """1-based line of ``path`` (keys / list indices) in a composed YAML tree."""
    import yaml

    for key in path:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == str(key)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            break
        if node is None:
            return None
    return node.start_mark.line + 1 if node is not None else None


def expand(spec: NightlyFile) -> list[Cell]:
    """The cells of a matrix: cross product - exclude + include, in file order, no duplicates."""
    m = spec.matrix

    def bench_for(override: BenchOverride | None) -> BenchSpec:
        if override is None:
            return spec.bench
        return spec.bench.model_copy(update={k: v for k, v in override.model_dump().items() if v is not None})

    cells: dict[tuple[str, str, str, str], Cell] = {}
    for model, target, device, backend in itertools.product(m.models, m.targets, m.devices, m.backends):
        c = {"model": model, "target": target, "device": device, "backend": backend}
        if any(all(v is None or c[k] == v for k, v in ex.model_dump().items()) for ex in m.exclude):
            continue
        cells[(model, target, device, backend)] = Cell(model, target, device, backend, spec.bench)
    for inc in m.include:
        key = (inc.model or m.models[0], inc.target or m.targets[0], inc.device or m.devices[0],
               inc.backend or m.backends[0])
        cells[key] = Cell(*key, bench=bench_for(inc.bench))
    return list(cells.values())


def load_matrix(path: Path) -> NightlyConfig:
    """Read and validate a matrix file; every problem is ``file:line: what``."""
    spec = load_model_file(NightlyFile, path)
    _, node = read_yaml(path)
    cfg = NightlyConfig(spec=spec, path=path, cells=expand(spec))
    if not cfg.cells:
        raise ConfigError(f"{path}: the matrix has no cells left after 'exclude'")

    from edgeprune.config.devices import load_devices
    from edgeprune.config.targets import get_target

    problems = []
    try:
        devices = {d.name for d in load_devices(cfg.devices_file)}
    except ConfigError as exc:
        raise ConfigError(f"{path}: devices_file: {exc}") from None
    for key, kind in (("targets", "target"), ("devices", "device")):
        for i, name in enumerate(getattr(spec.matrix, key)):
            line = _line_of(node, "matrix", key, i)
            where = f"{path}:{line}" if line else str(path)
            if kind == "device" and name not in devices:
                problems.append(f"{where}: unknown device '{name}'. Choose from: {', '.join(sorted(devices))}")
            elif kind == "target":
                try:
                    get_target(name)
                except ConfigError as exc:
                    problems.append(f"{where}: {exc.message}")
    for i, inc in enumerate(spec.matrix.include):
        line = _line_of(node, "matrix", "include", i)
        where = f"{path}:{line}" if line else str(path)
        if inc.device and inc.device not in devices:
            problems.append(f"{where}: unknown device '{inc.device}'. Choose from: {', '.join(sorted(devices))}")
        if inc.target:
            try:
                get_target(inc.target)
            except ConfigError as exc:
                problems.append(f"{where}: {exc.message}")
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg


def shard(cells: list[Cell], spec: str | None) -> list[Cell]:
    """``"2/4"`` -> the second of four deterministic slices (for CI runners in parallel)."""
    if not spec:
        return cells
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise ConfigError(f"--shard '{spec}' must look like I/N with 1 <= I <= N, e.g. 1/4")
    i, n = int(m.group(1)), int(m.group(2))
    return [c for k, c in enumerate(sorted(cells, key=lambda c: c.name)) if k % n == i - 1]
