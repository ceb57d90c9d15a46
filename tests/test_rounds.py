"""Interleaved rounds: artifacts are timed in turns, results fold back into one per artifact."""

from __future__ import annotations

from edgeprune.bench.bundle import BenchJob, JobResult
from edgeprune.bench.rounds import decision_ms, expand, merge, rounds_faster


def job(i: str) -> BenchJob:
    return BenchJob(id=i, backend="onnxruntime", artifact=f"{i}.onnx", inputs="in.npz", expected="out.npz",
                    eval="eval.npz", min_runs=50, min_time_s=1.5, warmup=10)


def test_rounds_rotate_and_only_the_first_verifies():
    jobs = expand([job("a"), job("b"), job("c")], 3)
    assert [j.id for j in jobs] == ["a", "b", "c", "b#r2", "c#r2", "a#r2", "c#r3", "a#r3", "b#r3"]
    first, later = jobs[0], jobs[3]
    assert first.expected == "out.npz" and first.eval == "eval.npz"
    assert later.expected is None and later.eval is None
    assert all(j.min_runs == 17 and abs(j.min_time_s - 0.5) < 1e-12 for j in jobs)


def test_one_job_or_one_round_is_left_alone():
    assert [j.id for j in expand([job("a")], 5)] == ["a"]
    assert expand([job("a"), job("b")], 1) == [job("a"), job("b")]


def test_merge_keeps_first_round_checks_and_every_round_time():
    res = {
        "a": JobResult(id="a", ok=True, times_ms=[1.0, 1.2], verified=True, accuracy=99.0),
        "a#r2": JobResult(id="a#r2", ok=True, times_ms=[2.0, 2.0]),
        "a#r3": JobResult(id="a#r3", ok=False, error="killed"),
        "b": JobResult(id="b", ok=False, error="cannot load"),
        "b#r2": JobResult(id="b#r2", ok=True, times_ms=[0.5]),
    }
    merged, medians = merge(res)
    assert merged["a"].times_ms == [1.0, 1.2, 2.0, 2.0] and merged["a"].verified is True
    assert medians["a"] == [1.1, 2.0]  # the failed third round is left out, not fatal
    assert merged["b"].ok is False and merged["b"].error == "cannot load"  # a failed first round fails the job


def test_decisions_use_the_fast_state_of_the_round_medians():
    assert decision_ms([1.0, 5.0, 1.2], 9.9) == 1.0  # slow rounds (> 10 % above the fastest) are left out
    assert decision_ms([1.0, 1.05, 1.08, 1.5], 9.9) == 1.05
    assert decision_ms([], 9.9) == 9.9
    assert rounds_faster([1.0, 2.0, 1.0], [1.5, 1.5, 1.5]) == (2, 3)
