"""MetaSchedule tuning for the TVM backend, with a per-target database that builds reuse.

Untuned TVM on a CPU is tens of times slower than ONNX Runtime; MetaSchedule closes the
gap by searching schedules for every fused kernel and timing candidates on the real
hardware. Tuning takes minutes to hours (thousands of trials for a competitive ResNet-18 on
a 2-core host; each round of the evolutionary search costs tens of seconds per kernel),
so it is an investment kept in a database and never repeated:

* one database per *target key* (``$EDGEPRUNE_TUNING_DIR``, else
  ``$EDGEPRUNE_CACHE/tuning``, else ``~/.cache/edgeprune/tuning``, then
  ``<target>-<hash>/``): the hash covers the TVM target (CPU, features, cores), the TVM
  version and, for the ``host`` target, the CPU model, so records are never applied to
  hardware they were not measured on;
* records are keyed by the *structural hash* of each kernel (MetaSchedule's
  ``module_equality="structural"``), so any model with a layer of the same shape (a
  pruned model, another model) reuses them;
* :func:`apply_records` is called by ``TvmBackend.build``: a compile after a tune uses
  the records without tuning again;
* ``tune_model`` is resumable: records are appended as each batch is measured, and a
  rerun with the same ``--trials`` counts what the database already has.

The lowering is the one DESIGN.md verified on this machine (``static_shape_tuning`` has
no builder argument, so its steps are spelled out here): ``DecomposeOpsForInference``,
``CanonicalizeBindings``, the ``zero`` pipeline, ``AttachAttrLayoutFreeBuffers`` (CPU
weight prepacking) before tuning; ``MetaScheduleApplyDatabase``,
``SplitLayoutRewritePreproc``, ``LiftTransformParams``, ``FoldConstant`` after. Weights are
bound as constants, so the prepacked layouts are folded at build time and the artifact's
``main(input)`` interface does not change.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from edgeprune.errors import BackendError

if TYPE_CHECKING:
    from edgeprune.config.targets import Target

Log = Callable[[str], None]
WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
META_FILE = "edgeprune-tuning.json"
#: default MetaSchedule settings that worked on this machine (see DESIGN.md)
#: per candidate build. MetaSchedule's own LocalBuilder needs minutes because every batch
#: starts a worker that imports TVM; edgeprune's workers are long-lived (the import is paid
#: once, in the initializer), and a candidate still compiling after 3 min is a pathological
#: schedule (measured: one ResNet-18 candidate held the session idle-but-one-core for 5+ min)
BUILDER_TIMEOUT_S = 180.0
DEFAULT_TRIALS_PER_ITER = 64
#: ~seconds per batch (evolutionary search of one kernel + building and timing its candidates)
#: on the busy 2-core host, until a database has its own history
SECONDS_PER_BATCH_ESTIMATE = 110.0


class TuningError(BackendError):
    """Tuning cannot run as asked (no device to measure on, database busy, TVM failure)."""


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# where records live
# --------------------------------------------------------------------------------------
def tuning_root() -> Path:
    """``$EDGEPRUNE_TUNING_DIR``, else ``$EDGEPRUNE_CACHE/tuning``, else ``~/.cache/edgeprune/tuning``."""
    explicit = os.environ.get("EDGEPRUNE_TUNING_DIR")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("EDGEPRUNE_CACHE")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache" / "edgeprune"
    return base / "tuning"


def tvm_target_dict(target: "Target") -> dict[str, Any]:
    from edgeprune.compile.backends.tvm import TvmBackend

    return TvmBackend().target_dict(target)


def target_key(target: "Target") -> str:
    """``<target name>-<12 hex>``: records apply only to the hardware they were measured on."""
    from edgeprune.compile.backends.tvm import TvmBackend
    from edgeprune.config.targets import host_cpu_model

    ident: dict[str, Any] = {"tvm_target": tvm_target_dict(target), "tvm": TvmBackend().version()}
    if target.is_host:
        ident["host_cpu"] = host_cpu_model()
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', target.name)}-{digest}"


@dataclass(frozen=True)
class TuningDatabase:
    """One target's MetaSchedule JSON database (two append-only JSON-lines files)."""

    path: Path

    @classmethod
    def for_target(cls, target: "Target", root: Path | None = None) -> "TuningDatabase":
        return cls((root or tuning_root()) / target_key(target))

    @property
    def workload_file(self) -> Path:
        return self.path / WORKLOAD_FILE

    @property
    def record_file(self) -> Path:
        return self.path / RECORD_FILE

    def record_count(self) -> int:
        """Number of tuning records (all workloads), without importing TVM."""
        try:
            with open(self.record_file, "rb") as f:
                return sum(1 for line in f if line.strip())
        except OSError:
            return 0

    def has_records(self) -> bool:
        return self.record_count() > 0

    def open(self):
        """The MetaSchedule database object (creates empty files if missing)."""
        from tvm.s_tir import meta_schedule as ms

        self.path.mkdir(parents=True, exist_ok=True)
        return ms.database.JSONDatabase(
            path_workload=str(self.workload_file), path_tuning_record=str(self.record_file), allow_missing=True
        )

    def read_meta(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / META_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def write_meta(self, target: "Target", session: dict[str, Any]) -> None:
        """Keep what the records were measured for, and a history of tuning sessions."""
        meta = self.read_meta()
        meta.update({"format": "edgeprune-tuning", "version": 1, "target": target.name,
                     "tvm_target": tvm_target_dict(target), "key": self.path.name})
        meta.setdefault("sessions", []).append(session)
        tmp = self.path / (META_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=1, default=str))
        tmp.replace(self.path / META_FILE)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """One tuning session per database at a time (records are appended, never rewritten).

        Builds only read, so they never wait for a tune; a tune refuses to start while
        another one writes the same database.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        with open(self.path / ".tune.lock", "a+") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                owner = f.read().strip() or "another process"
                raise TuningError(
                    f"the tuning database {self.path} is being written by {owner}",
                    "wait for that tune to finish (records are shared), or use another --db",
                ) from None
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()}")
            f.flush()
            try:
                yield
            finally:
                f.seek(0)
                f.truncate()
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def records_for(target: "Target") -> TuningDatabase | None:
    """The database a build of ``target`` should apply, or None.

    Disabled by ``tuning: off`` in the target's ``tvm`` backend options or by
    ``EDGEPRUNE_TVM_TUNING=off``; ``tuning: <dir>`` points at a database directory.
    """
    setting = str(target.options_for("tvm").get("tuning", os.environ.get("EDGEPRUNE_TVM_TUNING", "auto")))
    if setting.lower() in ("off", "false", "0", "no", "none"):
        return None
    db = TuningDatabase(Path(setting).expanduser()) if setting.lower() not in ("auto", "on", "true", "1") \
        else TuningDatabase.for_target(target)
    return db if db.has_records() else None


# --------------------------------------------------------------------------------------
# lowering shared by tune and build (so kernels hash identically in both)
# --------------------------------------------------------------------------------------
def _is_cpu(tvm_target) -> bool:
    return str(tvm_target.kind.name) == "llvm"


def lower_for_tuning(mod, tvm_target):
    """``zero`` pipeline (+ weight-prepack attributes on CPUs): the module that is tuned.

    ``mod`` has already been through ``DecomposeOpsForInference`` and
    ``CanonicalizeBindings`` (as in ``TvmBackend.build``).
    """
    import tvm
    from tvm import relax

    passes = [relax.get_pipeline("zero")]
    if _is_cpu(tvm_target):
        passes.append(relax.transform.AttachAttrLayoutFreeBuffers())
    with tvm_target:
        return tvm.transform.Sequential(passes)(mod)


def count_scheduled(mod) -> tuple[int, int]:
    """(kernels with a MetaSchedule schedule, kernels) in a lowered module."""
    import tvm

    n = tuned = 0
    for _gv, func in mod.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        n += 1
        attrs = func.attrs
        if attrs is not None and ("tirx.is_scheduled" in attrs or "tir.is_scheduled" in attrs):
            tuned += 1
    return tuned, n


@dataclass
class AppliedRecords:
    """What a build took from the tuning database."""

    database: str
    kernels_tuned: int
    kernels: int

    def note(self) -> str:
        if self.kernels_tuned == 0:
            return (f"untuned build: the tuning database {self.database} has no records for this model's kernels "
                    "(run `edgeprune tune`)")
        return (f"MetaSchedule records applied to {self.kernels_tuned} of {self.kernels} kernels "
                f"(database {self.database})")


def apply_records(mod, tvm_target, db: TuningDatabase):
    """Lower ``mod`` and replace every kernel the database knows by its best schedule.

    Kernels without records keep TVM's default lowering. Returns (module, AppliedRecords).
    """
    import tvm
    from tvm import relax

    lowered = lower_for_tuning(mod, tvm_target)
    before, _ = count_scheduled(lowered)
    try:
        with tvm_target:  # the passes read the target from the context when constructed
            applied = relax.transform.MetaScheduleApplyDatabase(str(db.path))(lowered)
            tuned, n = count_scheduled(applied)
            out = applied
            if _is_cpu(tvm_target):
                out = tvm.transform.Sequential([relax.transform.SplitLayoutRewritePreproc(),
                                                relax.transform.LiftTransformParams(),
                                                relax.transform.FoldConstant()])(applied)
    except Exception as exc:  # noqa: BLE001 - e.g. a record half-written by a tune running right now
        from edgeprune.compile.backends.onnxruntime import one_line

        raise TuningError(f"the tuning database {db.path} could not be applied: {one_line(exc)}") from exc
    return out, AppliedRecords(str(db.path), max(0, tuned - before), n)


# --------------------------------------------------------------------------------------
# tuning
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RpcSettings:
    """Measure on a board of a TVM RPC tracker (``python -m tvm.exec.rpc_server --tracker ... --key ...``)."""

    tracker: str  # HOST:PORT
    key: str
    session_timeout_s: float = 120.0

    def host_port(self) -> tuple[str, int]:
        host, _, port = self.tracker.rpartition(":")
        if not host or not port.isdigit():
            raise TuningError(f"RPC tracker address {self.tracker!r} is not HOST:PORT")
        return host, int(port)


@dataclass(frozen=True)
class TuneSettings:
    """How much to tune and how to measure.

    ``trials`` is the model's *total* budget: trials already in the database for this
    model's kernels count towards it, so rerunning an interrupted tune resumes and a
    finished one does nothing. ``time_budget_s`` bounds the wall time of this session
    (checked after every measured batch, so it may overrun by one batch). With neither,
    64 trials per kernel.
    """

    trials: int | None = None
    time_budget_s: float | None = None
    trials_per_task: int | None = None
    trials_per_iter: int | None = None  # None: sized so every kernel gets a first round
    population: int = 512  # evolutionary search population (MetaSchedule default)
    builder_timeout_s: float = BUILDER_TIMEOUT_S
    #: candidates are built in parallel, then timed alone: MetaSchedule joins the runner before
    #: the next batch is built, so building on every core never overlaps a measurement
    builder_workers: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))
    runner_timeout_s: float = 60.0
    threads: int | None = None  # TVM threads while timing candidates (default: target cores)
    rpc: RpcSettings | None = None
    seed: int | None = 0
    verbose: bool = False  # show MetaSchedule's own tables and cost-model logs
    #: tune only the ``focus`` kernels with the most lag (see :func:`kernel_lag_us`); None: all
    focus: int | None = None


@dataclass
class TaskInfo:
    """One kernel (MetaSchedule task) of the model and what the database knows about it."""

    name: str
    weight: int
    flop: float | None
    trials_before: int = 0
    trials_after: int = 0
    best_us: float | None = None  # best measured latency of one call
    tuned_now: bool = False
    lag_us: float | None = None  # time per inference above the model's best FLOP rate (kernel_lag_us)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TuneReport:
    """What a tune session did (also what ``--status`` shows without tuning)."""

    model: str
    target: str
    database: str
    tasks: list[TaskInfo]
    trials_requested: int | None
    time_budget_s: float | None
    trials_run: int = 0
    seconds: float = 0.0
    stopped_by: Literal["trials", "time-budget", "already-tuned", "interrupted", "status", "error"] = "trials"
    measured_on: str = "local"
    estimated_ms_before: float | None = None
    estimated_ms_after: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def trials_total(self) -> int:
        return sum(t.trials_after for t in self.tasks)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["trials_total"] = self.trials_total
        for t in d["tasks"]:  # strict JSON has no Infinity: an untuned kernel's lag is null (trials_after 0 says why)
            if t["lag_us"] is not None and not math.isfinite(t["lag_us"]):
                t["lag_us"] = None
        return d


def _task_stats(db, tasks) -> list[tuple[int, float | None]]:
    """(records, best seconds) per extracted task, from the database."""
    out = []
    for t in tasks:
        mod = t.dispatched[0]
        if not db.has_workload(mod):
            out.append((0, None))
            continue
        recs = db.get_top_k(db.commit_workload(mod), 1 << 30)
        best = None
        for r in recs:
            secs = [float(s) for s in (r.run_secs or [])]
            if secs:
                m = sum(secs) / len(secs)
                best = m if best is None or m < best else best
        out.append((len(recs), best))
    return out


def _estimate_ms(infos: list[TaskInfo]) -> float | None:
    """MetaSchedule's own estimate of one inference: sum of weight x best kernel latency
    (kernels without records excluded, so only comparable when all are tuned)."""
    if not infos or any(t.best_us is None for t in infos):
        return None
    return sum(t.weight * t.best_us for t in infos) / 1e3  # type: ignore[operator]


#: kernels below this share of the model's largest kernel's FLOPs do not set the reference
#: rate: a tiny kernel's rate is dominated by its fixed cost and would flatter or shame the rest
LAG_REFERENCE_MIN_SHARE = 0.1


def kernel_lag_us(infos: list[TaskInfo]) -> list[float | None]:
    """Per kernel, the time per inference (us, x calls) it loses against the model's best
    tuned FLOP rate: ``calls x (best_us - flop / best_rate)``, floored at 0.

    Why: after a few thousand trials most of a model's big kernels reach about the same
    GFLOP/s, and the ones that did not (ResNet-18 here: the 7x7 stem, the stride-2 and
    512-channel convs) are where more trials can still win time. MetaSchedule's gradient
    scheduler looks at recent improvement, not at this headroom, so ``tune --focus K``
    spends a session on the K kernels with the most lag. Kernels without records get
    ``inf`` (they run untuned schedules, the worst lag of all); kernels without a FLOP
    estimate get None (not ranked).
    """
    rated = [(t.flop, t.best_us) for t in infos if t.flop and t.best_us]
    top = max((f for f, _ in rated), default=0.0)
    rates = [f / us for f, us in rated if f >= LAG_REFERENCE_MIN_SHARE * top]
    best_rate = max(rates, default=None)
    out: list[float | None] = []
    for t in infos:
        if not t.flop:
            out.append(None)
        elif t.best_us is None:
            out.append(math.inf)
        elif best_rate is None:
            out.append(None)
        else:
            out.append(t.weight * max(0.0, t.best_us - t.flop / best_rate))
    return out


def _set_lag(infos: list[TaskInfo]) -> None:
    for info, lag in zip(infos, kernel_lag_us(infos)):
        info.lag_us = lag


def focus_kernels(selected: list[int], infos: list[TaskInfo], k: int) -> tuple[list[int], list[int]]:
    """(kept, skipped): the ``k`` kernels of ``selected`` with the most lag (unranked last)."""
    lags = kernel_lag_us(infos)
    ranked = sorted(selected, key=lambda i: -(lags[i] if lags[i] is not None else -1.0))
    return sorted(ranked[:k]), sorted(ranked[k:])


def check_measurable(target: "Target", rpc: RpcSettings | None) -> str:
    """Where candidates will be timed ('local' or 'rpc://tracker/key'); refuses cross-target tuning
    without a device, because timings from this host would tune for the wrong hardware."""
    if rpc is not None:
        return f"rpc://{rpc.tracker}/{rpc.key}"
    if target.is_native:
        return "local"
    import platform

    what = f"{target.arch}" + (f" + {target.accelerator} GPU" if target.accelerator != "none" else "")
    raise TuningError(
        f"cannot tune for target '{target.name}' ({what}) on this {platform.machine()} host without its device: "
        "MetaSchedule picks schedules by timing candidate kernels on the target hardware, and timings taken here "
        "would tune for the wrong processor. Builds for this target stay untuned (dlight defaults on GPUs)",
        "start `python -m tvm.exec.rpc_server --tracker HOST:9190 --key KEY` on the board and pass "
        "--rpc-tracker HOST:9190 --rpc-key KEY",
    )


def extract(onnx_path: Path, target: "Target"):
    """(lowered module, tvm target, extracted tasks) of an ONNX model for ``target``."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from edgeprune.compile.backends.tvm import import_relax

    mod = import_relax(Path(onnx_path))
    tvm_target = tvm.target.Target(tvm_target_dict(target))
    lowered = lower_for_tuning(mod, tvm_target)
    tasks = ms.relax_integration.extract_tasks(lowered, tvm_target)
    return lowered, tvm_target, tasks


