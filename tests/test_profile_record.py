"""`edgeprune profile` is a recorded run, `--db none` means one thing everywhere, and an
interrupted profile keeps every point it measured.

Real profiles of a tiny CNN with ONNX Runtime through the on-device runner, a real
SQLite results database, a real SIGINT to a real `edgeprune profile` subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeprune.cli import cli

TINY = "tests.lut_models:tiny_cnn"
#: a small profile: coarse grid, 2 rounds (so a point can be cut between its rounds),
#: no steady gate (nothing waits for a quiet host), the model end to end at full width only
QUICK = ["--backend", "onnxruntime", "--density", "coarse", "--rounds", "2", "--calibration-variants", "0",
         "--no-steady-gate"]


def profile_args(cache: Path, *extra: str) -> list[str]:
    return ["profile", "--model", TINY, *QUICK, "--cache-dir", str(cache), *extra]


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgeprune.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=Path(__file__).resolve().parents[1])


def finished_lines(tmp: Path) -> int:
    """Job lines the runner has written so far, over the profile's bundles in ``tmp``."""
    n = 0
    for p in tmp.glob("lut-bundle-*/results.jsonl"):
        try:
            n += p.read_bytes().count(b"\n")
        except OSError:  # the bundle was just removed
            continue
    return n


def runs(db: Path) -> list[sqlite3.Row]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return con.execute("SELECT * FROM runs ORDER BY id").fetchall()
    finally:
        con.close()


def table_entries(cache: Path) -> dict[str, dict]:
    (path,) = cache.rglob("onnxruntime-*.json")
    return json.loads(path.read_text())["entries"]


