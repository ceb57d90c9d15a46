"""The results store on a real PostgreSQL server (tests/pg_fixture.py): several runners
writing one history at once, moving a SQLite history in, and what a user sees when the
server cannot be reached. The store's own suite runs on both engines in test_results.py.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeprune.cli import cli
from edgeprune.errors import ResultsError
from edgeprune.results.records import VerdictRecord
from edgeprune.results.schema import SCHEMA_VERSION
from edgeprune.results.store import ResultsStore
from pg_fixture import PW_PASSWORD, PW_USER
from results_helpers import FAST_BENCH, conv_onnx, measurement

REPO = Path(__file__).resolve().parents[1]


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


# ---------------------------------------------------------------- several runners at once
def _nightly_writer(url: str, tag: int, n: int, go) -> None:
    """What a nightly runner does to the store: open it (the first open of a new database
    creates the schema), begin a run, one measurement and one verdict per cell, finish."""
    go.wait(60)
    rng = np.random.default_rng(tag)
    with ResultsStore(url) as st:
        rid = st.begin_run("nightly", label=f"shard-{tag}")
        for i in range(n):
            m = measurement(rng, model=f"m{tag}-{i}")
            st.add_measurement(rid, m)
            st.add_verdict(rid, VerdictRecord(cell=m.cell, kind="latency", verdict="SAME", measurement_id=m.id))
        st.finish_run(rid, "complete")


def test_two_nightly_writers_into_one_new_database_lose_and_duplicate_nothing(pg_url):
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    procs = [ctx.Process(target=_nightly_writer, args=(pg_url, t, 80, go)) for t in (1, 2)]
    for p in procs:
        p.start()
    go.set()  # both open the empty database at once: the schema is created once
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with ResultsStore(pg_url) as st:
        assert [v for (v,) in st.query("SELECT version FROM schema_version ORDER BY version")] == \
            list(range(1, SCHEMA_VERSION + 1))
        runs = st.runs()
        assert sorted(r.label for r in runs) == ["shard-1", "shard-2"] and {r.status for r in runs} == {"complete"}
        ms = st.measurements()
        assert len(ms) == 160 and len({m.id for m in ms}) == 160
        for r in runs:
            mine = st.measurements(run_id=r.id)
            tag = r.label.split("-")[1]
            assert sorted(m.model for m in mine) == sorted(f"m{tag}-{i}" for i in range(80))
            vs = st.verdicts(run_id=r.id)
            assert sorted(v.measurement_id for v in vs) == sorted(m.id for m in mine)  # each verdict on its own row


def test_two_nightly_shards_from_two_runners_make_one_history_and_one_report(pg_url, tmp_path):
    models = [str(conv_onnx(tmp_path / f"m{i}.onnx", channels=8 + 8 * i)) for i in range(2)]
    matrix = tmp_path / "n.yaml"
    matrix.write_text(json.dumps({"name": "lab", "matrix": {"models": models, "backends": ["onnxruntime"]},
                                  "bench": FAST_BENCH}))
    env = dict(os.environ, EDGEPRUNE_CACHE=str(tmp_path / "cache"), EDGEPRUNE_DB=pg_url)
    procs = [subprocess.Popen([sys.executable, "-m", "edgeprune.cli", "nightly", "--matrix", str(matrix),
                               "--shard", f"{i}/2", "--work-dir", str(tmp_path / f"w{i}"),
                               "--report-dir", str(tmp_path / f"rep{i}")],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in (1, 2)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    with ResultsStore(pg_url) as st:
        runs = st.runs(kind="nightly")
        assert len(runs) == 2 and {r.status for r in runs} == {"complete"}
        assert sorted(m.model for m in st.measurements()) == sorted(models)
    # each runner keeps its artifacts on its own disk, under the cache, named after the database
    kept = list((tmp_path / "cache" / "results").glob("127.0.0.1-*-t_*.artifacts/*/*/job.json"))
    assert len(kept) == 2
    res = run("results", "list", "--db", pg_url, "--json")
    assert res.exit_code == 0 and len(json.loads(res.stdout)) == 2
    res = run("report", "--db", pg_url, "--format", "json")  # one report for the lab: both shards' cells
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert len(doc["runs"]) == 2 and sorted(c["model"] for c in doc["cells"]) == sorted(models)


# ---------------------------------------------------------------- moving a SQLite history in
def _history(path: Path, nights: int, seed: int, model: str = "zoo:digits-cnn") -> None:
    """``nights`` nightly runs, each judged against the ones before (verdicts that point at
    their measurement and at baseline measurements of earlier runs)."""
    from edgeprune.results.evaluate import Policy, judge

    rng = np.random.default_rng(seed)
    with ResultsStore(path) as st:
        for _ in range(nights):
            rid = st.begin_run("nightly", label=model)
            m = measurement(rng, model=model)
            st.add_measurement(rid, m)
            for v in judge(st, rid, [m], Policy(min_baseline_runs=1)).verdicts:
                st.add_verdict(rid, v)
            st.finish_run(rid, "complete")


def _dump(url_or_path) -> list[tuple]:
    """Every run with its measurements and verdicts, links written as positions (ids aside)."""
    with ResultsStore(url_or_path) as st:
        out = []
        for r in sorted(st.runs(), key=lambda r: r.id):
            ms = st.measurements(run_id=r.id)
            pos = {m.id: (r.started, i) for i, m in enumerate(ms)}
            vs = [(v.kind, v.verdict, v.measurement_id in pos, len(v.baseline_ids)) for v in st.verdicts(run_id=r.id)]
            out.append((r.kind, r.status, r.started, r.label, tuple((m.model, tuple(m.times_ms)) for m in ms), tuple(vs)))
        return out


def test_migrate_moves_a_sqlite_history_in_with_its_ids_and_again_copies_nothing(pg_url, tmp_path):
    src = tmp_path / "results.sqlite"
    _history(src, 4, seed=1)
    res = run("results", "migrate", "--from", str(src), "--to", pg_url)
    assert res.exit_code == 0, res.output
    assert "copied 4 run(s), 4 measurement(s) and " in res.output and "every run kept its id" in res.output
    with ResultsStore(src) as a, ResultsStore(pg_url) as b:
        assert [r.to_dict() for r in a.runs()] == [r.to_dict() for r in b.runs()]  # ids, times, notes, env
        assert [m.to_dict() for m in a.measurements()] == [m.to_dict() for m in b.measurements()]
        assert [v.to_dict() for v in a.verdicts()] == [v.to_dict() for v in b.verdicts()]
        assert any(v.baseline_ids for v in b.verdicts())
        rid = b.begin_run("bench")  # the identity continues after the copied ids
        assert rid == max(r.id for r in a.runs()) + 1
    again = run("results", "migrate", "--from", str(src), "--to", pg_url, "--json")
    assert again.exit_code == 0 and json.loads(again.stdout) | {"source": "", "target": ""} == {
        "source": "", "target": "", "runs": 0, "measurements": 0, "verdicts": 0, "already_there": 4,
        "renumbered": {}, "still_running": []}
    res = run("report", "--db", pg_url, "--format", "md")
    assert res.exit_code == 0 and "zoo:digits-cnn" in res.output


def test_migrate_merges_a_second_runner_file_with_new_ids_and_links_that_follow(pg_url, tmp_path):
    first, second = tmp_path / "runner-a.sqlite", tmp_path / "runner-b.sqlite"
    _history(first, 3, seed=2, model="zoo:digits-cnn")
    _history(second, 3, seed=3, model="zoo:mlp-recsys")  # ids 1..3 again
    with ResultsStore(second) as st:
        live = st.begin_run("nightly", label="still going")  # this process is alive: it is left out
    assert run("results", "migrate", "--from", str(first), "--to", pg_url).exit_code == 0
    res = run("results", "migrate", "--from", str(second), "--to", pg_url, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (out["runs"], out["measurements"], out["already_there"]) == (3, 3, 0)
    assert out["renumbered"] == {"1": 4, "2": 5, "3": 6} and out["still_running"][0]["run"] == live
    assert _dump(pg_url) == sorted(_dump(first) + [d for d in _dump(second) if d[3] != "still going"],
                                   key=lambda d: (d[3] != "zoo:digits-cnn", d[2]))
    with ResultsStore(pg_url) as st:
        for v in st.verdicts():
            assert st.measurement(v.measurement_id).run_id == v.run_id
            assert all(st.measurement(b).model == st.measurement(v.measurement_id).model for b in v.baseline_ids)
    for src in (first, second):  # both again: nothing new
        res = run("results", "migrate", "--from", str(src), "--to", pg_url, "--json")
        assert json.loads(res.stdout)["runs"] == 0
    res = run("results", "migrate", "--from", pg_url, "--to", str(tmp_path / "backup.sqlite"))  # and back out
    assert res.exit_code == 0 and "copied 6 run(s)" in res.output
    assert run("results", "migrate", "--from", pg_url, "--to", pg_url).exit_code == 10


# ---------------------------------------------------------------- when the server cannot be used
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once it is closed


def test_an_unreachable_server_is_one_line_with_the_password_hidden_before_any_work(tmp_path):
    url = f"postgresql://lab:Very-Secret-1@127.0.0.1:{_closed_port()}/results"
    for args in (["results", "list", "--db", url], ["report", "--db", url],
                 ["nightly", "--matrix", str(REPO / "nightly.yaml"), "--db", url, "--report-dir", str(tmp_path / "r")],
                 ["compile", "--model", "zoo:digits-cnn", "--target", "host", "--out", str(tmp_path / "o"),
                  "--db", url]):
        res = run(*args)
        assert res.exit_code == (2 if args[0] == "nightly" else 10), (args, res.output)  # nightly: 0/1/2 only
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert "Very-Secret-1" not in res.output and "Traceback" not in res.output
        assert "cannot connect to the results database postgresql://lab:***@127.0.0.1:" in lines[0]
        assert "refused" in lines[0].lower() and "pg_isready" in res.output  # the hint
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()  # refused before anything ran


def test_a_wrong_password_is_refused_and_never_printed(pg_server):
    name = pg_server.new_database("pw").rsplit("/", 1)[1]
    pg_server.admin(f'ALTER DATABASE "{name}" OWNER TO {PW_USER}')
    wrong = pg_server.url(name, PW_USER, "not-the-Password")
    res = run("results", "list", "--db", wrong)
    assert res.exit_code == 10 and "password authentication failed" in res.output
    assert "not-the-Password" not in res.output and f"{PW_USER}:***@" in res.output and "~/.pgpass" in res.output
    right = pg_server.url(name, PW_USER, PW_PASSWORD)
    with ResultsStore(right) as st:  # the owner creates the schema
        assert st.schema_version() == SCHEMA_VERSION and PW_PASSWORD not in str(st.path)
    res = run("results", "list", "--db", right)
    assert res.exit_code == 0 and PW_PASSWORD not in res.output


def test_a_missing_database_says_how_to_create_it(pg_server):
    res = run("results", "list", "--db", pg_server.url("no_such_db"))
    assert res.exit_code == 10 and 'database "no_such_db" does not exist' in res.output
    assert "createdb -h 127.0.0.1" in res.output


def test_a_connection_lost_mid_run_is_a_results_error_not_a_traceback(pg_server, pg_url):
    st = ResultsStore(pg_url)
    rid = st.begin_run("nightly")
    st.add_measurement(rid, measurement(np.random.default_rng(0)))
    name = pg_url.rsplit("/", 1)[1]
    pg_server.admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
                    " AND pid <> pg_backend_pid()")
    with pytest.raises(ResultsError) as exc:
        st.add_measurement(rid, measurement(np.random.default_rng(1)))
    assert str(exc.value).startswith("results database postgresql://postgres@127.0.0.1:")
    st.close()
    with ResultsStore(pg_url) as again:  # what was committed before is there
        assert len(again.measurements(run_id=rid)) == 1