def _task_infos(tasks, stats) -> list[TaskInfo]:
    infos = []
    for t, (n, best) in zip(tasks, stats):
        flop = None
        with contextlib.suppress(Exception):  # an estimate only; some kernels have none
            from tvm.s_tir.analysis import estimate_tir_flops

            flop = float(estimate_tir_flops(t.dispatched[0]))
        infos.append(TaskInfo(t.task_name, int(t.weight), flop, n, n, None if best is None else best * 1e6))
    return infos


def _runner(settings: TuneSettings, target: "Target"):
    from tvm.s_tir import meta_schedule as ms

    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=100, enable_cpu_cache_flush=False)
    if settings.rpc is None:
        return ms.runner.LocalRunner(timeout_sec=settings.runner_timeout_s, evaluator_config=evaluator)
    host, port = settings.rpc.host_port()
    from edgeprune.bench.rpc import TrackerAddress, connect

    connect(TrackerAddress(host, port))  # DeviceError now, not a hang deep inside MetaSchedule
    cfg = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=settings.rpc.key,
                              session_timeout_sec=int(settings.rpc.session_timeout_s))
    return ms.runner.RPCRunner(rpc_config=cfg, evaluator_config=evaluator, max_workers=1)


def _builder_worker_init() -> None:
    """Runs once in each builder worker: pay for ``tvm.s_tir.tensor_intrin`` (which every
    candidate build imports) up front, with the fast frame stack."""
    with _fast_frame_stack():
        import tvm.s_tir.tensor_intrin  # noqa: F401


