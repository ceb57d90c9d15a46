"""What every runtime loader offers the job loop, and how a runtime is imported."""

from __future__ import annotations

from ..errors import JobError, one_line
from ..probe import RUNTIMES


def import_runtime(backend: str):
    """Import a backend's runtime module; a missing or broken one is this job's
    :class:`JobError` with the pip package to install."""
    module, pip_name, _ = RUNTIMES[backend]
    try:
        return __import__(module)
    except ImportError as exc:
        missing = getattr(exc, "name", None)
        if isinstance(exc, ModuleNotFoundError) and missing and missing.split(".")[0] == module:
            raise JobError("%s is not installed on this device (pip install %s)" % (module, pip_name))
        raise JobError("%s is installed but failed to import on this device: %s" % (module, one_line(exc)))


class Model(object):
    """Common interface of the per-runtime loaders."""

    runtime_version = None
    #: [(name, shape-or-None, numpy dtype-or-None)] when the runtime can tell
    input_specs = None
    #: thread/affinity settings the runtime actually runs with (recorded in env.runtime_settings)
    settings = None

    def prepare(self, arrays):
        """The inputs converted once into what :meth:`run` takes (outside the timed loop)."""
        raise NotImplementedError

    def run(self, prepared):
        """One synchronous inference (the timed call)."""
        raise NotImplementedError

    def outputs(self, prepared):
        """Run and return every output as a numpy array."""
        raise NotImplementedError

    def close(self):
        pass

    def kernel_times(self, n):
        """ms of the layers' own work in each of the last ``n`` runs, from the runtime's
        per-node profiling counters (jobs with ``timing: kernel``)."""
        raise JobError("kernel timing is not available for this runtime; use timing 'wall'")
