"""The steady gate: time a job's series only while the device is in its steady state.

``gate`` (a job field, default None) times the job inside the gate: a short probe
(numpy matrix products on all cores) before and after the series says whether the
device was in its steady state; if not, the runner waits (up to ``max_wait_s``) and
times the series again (up to ``retries``), then keeps it marked ``unsteady``. The
probe's fast level is calibrated once per bundle (BUNDLE/gate.json) or given by the
host (``fast_ms``). ``env.timing.gate`` records the state, the probes and the time
waited. See :class:`SteadyGate` for why.
"""

from __future__ import annotations

import json
import os
import time

from .timing import time_runs

#: the steady gate's probe: small matrix products on numpy's BLAS threads. Each product is
#: one fork/join across the cores, the kind of synchronisation a shared VM's slow state
#: makes dearer (benchmarks/host_noise.py), and it needs nothing but numpy. Workers run
#: with OPENBLAS_THREAD_TIMEOUT=4 (BLAS_ENV): BLAS threads then sleep right after each
#: product, so every product wakes the other core (the cost the slow state raises), and
#: no BLAS thread is left spinning when the series starts. Measured on this VM: with
#: OpenBLAS's default spin a conv timed right after the probe ran 0.57 ms instead of 0.30.
GATE_PROBE = {"n": 128, "calls": 24}
BLAS_ENV = {"OPENBLAS_THREAD_TIMEOUT": "4"}
GATE_DEFAULTS = {"tol": 0.25, "max_wait_s": 20.0, "calibrate_s": 6.0, "retries": 3, "settle_s": 0.0,
                 "reuse_s": 1.0, "budget": 0.3}
GATE_LOWS = 5  # the fast level is the median of the lowest probes seen, not one lucky probe
GATE_FILE = "gate.json"
#: per-process caches: one gate per bundle (its level, lows and budget span the worker's
#: jobs) and the probe's input matrices (made once, so every probe does the same work)
_GATES: dict = {}
_PROBE_INPUTS: dict = {}


