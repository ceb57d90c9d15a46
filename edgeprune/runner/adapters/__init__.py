"""One loader per runtime behind one :class:`~.base.Model` interface, keyed by backend name.

A loader's constructor takes ``(artifact path, job options, threads, kernel=...)`` and
imports its runtime only then (:func:`~.base.import_runtime`), so a board needs only the
runtimes of the jobs it runs.
"""

from __future__ import annotations

from .base import Model, import_runtime
from .openvino import OvModel
from .ort import OrtModel
from .tvm import TvmModel

LOADERS = {"onnxruntime": OrtModel, "openvino": OvModel, "tvm": TvmModel}

__all__ = ["LOADERS", "Model", "OrtModel", "OvModel", "TvmModel", "import_runtime"]