def _builder(settings: TuneSettings, target: "Target", state: "_Budget | None" = None):
    """A LocalBuilder whose worker process lives for the whole session.

    MetaSchedule's LocalBuilder starts a fresh worker for every batch, and each one
    imports TVM and its tensor intrinsics again: that was most of the "~7 s per trial"
    on this host. One long-lived worker (recycled every 256 builds, restarted after a
    timeout) does the same builds without that cost.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import _serialize_params, _worker_func
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    from edgeprune.compile.backends.tvm import TvmBackend

    cc = TvmBackend().cross_compiler(target)
    f_export = None
    if cc is not None:  # candidates for a foreign board are linked with its cross compiler
        def f_export(mod, _cc=cc):  # noqa: E306 - cloudpickled into the builder process
            import os as _os
            import tempfile as _tempfile

            from tvm.support import cc as _ccmod

            path = _os.path.join(_tempfile.mkdtemp(), "tvm_tmp_mod.so")
            mod.export_library(path, fcompile=_ccmod.cross_compiler(_cc))
            return path

    timeout = settings.builder_timeout_s

    @derived_object
    class _PersistentBuilder(PyBuilder):
        def __init__(self) -> None:
            super().__init__()
            self.pool = PopenPoolExecutor(max_workers=settings.builder_workers, timeout=timeout,
                                          initializer=_builder_worker_init, maximum_process_uses=256)

        def build(self, build_inputs):
            if state is not None:
                state.batch_built(len(build_inputs))
            results = []
            args = [(None, f_export, b.mod, b.target, _serialize_params(b.params)) for b in build_inputs]
            for r in self.pool.map_with_error_catching(lambda x: _worker_func(*x), args):
                if r.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(r.value, None))
                elif r.status == StatusKind.TIMEOUT:
                    results.append(BuilderResult(None, f"LocalBuilder: Timeout, killed after {timeout} seconds"))
                else:
                    results.append(BuilderResult(None, "LocalBuilder: An exception occurred\n" + str(r.value)))
            return results

        def shutdown(self) -> None:
            self.pool.shutdown()

    return _PersistentBuilder()


STOP_MARK = "edgeprune: tuning time budget reached"


class _StopTuning(Exception):
    """Raised from the builder to end a session on time. MetaSchedule has no clean way to
    stop a running scheduler from outside (terminating tasks from a callback trips its
    internal checks), and by then every batch sent has been recorded."""


class _Budget:
    """Shared state of the progress callback: counts trials, prints progress, stops on time."""

    def __init__(self, names: list[str], total: int, deadline: float | None, log: Log, t0: float) -> None:
        self.names, self.total, self.deadline, self.log, self.t0 = names, total, deadline, log, t0
        self.trials = 0
        self.errors = 0
        self.best: dict[int, float] = {}
        self.timed_out = False
        self.interrupted = False  # Ctrl-C: stop at the next batch boundary
        self.batches = 0
        self.joined = 0

    def batch_built(self, n: int) -> None:
        """Called by the builder before each batch. Stops the session once the time budget
        is spent and every batch already sent has been measured and recorded (so nothing
        measured is lost); before the first measurements come back (a whole first round,
        one batch per kernel) it says that something is happening."""
        if self.interrupted and self.batches == self.joined:
            self.log("  interrupted: stopping (every measured batch is recorded)")
            raise _StopTuning(STOP_MARK)
        if (self.deadline is not None and time.monotonic() >= self.deadline
                and self.batches == self.joined):
            self.timed_out = True
            self.log("  time budget reached: stopping (every measured batch is recorded)")
            raise _StopTuning(STOP_MARK)
        self.batches += 1
        if self.trials == 0:
            self.log(f"  [first round: batch {self.batches}/{len(self.names)}, "
                     f"{(time.monotonic() - self.t0) / 60:.1f} min] searched and built {n} candidates")


def _progress_callback(state: _Budget):
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
    from tvm.ir.utils import derived_object

    @derived_object
    class _Progress(PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
            n = len(runner_results)
            state.trials += n
            state.joined += 1
            for b, r in zip(builder_results, runner_results):
                if b.error_msg is not None or r.error_msg is not None or not r.run_secs:
                    state.errors += 1
                    continue
                secs = [float(s) for s in r.run_secs]
                m = sum(secs) / len(secs)
                if task_id not in state.best or m < state.best[task_id]:
                    state.best[task_id] = m
            elapsed = time.monotonic() - state.t0
            rate = elapsed / max(state.trials, 1)
            left = max(state.total - state.trials, 0) * rate
            if state.deadline is not None:
                left = min(left, max(state.deadline - time.monotonic(), 0))
            best = state.best.get(task_id)
            state.log(
                f"  [{state.trials}/{state.total} trials, {elapsed / 60:.1f} min, ~{left / 60:.0f} min left] "
                f"{state.names[task_id]}: {n} measured"
                + (f", best {best * 1e6:.1f} us" if best is not None else ", no valid candidate yet")
                + (f" ({state.errors} failed so far)" if state.errors else "")
            )

    return _Progress()


@contextlib.contextmanager
def _stop_on_ctrl_c(state: _Budget) -> Iterator[None]:
    """Ctrl-C while MetaSchedule runs: a KeyboardInterrupt raised inside one of its Python
    callbacks is swallowed by TVM's C++ loop (measured: the session went on tuning), so the
    first Ctrl-C asks the builder to stop at the next batch boundary where nothing measured
    is unrecorded, the same clean stop as the time budget; the third one kills the process."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        if state.interrupted:  # an exception would be swallowed too: the next Ctrl-C kills the process
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            state.log("  Ctrl-C again: the next one kills the process (unrecorded batches are lost)")
            return
        state.interrupted = True
        state.log("  Ctrl-C: stopping as soon as every batch sent is recorded (MetaSchedule records the first "
                  "round only when all kernels have had a batch); press twice more to kill it now")

    old = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@contextlib.contextmanager
