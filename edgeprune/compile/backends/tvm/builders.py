"""Candidate builds for MetaSchedule: a long-lived builder pool, and the patch that makes
TVMScript's imports fast enough to start one.

Why a pool of our own: MetaSchedule's ``LocalBuilder`` starts a fresh worker for every
batch, and each one imports TVM and its tensor intrinsics again; that was most of the
"~7 s per trial" on this host. :func:`persistent_builder` keeps its workers for the whole
session (recycled every 256 builds, restarted after a timeout) and pays the import once,
in the worker initializer.

Why the ``inspect.stack`` patch (:func:`fast_frame_stack`): TVM 0.27's TVMScript decorators
(``tirx/script/parser/entry.py: prim_func``, ``script/parser/ir/entry.py``) call
``inspect.stack()`` for every function they parse, and ``inspect.stack()`` reads the
source context (``inspect.getframeinfo`` -> ``getmodule``/``linecache``) of *every* frame
on the stack. Importing ``tvm.s_tir.tensor_intrin`` (done by the first ``TuneContext`` and
by every builder worker) parses ~500 such functions: that took 1.5 min on the first host of
this project. TVMScript only reads the context of the innermost frames (``frames[2]`` in
``utils.is_defined_in_class``), so only those get it while the import runs. Re-checked with
apache-tvm 0.27.0.post1 (Intel Xeon host, 2 busy cores): 496 ``inspect.stack()`` calls at a
mean depth of 26 frames, 58 ms each unpatched (~29 s) against a 7 s import patched. Drop the
patch when TVMScript stops calling ``inspect.stack()`` with source context.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

#: builds a worker process serves before it is replaced (bounds leaks in long sessions)
MAX_BUILDS_PER_WORKER = 256


@contextlib.contextmanager
def fast_frame_stack() -> Iterator[None]:
    """``inspect.stack()`` with source context for the 4 innermost frames only (see above)."""
    import inspect

    original = inspect.stack

    def stack(context: int = 1):
        frame, out = sys._getframe(1), []
        while frame is not None:
            if len(out) < 4:
                out.append(inspect.FrameInfo(frame, *inspect.getframeinfo(frame, context)))
            else:
                out.append(inspect.FrameInfo(frame, frame.f_code.co_filename, frame.f_lineno,
                                             frame.f_code.co_name, None, None))
            frame = frame.f_back
        return out

    inspect.stack = stack
    try:
        yield
    finally:
        inspect.stack = original


def _worker_init() -> None:
    """Runs once in each builder worker: pay for ``tvm.s_tir.tensor_intrin`` (which every
    candidate build imports) up front, with the fast frame stack."""
    with fast_frame_stack():
        import tvm.s_tir.tensor_intrin  # noqa: F401


def persistent_builder(workers: int, timeout_s: float, cross_compiler: str | None = None,
                       on_batch: Callable[[int], None] | None = None):
    """A MetaSchedule ``PyBuilder`` whose worker processes live for the whole session.

    ``cross_compiler`` links candidates for a foreign board; ``on_batch(n)`` is called
    before each batch of ``n`` candidates is built (the session's budget and Ctrl-C
    checks: an exception raised there ends the session at a batch boundary). Call
    ``shutdown()`` when done.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import _serialize_params, _worker_func
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    f_export = None
    if cross_compiler is not None:
        def f_export(mod, _cc=cross_compiler):  # noqa: E306 - cloudpickled into the builder process
            import os as _os
            import tempfile as _tempfile

            from tvm.support import cc as _ccmod

            path = _os.path.join(_tempfile.mkdtemp(), "tvm_tmp_mod.so")
            mod.export_library(path, fcompile=_ccmod.cross_compiler(_cc))
            return path

    @derived_object
    class _PersistentBuilder(PyBuilder):
        def __init__(self) -> None:
            super().__init__()
            self.pool = PopenPoolExecutor(max_workers=workers, timeout=timeout_s, initializer=_worker_init,
                                          maximum_process_uses=MAX_BUILDS_PER_WORKER)

        def build(self, build_inputs):
            if on_batch is not None:
                on_batch(len(build_inputs))
            results = []
            args = [(None, f_export, b.mod, b.target, _serialize_params(b.params)) for b in build_inputs]
            for r in self.pool.map_with_error_catching(lambda x: _worker_func(*x), args):
                if r.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(r.value, None))
                elif r.status == StatusKind.TIMEOUT:
                    results.append(BuilderResult(None, f"LocalBuilder: Timeout, killed after {timeout_s} seconds"))
                else:
                    results.append(BuilderResult(None, "LocalBuilder: An exception occurred\n" + str(r.value)))
            return results

        def shutdown(self) -> None:
            self.pool.shutdown()

    return _PersistentBuilder()
