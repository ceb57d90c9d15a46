"""The backend interface: ``build(onnx, target) -> Artifact`` on the host.

Running an artifact is *not* part of this interface on purpose: artifacts run on the
device through the self-contained runner (``edgeprune/runner/``, shipped as
``runner.pyz``), which has its own small per-backend loaders and needs only numpy + the
runtime. The host side only compiles and describes what it built.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeprune.errors import BackendError
from edgeprune.registry import Registry
# one formatter of runtime errors for the host and the device (the runner imports nothing of ours)
from edgeprune.runner.errors import one_line

__all__ = ["BACKENDS", "Artifact", "Backend", "dist_version", "get_backend", "one_line"]

if TYPE_CHECKING:
    from edgeprune.config.targets import Target


@dataclass
class Artifact:
    """A compiled model on disk, ready to be copied into a deploy bundle.

    ``path`` is the file the runner loads; ``files`` lists every file that must travel
    with it (e.g. OpenVINO's .xml and .bin). ``options`` are the runtime options the
    runner must apply (threads, hints), recorded so results are reproducible.
    """

    backend: str
    path: Path
    files: list[Path]
    target: str
    backend_version: str
    build_seconds: float
    options: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["files"] = [str(f) for f in self.files]
        return d


def dist_version(backend: str, dists: tuple[str, ...], pip_name: str) -> str:
    """Installed version of the first distribution in ``dists``, or a BackendError with a pip hint."""
    from importlib import metadata

    for d in dists:
        try:
            return metadata.version(d)
        except metadata.PackageNotFoundError:
            continue
    raise BackendError(f"backend '{backend}' is not installed on this host", f"pip install {pip_name}")


class Backend(ABC):
    """One compiler/runtime. Subclasses are small and registered with ``BACKENDS``."""

    name: str = ""
    #: pip package that provides the runtime on a device (for error hints)
    runtime_package: str = ""
    #: precisions this backend can *run* an fp32 artifact at (``--precision``); "int8"
    #: artifacts come from a quantized model instead (compile.quantize.INT8_BACKENDS)
    precisions: tuple[str, ...] = ("fp32",)

    def runtime_options(self, target: "Target", threads: int | None = None, precision: str = "fp32") -> dict[str, Any]:
        """The options the runner applies to this backend's artifact (threads, hints and
        ``precision``, which the runner always sets explicitly): for a build and for a
        user's prebuilt artifact alike, so both run the same way."""
        return {"precision": precision}

    @abstractmethod
    def version(self) -> str:
        """Version of the compiler/runtime on this host (raises BackendError if absent)."""

    @abstractmethod
    def supports(self, target: "Target") -> tuple[bool, str]:
        """Whether this backend can build for ``target``; the string says why not."""

    @abstractmethod
    def build(self, onnx_path: Path, target: "Target", out_dir: Path, threads: int | None = None) -> Artifact:
        """Compile ``onnx_path`` for ``target`` into ``out_dir`` and return the artifact."""


BACKENDS: Registry[Backend] = Registry("backend", BackendError)


def get_backend(name: str) -> Backend:
    return BACKENDS.get(name)
