"""``build_on_farm``: a device model measured over every reachable board of one kind.

Boards that share a ``board_kind`` in devices.yaml share one latency table
(``Device.table_device``: ``kind:<kind>``), so the calibration suite need not be measured
on each: it is split over them. A build goes:

1. **select and reach** (:func:`select_boards`, :func:`reach_boards`): the boards of the
   kind (or those named), each connected to and probed at once; an unreachable one is
   reported and left out, before any measuring; none reachable is an error (exit 7);
2. **overlap**: every board measures the same few points
   (:func:`edgeprune.latency.overlap.overlap_points`), and
   :func:`~edgeprune.latency.overlap.compare_boards` compares them: a board that disagrees
   beyond the measured noise (a throttled or misconfigured board) is reported and measures
   nothing more, and its overlap points never reach the table; the overlap points of the
   board closest to the others do;
3. **split**: the points left go to the boards as they become free, in priority order, a
   batch at a time (about ``BATCH_S`` of device time, and never more than a fair share of
   what is left, so every board gets work), each board one run at a time (its device lock);
   a board that fails gives its batch back to the others. Progress and the time left are
   over all boards;
4. **fit** on every point of the table and write the sidecar, whose ``farm`` section says
   which board measured how many points (each table entry names its board), and what the
   overlap check found (``edgeprune device-model show``).

Why threads and one recorder: every chunk of every board goes through the one
:class:`~edgeprune.latency.recorder.PointRecorder` (its lock serialises them; the store's
file lock and atomic rename keep other processes out), so Ctrl-C / SIGTERM keeps every
finished point of every board and a rerun resumes like a one-board build. A stop signal
reaches the main thread only: it sets a :class:`~edgeprune.signals.StopFlag` that each
board's runs watch (:class:`_BoardMeasurer`), so every runner is stopped and what it had
finished is saved.

Not through the TVM RPC tracker: a tracker runs one TVM ``.so`` per request with TVM's own
timer, while the suite is measured as deploy bundles of ONNX Runtime / OpenVINO / TVM
graphs by the on-device runner (interleaved rounds, the reference layer, the steady gate).
Boards of a tracker farm take part as SSH devices (docs/board-farm.md).
"""

from __future__ import annotations

import math
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgeprune.bench.measure import Bundle, measure_on
from edgeprune.durations import format_duration
from edgeprune.errors import BenchError, ConfigError, DeviceError, EdgepruneError, Interrupted
from edgeprune.flows.devmodel_build import (BATCH_S, BuildPlan, DeviceModelBuild, OneBar, bar_total, check_budget,
                                            describe_plan, finish_build, fit_plan, noisy_points, owed_batches,
                                            plan_build, record_interrupted)
from edgeprune.latency.entry import LatencyEntry
from edgeprune.latency.layer_bundle import REFERENCE_KEY, REFERENCE_PER_ROUND
from edgeprune.latency.measurer import BundleMeasurer
from edgeprune.latency.overlap import OVERLAP_POINTS, OverlapCheck, compare_boards, overlap_points
from edgeprune.latency.points import REMEASURE_ROUNDS
from edgeprune.latency.settings import ProfileSettings, ProgressSink
from edgeprune.latency.suite import SuitePoint
from edgeprune.signals import StopFlag

if TYPE_CHECKING:
    from edgeprune.bench.bundle import JobResult
    from edgeprune.config.devices import Device
    from edgeprune.config.targets import Target
    from edgeprune.latency.series import Timing
    from edgeprune.latency.store import LUTStore

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ which boards
def select_boards(devices: Sequence["Device"], kind: str | None, names: Sequence[str] = ()) -> tuple[str, list["Device"]]:
    """(kind, boards): every device of ``board_kind`` ``kind`` (those of ``names`` only, if
    given), or the devices ``names``, which must all be of one kind. ConfigError (exit 3)
    otherwise, with the devices.yaml line that fixes it."""
    by_name = {d.name: d for d in devices}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConfigError(f"unknown device(s) {', '.join(unknown)}. Choose from: {', '.join(by_name)}",
                          "devices are defined in devices.yaml")
    chosen = [by_name[n] for n in dict.fromkeys(names)]
    if kind is not None:
        of_kind = [d for d in devices if d.board_kind == kind]
        if not of_kind:
            kinds = sorted({d.board_kind for d in devices if d.board_kind})
            raise ConfigError(f"no device of board kind '{kind}' in devices.yaml"
                              + (f" (kinds there: {', '.join(kinds)})" if kinds else ""),
                              f"add `board_kind: {kind}` to each board of that kind (docs/board-farm.md)")
        other = [d.name for d in chosen if d.board_kind != kind]
        if other:
            raise ConfigError(f"device(s) {', '.join(other)} are not of board kind '{kind}'",
                              "name boards of that kind only, or drop --device")
        return kind, chosen or of_kind
    kinds = {d.board_kind for d in chosen}
    if None in kinds or len(kinds) != 1:
        loose = [d.name for d in chosen if not d.board_kind]
        why = (f"{', '.join(loose)} ha{'s' if len(loose) == 1 else 've'} no board_kind" if loose
               else f"they are of kinds {', '.join(sorted(k for k in kinds if k))}")
        raise ConfigError(f"a device model over several boards needs boards of one kind: {why}",
                          "give the boards the same `board_kind:` in devices.yaml (they then share one table)")
    return next(iter(kinds)), chosen  # type: ignore[return-value]


