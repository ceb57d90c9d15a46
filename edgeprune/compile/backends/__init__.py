"""Backend plugins, registered by name in :data:`BACKENDS`.

Importing this package registers the built-in backends; their heavy runtimes are only
imported when a backend actually builds something.
"""

from edgeprune.compile.backends.base import BACKENDS, Artifact, Backend, get_backend

from edgeprune.compile.backends import onnxruntime as _ort  # noqa: F401,E402
from edgeprune.compile.backends import openvino as _ov  # noqa: F401,E402
from edgeprune.compile.backends import tvm as _tvm  # noqa: F401,E402

__all__ = ["BACKENDS", "Artifact", "Backend", "get_backend"]