def gate_probe_ms(np, n: int | None = None, calls: int | None = None) -> float:
    """Median ms of ``calls`` float32 n x n matrix products (after one warm-up product)."""
    n = n or GATE_PROBE["n"]
    calls = calls or GATE_PROBE["calls"]
    if n not in _PROBE_INPUTS:
        rng = np.random.default_rng(0)
        _PROBE_INPUTS[n] = (rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32))
    a, b = _PROBE_INPUTS[n]
    np.dot(a, b)
    ts = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        np.dot(a, b)
        ts.append(time.perf_counter_ns() - t0)
    ts.sort()
    return ts[len(ts) // 2] / 1e6


class SteadyGate(object):
    """Waits for the device's steady (fast) state before a job is timed.

    Why: on a shared or throttling device, multi-threaded inference switches between a
    fast state and slow episodes of seconds (this 2-core VM: ~28 % of the time, 1.2-1.7x
    slower, benchmarks/host_noise.py). Timing through an episode records the episode, and
    no estimator on the host can undo it for a point whose every round fell in one. The
    gate times a probe before and after each series; a series is kept when both say
    steady (within ``tol`` of the device's fast level: the median of the GATE_LOWS lowest
    probes seen in this bundle, so one lucky probe does not set it),
    otherwise it waits (probing every 0.25 s; a slow probe is confirmed by a second one)
    and times the series again, up to
    ``max_wait_s`` per job, and then keeps the series marked ``unsteady``. Waiting and
    re-timing never take more than ``budget`` x the time since the gate started (plus
    one ``max_wait_s``): a device that is never steady, or a level set by a fluke, costs
    at most that much, and its series are then all marked unsteady. The probe's
    fast level is calibrated once per bundle over ``calibrate_s`` (longer than a typical
    episode) and kept in BUNDLE/gate.json for the next worker process.
    """

    def __init__(self, np, bundle: str, cfg: dict | None):
        self.np = np
        self.cfg = dict(GATE_DEFAULTS)
        self.cfg.update(cfg or {})
        self.path = os.path.join(bundle, GATE_FILE)
        self.level = None
        self.lows = []
        self.calibrated_s = 0.0
        self.last = (0.0, None)  # (time, ms) of the last probe
        self.t0 = time.time()
        self.spent = 0.0  # seconds waited or spent on series that were thrown away
        try:
            with open(self.path) as f:
                saved = json.load(f)
            self.level = float(saved["fast_ms"])
            self.lows = sorted(float(v) for v in saved.get("lows", []))[:GATE_LOWS]
        except (OSError, ValueError, KeyError, TypeError):
            if self.cfg.get("fast_ms"):  # the host's hint: this device's level from an earlier bundle
                self.level = float(self.cfg["fast_ms"])
                self.save()
            else:
                self.calibrate()

    def probe(self) -> float:
        p = gate_probe_ms(self.np)
        self.last = (time.time(), p)
        if len(self.lows) < GATE_LOWS or p < self.lows[-1]:
            self.lows = sorted(self.lows + [p])[:GATE_LOWS]
            full = len(self.lows) >= GATE_LOWS
            level = self.lows[len(self.lows) // 2] if full else self.lows[0]
            self.level = level if self.level is None or full else min(self.level, level)
            self.save()
        return p

    def confirmed(self) -> float:
        """A probe; one that says unsteady is repeated at once and the lower one counts: a
        single probe is ~1 ms and sometimes slow on its own (measured here: ~1 in 6 probes
        taken in the fast state came out > 1.25x), and each false alarm would cost a wait
        and a re-timed series."""
        p = self.probe()
        if not self.steady(p):
            p = min(p, self.probe())
        return p

    def recent_steady(self) -> float | None:
        """The last probe, if it said steady less than ``reuse_s`` ago (it then serves as
        this series' before-probe: back-to-back short jobs need not probe twice)."""
        at, p = self.last
        if p is not None and time.time() - at < float(self.cfg["reuse_s"]) and self.steady(p):
            return p
        return None

    def save(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"fast_ms": self.level, "lows": self.lows, "probe": GATE_PROBE}, f)
        os.replace(tmp, self.path)

    def calibrate(self) -> None:
        t0 = time.time()
        while True:
            self.probe()
            if time.time() - t0 >= float(self.cfg["calibrate_s"]) and len(self.lows) >= GATE_LOWS:
                break
            time.sleep(0.25)
        self.calibrated_s = time.time() - t0

    def steady(self, p: float) -> bool:
        return p <= self.level * (1.0 + float(self.cfg["tol"]))

    def over_budget(self) -> bool:
        return self.spent > float(self.cfg["budget"]) * (time.time() - self.t0) + float(self.cfg["max_wait_s"])

    def wait(self, deadline: float) -> tuple[bool, float]:
        """Probe until steady, ``deadline`` or the budget; (steady, last probe ms)."""
        t0 = time.time()
        try:
            while True:
                p = self.confirmed()
                if self.steady(p) or time.time() >= deadline or self.over_budget():
                    return self.steady(p), p
                time.sleep(0.25)
        finally:
            self.spent += time.time() - t0

    def settle(self) -> None:
        # 0 by default: workers run with BLAS_ENV, so no BLAS thread spins after the probe.
        # ``--in-process`` runs have OpenBLAS's default spin (numpy is already loaded):
        # give them settle_s ~0.12 s
        time.sleep(float(self.cfg["settle_s"]))


def steady_gate(np, bundle: str, cfg: dict | None) -> SteadyGate:
    """This process's gate for ``bundle`` (made, and calibrated, on first use)."""
    if bundle not in _GATES:
        _GATES[bundle] = SteadyGate(np, bundle, cfg)
    return _GATES[bundle]


def gated_time_runs(np, run, job: dict, bundle: str) -> tuple[list[float], dict]:
    """:func:`~.timing.time_runs` inside the steady gate (see :class:`SteadyGate`)."""
    gate = steady_gate(np, bundle, job.get("gate"))
    t_start = time.time()
    spent0 = gate.spent
    deadline = t_start + float(gate.cfg["max_wait_s"])
    retries = 0
    while True:
        before = gate.recent_steady()
        before_ok = before is not None
        if not before_ok:
            before_ok, before = gate.wait(deadline)
            gate.settle()
        times, info = time_runs(run, job)
        after = gate.confirmed()
        steady = before_ok and gate.steady(after)
        if steady or retries >= int(gate.cfg["retries"]) or time.time() >= deadline or gate.over_budget():
            break
        gate.spent += info["measure_s"]  # this series is thrown away
        retries += 1
    info["gate"] = {"state": "steady" if steady else "unsteady", "probe_ms": [round(before, 5), round(after, 5)],
                    "fast_ms": round(gate.level, 5), "retries": retries,
                    "wait_s": round(gate.spent - spent0, 3)}  # waiting + series thrown away
    if gate.calibrated_s:
        info["gate"]["calibrated_s"] = round(gate.calibrated_s, 2)
        gate.calibrated_s = 0.0
    return times, info