def reach_boards(boards: Sequence["Device"], backend: str, target: "Target", log: Log
                 ) -> tuple[list["Device"], dict[str, str]]:
    """(reachable boards, {board: why not}) -- every board connected to and probed at
    once. Refused only when none is reachable (DeviceError, exit 7, naming each)."""
    from edgeprune.flows.preflight import check_devices

    def one(d: "Device") -> str | None:
        try:
            check_devices([d], (backend,), target, log)
        except DeviceError as exc:
            return exc.message
        return None

    with ThreadPoolExecutor(max_workers=min(8, len(boards))) as pool:
        why = dict(zip((d.name for d in boards), pool.map(one, boards)))
    down = {n: w for n, w in why.items() if w is not None}
    up = [d for d in boards if d.name not in down]
    for n, w in down.items():
        log(f"warning: board '{n}' is left out: {w}")
    if not up:
        raise DeviceError(f"none of the {len(boards)} board(s) can be reached: "
                          + "; ".join(f"{n}: {w}" for n, w in down.items()), "see: edgeprune devices check")
    return up, down


# ------------------------------------------------------------------ one board
class _BoardMeasurer(BundleMeasurer):
    """A board's measurer: its runs stop when the farm's stop flag is set (a signal
    reaches the main thread only), keeping what the runner had finished. The bundle's
    job count is reported when the run ends (a remote board's results arrive then anyway)."""

    def __init__(self, *args: Any, stop: StopFlag, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.stop = stop

    def _run_with_progress(self, bundle: Bundle) -> "dict[str, JobResult]":
        results = measure_on(self.device, bundle, timeout_s=self.settings.timeout_s, stop=self.stop).results
        self.progress.advance(len(bundle.jobs))
        return results


@dataclass
class _Board:
    device: "Device"
    m: _BoardMeasurer
    state: str = "used"  # used | excluded | failed | alone
    why: str = ""
    scale: float = 1.0  # measured / estimated device time: the cost model of this board's batches
    spent: float = 0.0
    est: float = 0.0
    mine: list[SuitePoint] = field(default_factory=list)  # measured by this board in this build
    refs: list[float] = field(default_factory=list)  # its reference layer, raw ms, per bundle

    @property
    def name(self) -> str:
        return self.device.name

    def tap(self, timings: dict[str, "Timing"]) -> None:
        ref = next((t.ref_ms for t in timings.values() if t.ref_ms), None)
        if ref:
            self.refs.append(ref)

    def account(self, seconds: float, estimated: float) -> None:
        self.spent += seconds
        self.est += estimated
        self.scale = max(0.2, self.spent / self.est) if self.est > 0 else 1.0


class _Queue:
    """The points left, in priority order, handed out a batch at a time (thread-safe)."""

    def __init__(self, items: list[tuple[SuitePoint, str, int]], est: Callable[..., float]) -> None:
        self.items, self.est = list(items), est
        self.lock = threading.Lock()
        self.budget_hit = False

    def take(self, board: _Board, left: float, sharers: int) -> tuple[str, int, list[SuitePoint]] | None:
        """The next batch for ``board``: points of one mode and rounds count, about
        ``BATCH_S`` of its device time, at most a fair share of what is left; None when
        nothing is left or the time budget cannot fit the next point."""
        with self.lock:
            if not self.items:
                return None
            _, mode, rounds = self.items[0]
            share = max(1, math.ceil(len(self.items) / max(1, sharers)))
            room, batch, acc = min(left, BATCH_S), [], 0.0
            for p, m, r in self.items:
                if (m, r) != (mode, rounds) or len(batch) >= share:
                    break
                cost = self.est(p, r) * board.scale
                if acc + cost > room and (batch or cost > left):
                    break
                batch.append(p)
                acc += cost
            if not batch:
                self.budget_hit = True
                return None
            del self.items[:len(batch)]
            return mode, rounds, batch

    def give_back(self, items: list[tuple[SuitePoint, str, int]]) -> None:
        with self.lock:
            self.items[:0] = items

    def cost(self) -> float:
        with self.lock:
            return sum(self.est(p, r) for p, _, r in self.items)


# ------------------------------------------------------------------ the build
def build_on_farm(target: "Target", boards: Sequence["Device"], backend: str,
                  settings: ProfileSettings = ProfileSettings(), *, kind: str, unreachable: dict[str, str] | None = None,
                  time_budget_s: float | None = None, store: "LUTStore | None" = None,
                  progress: ProgressSink | None = None, log: Log = _stderr, size: str = "full") -> DeviceModelBuild:
    """Measure the calibration suite over ``boards`` (reachable boards of ``kind``; see
    :func:`select_boards` / :func:`reach_boards`, whose ``unreachable`` are recorded)
    into the kind's table, fit the device model and write its sidecar. As
    :func:`edgeprune.flows.device_model.build_device_model` otherwise: the budget, resuming,
    Ctrl-C (:class:`~edgeprune.flows.devmodel_build.DeviceModelInterrupted`). The boards'
    disagreement refuses the build (BenchError, exit 6) only when no majority agrees."""
    settings.check_drift()
    check_budget(time_budget_s)
    if not boards:
        raise DeviceError("no board to measure on")
    if len({d.table_device for d in boards}) != 1:
        raise ConfigError("the boards of a farm must share one latency table (one board_kind)")
    progress = progress or ProgressSink()
    bar = OneBar(progress, f"device-model suite on {len(boards)} board(s)", 0)
    stop = StopFlag()
    farm_log_lock = threading.Lock()

    def board_log(name: str) -> Log:
        def f(msg: str) -> None:
            with farm_log_lock:
                log(f"[{name}] {msg}")
        return f

    team = [_Board(d, _BoardMeasurer(target, d, backend, settings, progress=bar, log=board_log(d.name), stop=stop))
            for d in boards]
    plan = plan_build(target, boards[0], team[0].m, backend, settings, store, size, log)
    log(describe_plan(plan, target, f"{len(team)} board(s) of kind {kind}", backend))
    down = dict(unreachable or {})
    state: dict[str, Any] = {"check": None}

    def farm() -> dict[str, Any]:
        return _farm_info(kind, team, down, state["check"], {p.signature for p in plan.points})

    try:
        work = bool(plan.todo or plan.cut)
        ov = overlap_points(plan.lanes, OVERLAP_POINTS.get(size, 10)) if work and len(team) > 1 else []
        bar.total = bar_total(plan, settings) + len(team) * max(2, settings.rounds) * (len(ov) + REFERENCE_PER_ROUND)
        if ov:
            state["check"] = _overlap(plan, team, ov, settings, stop, log)
        elif len(team) == 1:
            team[0].state = "alone"
        active = [b for b in team if b.state in ("used", "alone")]
        stopped = _split(plan, active, settings, time_budget_s, stop, bar, log) if work and active else False
        progress.close()
        if work and not any(b.state in ("used", "alone") for b in team) and plan.remaining():
            raise BenchError(f"no board of kind {kind} could measure: "
                             + "; ".join(f"{b.name}: {b.state}, {b.why}" for b in team),
                             "see: edgeprune devices check; a rerun measures only what is missing")
        fit = fit_plan(plan, log)
    except KeyboardInterrupt as exc:
        progress.close()
        raise record_interrupted(plan, exc, log, farm()) from None
    except BenchError:
        progress.close()
        record_interrupted(plan, KeyboardInterrupt(), log, farm())  # the record of what was measured
        raise
    return finish_build(plan, fit, stopped, farm())


def _parallel(team: Sequence[_Board], fn: Callable[[_Board], None], stop: StopFlag) -> None:
    """``fn(board)`` on every board at once, one thread each. Stopped (a signal in this,
    the main thread): every board's run is stopped, each saves what it finished, then the
    stop goes on up."""
    with ThreadPoolExecutor(max_workers=len(team)) as pool:
        futures = [pool.submit(fn, b) for b in team]
        try:
            for f in futures:
                f.result()
        except BaseException as exc:
            stop.set(exc.signum if isinstance(exc, Interrupted) else 2)
            for f in futures:
                try:
                    f.result()
                except BaseException:  # the first error goes up; the others stopped because of it
                    pass
            raise


def _overlap(plan: BuildPlan, team: list[_Board], ov: list[SuitePoint], settings: ProfileSettings, stop: StopFlag,
             log: Log) -> OverlapCheck:
    """Every board measures the overlap points and the check compares them. A board
    flagged is measured once more with the others (a burst of load on the host or the
    board can shift one whole run), and only a board flagged both times is ``excluded``;
    the overlap points of the board closest to the others go into the table.
    Interrupted: those of the fastest board that finished them do."""
    rounds = max(2, settings.rounds)  # two rounds at least: their spread is the noise floor
    log(f"overlap: each of the {len(team)} boards measures the same {len(ov)} point(s) "
        f"({rounds} rounds), to compare them before the suite is split")
    got, check = _look(plan, team, ov, rounds, settings, stop)
    first = check
    if check.excluded or check.refused:
        for line in check.lines():
            log(line.replace("EXCLUDED", "flagged"))
        log(f"overlap: {', '.join(check.excluded)} flagged; measuring the overlap once more to confirm")
        got, check = _look(plan, [b for b in team if b.state != "failed"], ov, rounds, settings, stop)
        for name, v in check.boards.items():
            if v.state == "excluded" and name not in first.excluded:
                v.state, v.why = "agrees", f"flagged in the second look only ({v.why})"
            elif v.state == "excluded":
                v.why += "; in both looks"
        if check.refused and not first.refused:
            check.refused = ""
    for line in check.lines():
        log(line)
    if check.refused:
        raise BenchError(f"the boards disagree: {check.refused}",
                         "check the boards (devices check, their load and governors), or build one alone: --device NAME")
    usable = [b for b in team if b.state != "failed" and got[b.name]]
    for b in usable:
        v = check.boards.get(b.name)
        if v is not None and v.state == "excluded":
            b.state, b.why = v.state, v.why
    kept = [b for b in usable if b.state != "excluded"]
    ref = next((b for b in kept if b.name == check.reference_board), kept[0] if kept else None)
    if ref is not None:
        _save_overlap(plan, ref, got, ov)
        log(f"overlap: {len(kept)} of {len(team)} board(s) agree (noise {check.noise:.1%}, tolerance "
            f"±{check.tolerance:.1%}); the table takes the overlap points of '{ref.name}'")
    return check


def _look(plan: BuildPlan, team: list[_Board], ov: list[SuitePoint], rounds: int, settings: ProfileSettings,
          stop: StopFlag) -> tuple[dict[str, dict[str, "Timing"]], OverlapCheck]:
    """Every board of ``team`` measures the overlap points at once; (their timings by
    board, the check of them)."""
    got: dict[str, dict[str, "Timing"]] = {b.name: {} for b in team}

    def one(b: _Board) -> None:
        try:
            b.m.measure([p.job(plan.key.timing) for p in ov], rounds, settings.series(),
                        on_chunk=lambda t: (b.tap(t), got[b.name].update(t)), description="overlap points")
        except Interrupted:
            return
        except EdgepruneError as exc:
            b.state, b.why = "failed", str(exc)
            b.m.log(f"failed during the overlap and is left out: {exc}")

    try:
        _parallel(team, one, stop)
    except KeyboardInterrupt:
        done = [b for b in team if len(got[b.name]) == len(ov)]
        if done:
            _save_overlap(plan, min(done, key=lambda b: _ref_of(got[b.name]) or math.inf), got, ov)
        raise
    usable = [b.name for b in team if b.state != "failed" and got[b.name]]
    norm = {n: {s: t.ms / t.ref_ms for s, t in got[n].items() if t.ref_ms} for n in usable}
    raw = {n: {s: t.ms for s, t in got[n].items()} for n in usable}
    refs = {n: _ref_of(got[n]) for n in usable}
    for n in usable:
        if refs[n]:
            raw[n][REFERENCE_KEY] = refs[n]  # the reference layer is an overlap point of its own
    spreads = [LatencyEntry.from_rounds(t.rounds, t.runs).spread for n in usable for t in got[n].values()]
    return got, compare_boards(norm, raw, refs, spreads)


def _ref_of(timings: dict[str, "Timing"]) -> float | None:
    """A board's reference layer (raw ms) over the bundles of these timings."""
    refs = [t.ref_ms for t in timings.values() if t.ref_ms]
    return statistics.median(refs) if refs else None


def _save_overlap(plan: BuildPlan, board: _Board, got: dict[str, dict[str, "Timing"]], ov: list[SuitePoint]) -> None:
    """``board``'s overlap points that the table does not have yet, saved (as its own)."""
    missing = {p.signature: got[board.name][p.signature] for p in ov
               if p.signature in got[board.name] and p.signature not in plan.entries}
    if missing:
        plan.rec.on_chunk("new", board.m)(missing)
        board.mine += [p for p in ov if p.signature in missing]
    plan.todo = [p for p in plan.todo if p.signature not in plan.entries]


def _split(plan: BuildPlan, team: list[_Board], settings: ProfileSettings, time_budget_s: float | None,
           stop: StopFlag, bar: OneBar, log: Log) -> bool:
    """The points left, measured by whichever board is free; True if the time budget
    stopped it with points left."""
    items = [(p, "complete", r) for r, batch in owed_batches(plan, settings) for p in batch]
    items += [(p, "new", settings.rounds) for p in plan.todo]
    queue = _Queue(items, plan.est)
    total, lock = len(items), threading.Lock()
    t0, counts = time.perf_counter(), {"done": 0, "est": 0.0}
    series = settings.series()
    if not items:
        return False
    log(f"splitting {total} point(s) over {len(team)} board(s): {', '.join(b.name for b in team)}")

    def left() -> float:
        return math.inf if time_budget_s is None else time_budget_s - (time.perf_counter() - plan.t0)

    def working() -> int:
        return sum(1 for b in team if b.state != "failed")

    def run(b: _Board, mode: str, rounds: int, batch: list[SuitePoint], what: str) -> None:
        s0 = time.perf_counter()
        errs = plan.rec.measure([p.job(plan.key.timing) for p in batch], mode, rounds, series, what,
                                measurer=b.m, tap=b.tap)
        estimated = sum(plan.est(p, rounds) for p in batch)
        b.account(time.perf_counter() - s0, estimated)
        with lock:
            for k, e in errs.items():
                log(f"could not measure {k} on '{b.name}': {e}")
            plan.failed.update(errs)
            if mode != "remeasure":
                b.mine += [p for p in batch if p.signature in plan.rec.measured]
                counts["done"] += len(batch)
                counts["est"] += estimated
                el = time.perf_counter() - t0
                rest = queue.cost() * el / counts["est"] if counts["est"] else 0.0
                bar.status(0, 0, counts["done"], total)
                per = ", ".join(f"{x.name} {len(x.mine)}" for x in team)
                log(f"  device model: {counts['done']}/{total} point(s) on {working()} board(s) in "
                    f"{format_duration(el)} ({per})" + (f", ~{format_duration(rest)} left" if queue.items else ""))

    def work(b: _Board) -> None:
        batch: list[SuitePoint] = []
        mode, rounds = "new", settings.rounds
        try:
            while not stop.is_set():
                nxt = queue.take(b, left(), working())
                if nxt is None:
                    break
                mode, rounds, batch = nxt
                run(b, mode, rounds, batch, "points cut short" if mode == "complete" else "suite points")
                batch = []
            noisy = noisy_points(b.mine, plan.entries)
            if noisy and not stop.is_set() and sum(plan.est(p, REMEASURE_ROUNDS) for p in noisy) * b.scale <= left():
                b.m.log(f"re-measuring {len(noisy)} noisy point(s)")
                run(b, "remeasure", REMEASURE_ROUNDS, noisy, "noisy points")
        except Interrupted:
            return
        except EdgepruneError as exc:
            b.state, b.why = "failed", str(exc)
            back = [(p, mode, rounds) for p in batch if p.signature not in plan.rec.measured]
            queue.give_back(back)
            log(f"board '{b.name}' failed and is left out ({len(back)} of its point(s) go to the others): {exc}")

    _parallel(team, work, stop)
    return queue.budget_hit and bool(queue.items)


def _farm_info(kind: str, team: list[_Board], down: dict[str, str], check: OverlapCheck | None,
               suite: set[str]) -> dict[str, Any]:
    """The sidecar's ``farm``: the boards of this build (``measured_now``: the suite points
    each measured; the table's count over every build is the sidecar writer's) and the
    overlap check."""
    medians = {b.name: statistics.median(b.refs) for b in team if b.refs}
    base = statistics.median_low(list(medians.values())) if medians else None
    boards: dict[str, dict[str, Any]] = {}
    for b in team:
        d: dict[str, Any] = {"state": b.state, "measured_now": sum(1 for p in b.mine if p.signature in suite)}
        if b.why:
            d["why"] = b.why
        if b.name in medians:
            d["ref_ms"] = round(medians[b.name], 4)
            d["speed"] = round(medians[b.name] / base, 3) if base else None
        boards[b.name] = d
    for n, why in down.items():
        boards[n] = {"state": "unreachable", "why": why, "measured_now": 0}
    return {"kind": kind, "boards": boards, "check": check.to_dict() if check is not None else {}}
