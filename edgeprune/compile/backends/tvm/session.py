"""One MetaSchedule tuning session: extract a model's kernels, tune them in batches into
the target's database, stop cleanly on the trial budget, the time budget or Ctrl-C.

Untuned TVM on a CPU is tens of times slower than ONNX Runtime; MetaSchedule closes the
gap by searching schedules for every fused kernel and timing candidates on the real
hardware. That takes minutes to hours (thousands of trials for a competitive ResNet-18 on
a 2-core host; each round of the evolutionary search costs tens of seconds per kernel), so
a session is resumable: records are appended as each batch is measured, and a rerun with
the same ``--trials`` counts what the database already has.

MetaSchedule's scheduler runs in C++ and cannot be stopped from outside, so every stop
(time budget, Ctrl-C) happens at a *batch boundary*: the builder raises before building the
next batch, once every batch already sent has been measured and recorded.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from edgeprune.compile.backends.base import one_line
from edgeprune.compile.backends.tvm.builders import fast_frame_stack, persistent_builder
from edgeprune.compile.backends.tvm.lag import focus_kernels, set_lag
from edgeprune.compile.backends.tvm.plan import fit_first_round, seconds_per_batch, trial_plan
from edgeprune.compile.backends.tvm.records import TuningDatabase, TuningError
from edgeprune.compile.backends.tvm.settings import TuneSettings, check_measurable
from edgeprune.compile.backends.tvm.targets import cross_compiler
from edgeprune.compile.backends.tvm.tasks import TuneReport, estimate_ms, extract, task_infos, task_stats
from edgeprune.errors import BackendError, Interrupted

if TYPE_CHECKING:
    from edgeprune.config.targets import Target

Log = Callable[[str], None]
STOP_MARK = "edgeprune: tuning time budget reached"


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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
        self.interrupted = 0  # the stop signal (Ctrl-C 2, SIGTERM 15, SIGHUP 1): stop at the next batch boundary
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
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

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
    """Ctrl-C (or SIGTERM / SIGHUP) while MetaSchedule runs: a KeyboardInterrupt raised
    inside one of its Python callbacks is swallowed by TVM's C++ loop (measured: the session
    went on tuning), so the first stop signal asks the builder to stop at the next batch
    boundary where nothing measured is unrecorded, the same clean stop as the time budget;
    the third one kills the process. The tune flow then exits with the signal's code."""
    import signal
    import threading

    from edgeprune.signals import STOP_SIGNALS, stop_signals_handled

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        if state.interrupted:  # an exception would be swallowed too: the next signal kills the process
            for s in STOP_SIGNALS:
                signal.signal(s, signal.SIG_DFL)
            state.log("  stop signal again: the next one kills the process (unrecorded batches are lost)")
            return
        state.interrupted = signum
        state.log(f"  {signal.Signals(signum).name}: stopping as soon as every batch sent is recorded (MetaSchedule "
                  "records the first round only when all kernels have had a batch); twice more kills it now")

    with stop_signals_handled(handler):
        yield


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


def _runner(settings: TuneSettings):
    """Where candidates are timed: this host (LocalRunner) or a board of an RPC tracker."""
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


def _require_metaschedule():
    """MetaSchedule and the packages it needs at tuning time (not at build time)."""
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
    return ms


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
    ms = _require_metaschedule()

    log(f"extracting kernels of {name} for {target.name} ...")
    try:
        _lowered, _tvm_target, tasks = extract(Path(onnx_path), target)
    except BackendError:
        raise
    except Exception as exc:  # noqa: BLE001 - TVM raises many types
        raise TuningError(f"cannot lower {name} for tuning: {one_line(exc)}") from exc
    tasks = [t for t in tasks if not t.mod.attrs.get("tirx.is_scheduled", False)]
    database = db.open()
    infos = task_infos(tasks, task_stats(database, tasks))
    set_lag(infos)
    report = TuneReport(model=name, target=target.name, database=str(db.path), tasks=infos,
                        trials_requested=settings.trials, time_budget_s=settings.time_budget_s,
                        measured_on=measured_on)
    report.estimated_ms_before = estimate_ms(infos)
    if status_only:
        report.stopped_by = "status"
        report.estimated_ms_after = report.estimated_ms_before
        return report

    remaining, per_task, per_iter, selected = trial_plan(settings, infos)
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
            with fast_frame_stack():
                contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                    extracted_tasks=[tasks[i] for i in selected],
                    work_dir=str(session_dir),
                    strategy=ms.search_strategy.EvolutionarySearch(population_size=settings.population),
                    seed=settings.seed,
                )
            callbacks = list(ms.measure_callback.MeasureCallback.create("default")) + [_progress_callback(state)]
            builder = persistent_builder(settings.builder_workers, settings.builder_timeout_s,
                                         cross_compiler(target), on_batch=state.batch_built)
            ms.tune.tune_tasks(
                tasks=contexts,
                task_weights=weights,
                work_dir=str(session_dir),
                max_trials_global=remaining,
                max_trials_per_task=per_task,
                num_trials_per_iter=per_iter,
                builder=builder,
                runner=_runner(settings),
                database=database,
                measure_callbacks=callbacks,
                task_scheduler="gradient",
            )
    except KeyboardInterrupt as exc:
        interrupted = True
        state.interrupted = state.interrupted or Interrupted.of(exc).signum
        log("interrupted: every batch measured so far is kept in the database; rerun to resume")
    except TuningError:
        raise
    except Exception as exc:  # noqa: BLE001
        if (state.timed_out or state.interrupted) and (isinstance(exc, _StopTuning) or STOP_MARK in str(exc)):
            exc = None  # the clean end of a time-budgeted or interrupted session
            interrupted = interrupted or state.interrupted
        if exc is not None:
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
    for info, (n, best) in zip(infos, task_stats(database, tasks)):
        info.tuned_now = n > info.trials_before
        info.trials_after = n
        info.best_us = None if best is None else best * 1e6
    set_lag(infos)
    report.trials_run = state.trials
    report.seconds = time.monotonic() - t_start
    report.estimated_ms_after = estimate_ms(infos)
    report.stopped_by = "interrupted" if interrupted else ("time-budget" if state.timed_out else "trials")
    report.stop_signal = state.interrupted or None
    if state.errors:
        report.notes.append(f"{state.errors} candidate(s) failed to build or run (normal for some schedules)")
    db.write_meta(target, {
        "model": name, "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - report.seconds)),
        "seconds": round(report.seconds, 1), "trials": state.trials, "stopped_by": report.stopped_by,
        "measured_on": measured_on, "threads": threads, "batches": state.batches,
    })
    return report
