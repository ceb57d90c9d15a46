"""The TVM backend and its MetaSchedule tuning, which builds reuse.

Modules, each importing only the ones listed before it:

* :mod:`.relax` - ONNX -> Relax and the lowering MetaSchedule tunes (one code path for
  build and tune, so kernels hash the same in both);
* :mod:`.targets` - the TVM target dict, cross compiler, TVM version;
* :mod:`.records` - the per-target tuning database, its key, applying records to a build;
* :mod:`.cuda` - whether this TVM can build and run CUDA here, and with which compiler;
* :mod:`.build` - :class:`TvmBackend` (registered as ``tvm``);
* :mod:`.tasks`, :mod:`.lag`, :mod:`.settings`, :mod:`.plan`, :mod:`.builders` - what a
  tuning session is made of: kernels and the report, kernel lag (``--focus``), settings,
  budget planning, the candidate builder pool (and the TVM ``inspect.stack`` patch);
* :mod:`.session` - :func:`tune_model`, one tuning session.

Importing the package registers the backend; TVM itself is imported only when a model is
built or tuned.
"""

from edgeprune.compile.backends.tvm.build import TvmBackend
from edgeprune.compile.backends.tvm.records import TuningDatabase, TuningError, records_for, tuning_root
from edgeprune.compile.backends.tvm.session import tune_model
from edgeprune.compile.backends.tvm.settings import RpcSettings, TuneSettings, check_measurable
from edgeprune.compile.backends.tvm.tasks import TaskInfo, TuneReport

__all__ = [
    "RpcSettings", "TaskInfo", "TuneReport", "TuneSettings", "TuningDatabase", "TuningError", "TvmBackend",
    "check_measurable", "records_for", "tune_model", "tuning_root",
]