def test_an_interrupted_profile_keeps_its_points_and_a_rerun_measures_only_the_rest(tmp_path):
    cache, db, tmp = tmp_path / "lut", tmp_path / "r.sqlite", tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "EDGEPRUNE_DB": str(db)}
    proc = start(profile_args(cache), env)
    # the first bundle holds every planned point (2 rounds of ~25 jobs + the reference):
    # stop it in its second round, so some points have both rounds and some only one
    t0 = time.monotonic()
    while finished_lines(tmp) < 36:
        if proc.poll() is not None:
            pytest.fail(f"the profile ended before it was stopped: {proc.stderr.read()}")
        if time.monotonic() - t0 > 120:
            proc.kill()
            pytest.fail("no point measured within 120 s")
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "kept in the latency table; a rerun measures only the rest" in stderr, stderr

    entries = table_entries(cache)  # the interrupted bundle's series are in the table file the rerun reads
    short = [k for k, e in entries.items() if e.get("partial")]
    assert len(entries) >= 10, entries
    assert all(len(e["rounds"]) == 1 and e["partial"] == 1 for k, e in entries.items() if k in short)
    assert f"interrupted while measuring layer points: {len(entries)} point(s) measured by this run kept" in stderr
    (run,) = runs(db)
    assert (run["kind"], run["status"]) == ("profile", "incomplete")
    prof = json.loads(run["env_json"])["profile"]
    assert prof["points_kept"] == len(entries) and prof["points_cut_short"] == len(short)
    assert prof["signal"] == "SIGINT" and prof["table"].endswith(".json")
    assert f"{len(entries)} point(s) measured by this run kept" in run["note"]

    # the rerun completes the points cut short, reuses the others and measures only what is missing
    res = subprocess.run([sys.executable, "-m", "edgeprune.cli", *profile_args(cache, "--json")], env=env,
                         capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stderr
    again = json.loads(res.stdout)["profile"]
    final = table_entries(cache)
    assert not any(e.get("partial") for e in final.values())
    assert again["points_completed"] == len(short)
    for k in short:  # completed: the kept round plus the one it owed (more if it was noisy)
        assert final[k]["rounds"][:1] == entries[k]["rounds"] and len(final[k]["rounds"]) >= 2
    if short:
        assert f"completing {len(short)} point(s) an interrupted profile timed in only some rounds" in res.stderr
    # a kept complete point is reused as it is, unless its rounds disagree (then it gets more rounds)
    whole = [k for k in entries if k not in short]
    unchanged = [k for k in whole if final[k]["rounds"] == entries[k]["rounds"]]
    assert all(final[k].get("remeasured") for k in whole if k not in unchanged)
    assert again["points_reused"] == len(unchanged) > 0
    assert again["points_measured"] == again["points_used"] - again["points_reused"] < again["points_used"]
    first, second = runs(db)
    assert (second["kind"], second["status"]) == ("profile", "complete")
    assert json.loads(second["env_json"])["profile"]["points_reused"] == again["points_reused"]


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    """One recorded profile of the tiny CNN: (its cache folder, its results database)."""
    root = tmp_path_factory.mktemp("profiled")
    db = root / "r.sqlite"
    res = CliRunner().invoke(cli, profile_args(root / "lut", "--db", str(db)), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return root / "lut", db


def test_a_profile_is_a_run_in_the_results_database(profiled):
    cache, db = profiled
    (run,) = runs(db)[:1]
    assert (run["kind"], run["status"], run["label"]) == ("profile", "complete", TINY)
    assert run["finished"] and run["pid"] == os.getpid() and run["note"] is None
    prof = json.loads(run["env_json"])["profile"]
    assert prof["model"] == TINY and prof["backend"] == "onnxruntime" and prof["target"] == "host"
    assert prof["points_measured"] == prof["points_used"] > 0 and prof["points_reused"] == 0
    assert Path(prof["table"]).is_file() and prof["timing"] == "kernel" and prof["model_measured"]

    listed = CliRunner().invoke(cli, ["results", "list", "--db", str(db)])
    assert listed.exit_code == 0, listed.output
    assert "profile" in listed.output and f"{prof['points_measured']} pts" in listed.output
    as_json = json.loads(CliRunner().invoke(cli, ["results", "list", "--db", str(db), "--json"]).output)
    assert as_json[0]["kind"] == "profile" and as_json[0]["profile"]["points_used"] == prof["points_used"]
    shown = CliRunner().invoke(cli, ["results", "show", str(run["id"]), "--db", str(db)])
    assert shown.exit_code == 0, shown.output
    assert f"table file: {prof['table']}" in shown.output
    assert f"points: {prof['points_used']} used by the model, {prof['points_measured']} measured now, 0 reused" \
        in shown.output
    assert "Measurements of run" not in shown.output  # no empty result table for a profile

    # a second profile measures nothing and says so in its run
    res = CliRunner().invoke(cli, profile_args(cache, "--db", str(db)), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    again = json.loads(runs(db)[-1]["env_json"])["profile"]
    assert again["points_measured"] == 0 and again["points_reused"] == prof["points_used"]
    # a report without --run is about a compile/bench/nightly run, never a profile's empty cells
    from edgeprune.cli.report_cmd import default_run
    from edgeprune.results.store import ResultsStore

    with ResultsStore(db) as store:
        assert default_run(store) == runs(db)[-1]["id"]  # only profiles: the newest one


def test_a_profile_that_fails_is_recorded_failed_with_why(profiled, tmp_path):
    cache, _ = profiled
    (table,) = cache.rglob("onnxruntime-*.json")
    d = json.loads(table.read_text())
    d["key"]["backend_version"] = "0.0.1"
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps(d))
    db = tmp_path / "r.sqlite"
    res = CliRunner().invoke(cli, profile_args(cache, "--lut", str(stale), "--db", str(db)))
    assert res.exit_code == 6, res.output
    (run,) = runs(db)
    assert (run["kind"], run["status"]) == ("profile", "failed")
    assert "does not match this run" in run["note"] and "0.0.1" in run["note"]
    shown = CliRunner().invoke(cli, ["results", "show", str(run["id"]), "--db", str(db)])
    assert shown.exit_code == 0 and "profile, failed" in shown.output and "table file: ?" not in shown.output


def test_db_none_records_nothing_and_reading_commands_refuse_it(profiled, tmp_path, monkeypatch):
    cache, db = profiled
    default_db = Path(os.environ["EDGEPRUNE_DB"])  # the conftest's per-test default database
    before = len(runs(db))
    res = CliRunner().invoke(cli, profile_args(cache, "--db", "none"), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "stored as run" not in res.output and not default_db.exists() and len(runs(db)) == before
    res = CliRunner().invoke(cli, ["compile", "--model", TINY, "--backend", "onnxruntime", "--out",
                                   str(tmp_path / "c"), "--db", "off", "--min-runs", "3", "--min-time", "0.01",
                                   "--warmup", "0", "--rounds", "1"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "c" / "summary.json").is_file() and not default_db.exists()

    for args in (["report", "--db", "none"], ["report", "--db", "off", "--format", "md"],
                 ["results", "list", "--db", "none"], ["results", "show", "1", "--db", "none"]):
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 10, (args, res.output)
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and "turns recording off, so there is no results database to read" in lines[0]
        assert "pass --db PATH" in lines[0] and "Traceback" not in res.output
    monkeypatch.setenv("EDGEPRUNE_DB", "none")  # the same switch, from the environment
    res = CliRunner().invoke(cli, ["results", "list"])
    assert res.exit_code == 10 and "$EDGEPRUNE_DB=none turns recording off" in res.output
    res = CliRunner().invoke(cli, ["report", "--db", str(tmp_path / "missing.sqlite")])
    assert res.exit_code == 10 and "does not exist" in res.output