def _fast_frame_stack() -> Iterator[None]:
    """Creating the first TuneContext imports ``tvm.s_tir.tensor_intrin``, whose ~500
    TVMScript functions each call ``inspect.stack()``; reading source context for every
    frame made that take 1.5 min on this host. TVMScript only looks at the context of the
    innermost frames, so only those get it while the import runs (~5x faster)."""
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


class _NoLevelNag(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("Logging level set to")


@contextlib.contextmanager
def _metaschedule_console(verbose: bool) -> Iterator[None]:
    """MetaSchedule logs to stdout; send it to stderr (stdout stays machine-readable) and,
    unless verbose, keep only warnings on the console (everything still goes to the log files)."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    old_level = logger.level
    nag = _NoLevelNag()
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.addFilter(nag)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        logger.removeFilter(nag)
        logger.setLevel(old_level)


def _trial_plan(settings: TuneSettings, infos: list[TaskInfo]) -> tuple[int, int, int, list[int]]:
    """(session trials, per-kernel cap, trials per batch, kernels to tune).

    ``--trials`` is the model's total, so the session runs what the database lacks. The
    first round gives every kernel one batch, so batches are sized to fit that round in
    the session's trials: otherwise the kernels late in the order would get nothing.
    """
    n_all = max(len(infos), 1)
    if settings.trials is not None:
        total = int(settings.trials)
    elif settings.time_budget_s is not None:
        total = 1 << 20  # the clock stops it
    else:
        total = DEFAULT_TRIALS_PER_ITER * n_all
    per_task = int(settings.trials_per_task) if settings.trials_per_task else total
    selected = [i for i, t in enumerate(infos) if t.trials_before < per_task]
    existing = sum(t.trials_before for t in infos)
    session = total - existing if settings.trials is not None or settings.time_budget_s is None else total
    if settings.trials_per_iter:
        per_iter = int(settings.trials_per_iter)
    else:
        fit = session // max(len(selected), 1) if session < (1 << 20) else DEFAULT_TRIALS_PER_ITER
        per_iter = max(4, min(DEFAULT_TRIALS_PER_ITER, fit))
        if settings.time_budget_s is not None:
            per_iter = min(per_iter, 32)  # a batch is the granularity of the time budget
    return session, per_task, per_iter, selected


def seconds_per_batch(db: TuningDatabase) -> float:
    """What one batch (search + build + measure) took in this database's past sessions."""
    done = [(float(x.get("seconds", 0)), int(x.get("batches", 0))) for x in db.read_meta().get("sessions", [])]
    done = [(sec, n) for sec, n in done if n > 0 and sec > 0]
    if not done:
        return SECONDS_PER_BATCH_ESTIMATE
    return sum(sec for sec, _ in done) / sum(n for _, n in done)


def fit_first_round(selected: list[int], infos: list[TaskInfo], budget_s: float,
                    batch_s: float) -> tuple[list[int], list[int]]:
    """(kept, skipped): the first round gives every kernel one batch and is measured before
    the time budget can stop anything, so when it would not fit in ~60 % of the budget, only
    the kernels that matter most (FLOPs x calls) are tuned this session; the rest keep
    their records, or TVM's default schedule if they have none."""
    room = max(1, int(0.6 * budget_s / max(batch_s, 1.0)))
    if len(selected) <= room:
        return selected, []
    ranked = sorted(selected, key=lambda i: -(infos[i].flop or 0.0) * infos[i].weight)
    kept = sorted(ranked[:room])
    return kept, sorted(ranked[room:])


def tune_model(
    onnx_path: Path,
    target: "Target",
    settings: TuneSettings = TuneSettings(),
    db: TuningDatabase | None = None,
    model_name: str | None = None,
    log: Log = _stderr,
    status_only: bool = False,
) -> TuneReport:
    """Tune every kernel of ``onnx_path`` for ``target`` into the target's database.

    Raises :class:`TuningError` for cross-target tuning without a device. Interrupting
    (Ctrl-C) keeps every batch measured so far; the report says ``interrupted``.
    """
    measured_on = "local" if status_only else check_measurable(target, settings.rpc)
    db = db or TuningDatabase.for_target(target)
    name = model_name or Path(onnx_path).stem
    t_start = time.monotonic()
    try:
        from tvm.s_tir import meta_schedule as ms
    except ImportError as exc:
        raise TuningError(f"MetaSchedule is not importable: {exc}", "pip install 'edgeprune[tune]'") from exc
    for dep in ("xgboost", "cloudpickle", "psutil"):
        try:
            __import__(dep)
        except ImportError:
            raise TuningError(f"MetaSchedule tuning needs the Python package '{dep}'",
                              "pip install 'edgeprune[tune]'") from None

    log(f"extracting kernels of {name} for {target.name} ...")
    try:
        _lowered, tvm_target, tasks = extract(Path(onnx_path), target)
    except BackendError:
        raise
    except Exception as exc:  # noqa: BLE001 - TVM raises many types
        from edgeprune.compile.backends.onnxruntime import one_line

        raise TuningError(f"cannot lower {name} for tuning: {one_line(exc)}") from exc
    tasks = [t for t in tasks if not t.mod.attrs.get("tirx.is_scheduled", False)]
    database = db.open()
    infos = _task_infos(tasks, _task_stats(database, tasks))
    _set_lag(infos)
    report = TuneReport(model=name, target=target.name, database=str(db.path), tasks=infos,
                        trials_requested=settings.trials, time_budget_s=settings.time_budget_s,
                        measured_on=measured_on)
    report.estimated_ms_before = _estimate_ms(infos)
    if status_only:
        report.stopped_by = "status"
        report.estimated_ms_after = report.estimated_ms_before
        return report

    remaining, per_task, per_iter, selected = _trial_plan(settings, infos)
    existing = sum(t.trials_before for t in infos)
    if settings.focus and selected:
        selected, rest = focus_kernels(selected, infos, settings.focus)
        if rest:
            lost = sum(infos[i].lag_us or 0.0 for i in selected)
            report.notes.append(
                f"--focus {settings.focus}: tuning the kernels with the most lag against the model's best FLOP rate ("
                + ", ".join(infos[i].name for i in selected)
                + (f"; {lost / 1e3:.2f} ms per inference between them" if math.isfinite(lost) else "")
                + f"); {len(rest)} other kernel(s) keep their records")
            log(f"note: {report.notes[-1]}")
    if settings.time_budget_s is not None and selected:
        selected, skipped = fit_first_round(selected, infos, settings.time_budget_s, seconds_per_batch(db))
        if skipped:
            report.notes.append(
                f"time budget too short for a first round over all {len(skipped) + len(selected)} kernels "
                f"(~{seconds_per_batch(db):.0f} s per kernel and round here): tuned the {len(selected)} with the "
                f"most FLOPs; not tuned this session: "
                + ", ".join(infos[i].name + ("" if infos[i].trials_before else " (default schedule)") for i in skipped))
            log(f"note: {report.notes[-1]}")
    if remaining <= 0 or not selected:
        report.stopped_by = "already-tuned"
        report.estimated_ms_after = report.estimated_ms_before
        report.notes.append(f"the database already holds {existing} trials for this model's {len(infos)} kernels "
                            f"(budget {settings.trials}): nothing to tune; raise --trials to tune further")
        return report

    # the up-front estimate uses this database's own history (seconds per batch), not a constant
    est = (math.ceil(remaining / per_iter) * seconds_per_batch(db)) if settings.trials is not None else None
    if settings.time_budget_s is not None:
        est = min(est, settings.time_budget_s) if est is not None else settings.time_budget_s
    log(f"tuning {len(selected)} of {len(infos)} kernels of {name} for {target.name}: "
        + (f"{remaining} trials" if settings.trials is not None else "until the time budget")
        + (f" ({existing} already in the database)" if existing else "")
        + f", {per_iter} per batch, measured {measured_on}"
        + (f", ~{est / 60:.0f} min" if est else "")
        + f"; records: {db.path}")

    threads = settings.threads or target.num_cores()
    deadline = t_start + settings.time_budget_s if settings.time_budget_s is not None else None
    state = _Budget([infos[i].name for i in selected], remaining if settings.trials is not None else 0,
                    deadline, log, t_start)
    if settings.trials is None:
        state.total = per_iter * len(selected) * 8  # only for the progress line's ETA
    session_dir = db.path / "logs" / time.strftime("%Y%m%d-%H%M%S")
    old_threads = os.environ.get("TVM_NUM_THREADS")
    os.environ["TVM_NUM_THREADS"] = str(threads)  # inherited by the local runner's worker
    interrupted = False
    builder = None
    try:
        with db.exclusive(), _metaschedule_console(settings.verbose), _stop_on_ctrl_c(state):
            with _fast_frame_stack():
                contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                    extracted_tasks=[tasks[i] for i in selected],
                    work_dir=str(session_dir),
                    strategy=ms.search_strategy.EvolutionarySearch(population_size=settings.population),
                    seed=settings.seed,
                )
            callbacks = list(ms.measure_callback.MeasureCallback.create("default")) + [_progress_callback(state)]
            builder = _builder(settings, target, state)
            ms.tune.tune_tasks(
                tasks=contexts,
                task_weights=weights,
                work_dir=str(session_dir),
                max_trials_global=remaining,
                max_trials_per_task=per_task,
                num_trials_per_iter=per_iter,
                builder=builder,
                runner=_runner(settings, target),
                database=database,
                measure_callbacks=callbacks,
                task_scheduler="gradient",
            )
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: every batch measured so far is kept in the database; rerun to resume")
    except TuningError:
        raise
    except Exception as exc:  # noqa: BLE001
        if (state.timed_out or state.interrupted) and (isinstance(exc, _StopTuning) or STOP_MARK in str(exc)):
            exc = None  # the clean end of a time-budgeted or interrupted session
            interrupted = interrupted or state.interrupted
        if exc is not None:
            from edgeprune.compile.backends.onnxruntime import one_line

            db.write_meta(target, {"model": name, "seconds": round(time.monotonic() - t_start, 1),
                                   "trials": state.trials, "stopped_by": "error", "error": one_line(exc),
                                   "measured_on": measured_on, "threads": threads, "batches": state.batches})
            raise TuningError(f"MetaSchedule tuning of {name} for {target.name} failed: {one_line(exc)}",
                              f"full logs in {session_dir}") from exc
    finally:
        if builder is not None:
            with contextlib.suppress(Exception):
                builder.shutdown()
        if old_threads is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = old_threads

    database = db.open()  # re-read: what is on disk is what builds will see
    for info, (n, best) in zip(infos, _task_stats(database, tasks)):
        info.tuned_now = n > info.trials_before
        info.trials_after = n
        info.best_us = None if best is None else best * 1e6
    _set_lag(infos)
    report.trials_run = state.trials
    report.seconds = time.monotonic() - t_start
    report.estimated_ms_after = _estimate_ms(infos)
    report.stopped_by = "interrupted" if interrupted else ("time-budget" if state.timed_out else "trials")
    if state.errors:
        report.notes.append(f"{state.errors} candidate(s) failed to build or run (normal for some schedules)")
    db.write_meta(target, {
        "model": name, "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - report.seconds)),
        "seconds": round(report.seconds, 1), "trials": state.trials, "stopped_by": report.stopped_by,
        "measured_on": measured_on, "threads": threads, "batches": state.batches,
    })
    return report


def parse_duration(text: str) -> float:
    """'30m', '2h', '1h30m', '90s', '45' (seconds) -> seconds."""
    s = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", s)
    if not parts or "".join(f"{a}{b}" for a, b in parts) != re.sub(r"\s+", "", s):
        raise ValueError(f"'{text}' is not a duration; write it like 30m, 2h, 1h30m or 90s")
    return sum(float(a) * {"h": 3600, "m": 60, "s": 1}[u] for a, u in parts)


def format_minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


__all__ = [
    "AppliedRecords", "RpcSettings", "TaskInfo", "TuneReport", "TuneSettings", "TuningDatabase", "TuningError",
    "apply_records", "check_measurable", "count_scheduled", "focus_kernels", "format_minutes", "kernel_lag_us",
    "lower_for_tuning", "parse_duration",
    "records_for", "target_key", "tune_model", "tuning_root",
]
