"""The results database, recording real runs, and the reports rendered from it.

The store's tests take ``results_db`` (tests/pg_fixture.py) and run twice: on a SQLite
file and on a database of a real PostgreSQL server. PostgreSQL-only behaviour (several
runners at once, migration, connection errors) is in tests/test_results_pg.py.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sqlite3
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeprune.cli import cli
from edgeprune.results import fingerprint
from edgeprune.results.evaluate import Policy, judge
from edgeprune.results.records import Measurement
from edgeprune.results.report import gather, pareto_front, render, write_reports
from edgeprune.results.schema import SCHEMA_VERSION
from edgeprune.results.store import ResultsError, ResultsStore, git_revision, parse_since
from results_helpers import conv_onnx, measurement


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


# ---------------------------------------------------------------- store
def test_measurements_round_trip_with_every_time(results_db):
    rng = np.random.default_rng(0)
    with ResultsStore(results_db) as st:
        rid = st.begin_run("bench", label="x")
        m = measurement(rng)
        mid = st.add_measurement(rid, m)
        st.finish_run(rid, "complete")
        back = st.measurement(mid)
        run = st.run(rid)
    assert back.times_ms == m.times_ms and len(back.times_ms) == 200
    assert back.median_ms == pytest.approx(float(np.median(m.times_ms)))
    assert back.verified is True and back.ok and back.env["cpu_model"] == m.env["cpu_model"]
    assert back.cell == ("zoo:digits-cnn", "host", "local", "onnxruntime", "")
    assert run.status == "complete" and run.finished and run.env_hash == fingerprint.env_hash(run.env)
    assert run.git_revision is None or len(run.git_revision) == 40


def test_database_uses_wal_and_is_versioned(results_db):
    with ResultsStore(results_db) as st:
        assert st.schema_version() == SCHEMA_VERSION
        assert st.engine == ("sqlite" if isinstance(results_db, Path) else "postgresql")
    if isinstance(results_db, Path):
        db = sqlite3.connect(results_db)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_old_schema_is_migrated_and_keeps_its_rows(results_db):
    with ResultsStore(results_db, upto=1) as st, st.transaction() as db:  # a database written by schema version 1
        assert st.schema_version() == 1
        db.execute("INSERT INTO runs (kind, status, started, edgeprune_version)"
                   " VALUES ('compile', 'complete', '2025-01-01T00:00:00+00:00', '0.0.1')")
        db.execute("INSERT INTO measurements (run_id, created, model, backend, target, device, ok, times_json,"
                   " median_ms) VALUES (1, '2025-01-01T00:00:00+00:00', 'm.onnx', 'onnxruntime', 'host', 'local', 1,"
                   " '[1.0, 2.0]', 1.5)")
    with ResultsStore(results_db) as st:
        assert st.schema_version() == SCHEMA_VERSION
        (m,) = st.measurements()
        assert m.times_ms == [1.0, 2.0] and m.variant == "" and m.attempt == 0
        assert st.verdicts() == []
        rid = st.begin_run("bench")  # the upgraded tables take new rows
        assert rid == 2 and st.run(rid).out_dir is None


def test_a_newer_schema_is_refused(results_db):
    with ResultsStore(results_db) as st, st.transaction() as db:
        db.execute("INSERT INTO schema_version VALUES (99, 'future')")
    with pytest.raises(ResultsError, match="schema version 99"):
        ResultsStore(results_db)


def _writer(path: str, tag: int, n: int) -> None:
    rng = np.random.default_rng(tag)
    with ResultsStore(path) as st:
        rid = st.begin_run("bench", label=f"writer-{tag}")
        for _ in range(n):
            st.add_measurement(rid, measurement(rng, model=f"m{tag}"))
        st.finish_run(rid, "complete")


def test_two_processes_writing_at_once_lose_nothing(results_db):
    path = str(results_db)
    ResultsStore(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, t, 60)) for t in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with ResultsStore(path) as st:
        assert len(st.measurements(model="m1")) == 60 and len(st.measurements(model="m2")) == 60
        assert {r.status for r in st.runs()} == {"complete"}
        assert len({m.id for m in st.measurements()}) == 120
    if isinstance(results_db, Path):
        assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_run_whose_process_died_is_marked_incomplete_with_its_rows(results_db):
    path = results_db
    code = (
        "import os, numpy as np, sys; sys.path.insert(0, 'tests')\n"
        "from results_helpers import measurement\n"
        "from edgeprune.results.store import ResultsStore\n"
        f"st = ResultsStore({str(path)!r}); rid = st.begin_run('nightly')\n"
        "st.add_measurement(rid, measurement(np.random.default_rng(0)))\n"
        "os._exit(0)  # dies without finishing the run\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    with ResultsStore(path) as st:
        (r,) = st.runs()
        assert r.status == "incomplete" and "without finishing" in r.note
        assert len(st.measurements(run_id=r.id)) == 1


def test_a_shared_database_reaps_and_recovers_only_the_runs_of_this_host(results_db, tmp_path):
    """Runners share one database: a run left ``running`` by another host is not this
    host's to judge (its pid means nothing here), nor is its out folder on this disk."""
    import socket

    from edgeprune.results.store import REAPED_NOTE

    dead = 2**22 + 12345  # above any pid_max this host uses
    with ResultsStore(results_db) as st, st.transaction() as db:
        for host, status, note in ((socket.gethostname(), "running", None), ("another-runner", "running", None),
                                   ("another-runner", "incomplete", REAPED_NOTE)):
            db.execute("INSERT INTO runs (kind, status, started, edgeprune_version, host, pid, out_dir, note)"
                       " VALUES ('compile', ?, '2026-01-01T00:00:00.000+00:00', '0', ?, ?, ?, ?)",
                       (status, host, dead, str(tmp_path), note))
    with ResultsStore(results_db) as st:
        mine, theirs, killed = sorted(st.runs(), key=lambda r: r.id)
        assert mine.status == "incomplete" and mine.note == REAPED_NOTE  # this host's dead process
        assert theirs.status == "running"
        assert [r.id for r in st.killed_runs()] == [mine.id]  # not the other runner's killed run


def test_git_revision_is_read_from_the_repository_files(tmp_path):
    repo = tmp_path / "repo"
    (repo / ".git" / "refs" / "heads").mkdir(parents=True)
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (repo / ".git" / "refs" / "heads" / "main").write_text("a" * 40 + "\n")
    (repo / "sub").mkdir()
    assert git_revision(repo / "sub") == "a" * 40
    (repo / ".git" / "refs" / "heads" / "main").unlink()
    (repo / ".git" / "packed-refs").write_text("# pack-refs\n" + "b" * 40 + " refs/heads/main\n")
    assert git_revision(repo) == "b" * 40
    assert git_revision(Path("/")) is None


def test_since_accepts_durations_and_dates():
    assert parse_since("30d") < parse_since("1h")
    assert parse_since("2025-03-01").startswith("2025-03-01")
    with pytest.raises(ResultsError):
        parse_since("yesterday")


# ---------------------------------------------------------------- fingerprint
def test_fingerprint_series_ignores_volatile_facts_and_diff_names_changes():
    env = fingerprint.collect()
    assert env["cpu_model"] and env["cores"] and "onnxruntime" in env["libraries"]
    moved = dict(env, hostname="other-container", memory_gb=1.0)
    assert fingerprint.series_key(env, "onnxruntime", "1.0", 2) == fingerprint.series_key(moved, "onnxruntime", "1.0", 2)
    assert fingerprint.series_key(env, "onnxruntime", "1.0", 2) != fingerprint.series_key(env, "onnxruntime", "1.1", 2)
    newer = dict(env, governor="performance", libraries=dict(env["libraries"], onnxruntime="9.9"))
    lines = fingerprint.diff(env, newer)
    assert any(line.startswith("governor") for line in lines) and any("onnxruntime" in line for line in lines)
    # the runner's key names are understood
    assert fingerprint.normalize({"cpu": "X", "machine": "aarch64"}) == {"cpu_model": "X", "arch": "aarch64"}


# ---------------------------------------------------------------- recording real runs
@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """One real compile of a small ONNX model with ONNX Runtime on this machine."""
    from edgeprune.bench.settings import BenchSettings
    from edgeprune.flows.compile import CompileOptions, compile_model
    from edgeprune.config.devices import LOCAL
    from edgeprune.config.targets import get_target
    from edgeprune.models.spec import load_model

    d = tmp_path_factory.mktemp("compiled")
    model = load_model(str(conv_onnx(d / "conv.onnx")), log=lambda m: None)
    opts = CompileOptions(backends=("onnxruntime",), bench=BenchSettings(warmup=3, min_runs=20, min_time_s=0.2))
    return compile_model(model, get_target("host"), LOCAL, d / "out", opts, log=lambda m: None)


def test_record_summary_stores_the_real_measurement(compiled, results_db):
    from edgeprune.results.record import record_summary

    rid = record_summary(str(results_db), compiled, kind="bench", command="edgeprune bench ...")
    with ResultsStore(results_db) as st:
        run = st.run(rid)
        (m,) = st.measurements(run_id=rid)
    b = compiled.backends[0]
    assert run.kind == "bench" and run.status == "complete" and run.command == "edgeprune bench ..."
    assert m.times_ms == pytest.approx(b.times_ms) and len(m.times_ms) >= 20
    assert m.median_ms == pytest.approx(b.latency_ms.median)
    assert m.backend == "onnxruntime" and m.backend_version and m.threads == b.threads
    assert len(m.model_hash) == 64 and len(m.artifact_hash) == 64
    assert m.verified is True and m.parity_max_diff is not None
    assert m.env["cpu_model"] and m.env["runtime_version"] == m.backend_version and m.series
    assert record_summary("none", compiled) is None  # recording can be switched off


def test_cli_lists_shows_and_compares_recorded_runs(compiled, results_db):
    from edgeprune.results.record import record_summary

    db = str(results_db)
    a = record_summary(db, compiled, kind="compile")
    b = record_summary(db, compiled, kind="bench")
    res = run("results", "list", "--db", db, "--json")
    assert [r["id"] for r in json.loads(res.stdout)] == [b, a]
    res = run("results", "show", str(a), "--db", db)
    assert res.exit_code == 0 and "onnxruntime" in res.output and "Measurements of run" in res.output
    res = run("results", "compare", str(a), str(b), "--db", db, "--json")
    (cell,) = json.loads(res.stdout)["cells"]
    # the same numbers twice: no change, and one run per side is never enough to call one
    assert cell["ratio"] == pytest.approx(1.0) and cell["verdict"] in ("SAME", "UNKNOWN")
    res = CliRunner().invoke(cli, ["results", "show", "999", "--db", db])
    assert res.exit_code != 0 and "no run with id 999" in res.output


# ---------------------------------------------------------------- reports
@pytest.fixture
def history(results_db):
    """Six nightly runs of three cells; the last one has a latency and an accuracy regression,
    plus pruned variants for the Pareto plot."""
    rng = np.random.default_rng(11)
    st = ResultsStore(results_db)
    for night in range(6):
        rid = st.begin_run("nightly", label="demo")
        last = night == 5
        for model, backend, level, acc in (("zoo:digits-cnn", "onnxruntime", 1.0, 97.0),
                                            ("zoo:digits-cnn", "openvino", 0.8, 97.0),
                                            ("zoo:mlp-recsys", "onnxruntime", 0.4, 88.0)):
            slow = 1.08 if last and backend == "onnxruntime" and model == "zoo:digits-cnn" else 1.0
            a = acc - (2.0 if last and model == "zoo:mlp-recsys" else 0.0)
            m = measurement(rng, level * slow, model=model, backend=backend, accuracy=a)
            st.add_measurement(rid, m)
            for v in judge(st, rid, [m], Policy()).verdicts:
                st.add_verdict(rid, v)
        st.finish_run(rid, "complete")
    rid = st.begin_run("compile")
    for budget, lat, acc in ((0.5, 0.55, 96.5), (0.7, 0.72, 96.9), (0.3, 0.35, 93.0)):
        st.add_measurement(rid, measurement(rng, lat, accuracy=acc, variant=f"pruned budget={budget}", pruned=True,
                                            variant_info={"original": {"accuracy": 97.0, "latency_ms": {"median": 1.0}}}))
    st.finish_run(rid, "complete")
    yield st
    st.close()


def test_report_marks_the_regressions_in_every_format(history, tmp_path):
    nightly = history.latest_run("nightly")
    data = gather(history, run_id=nightly.id, since="30d")
    assert data.counts["regression"] == 2 and data.level == "bad"
    paths = write_reports(data, tmp_path / "rep")
    html = paths["html"].read_text()
    assert html.count("data:image/png;base64,") >= 3  # latency per device/model + Pareto
    assert "Regressions" in html and "Pruned variants" in html and "<script" not in html
    md = paths["md"].read_text()
    assert md.startswith("## 🔴") and "| 🔴 |" in md and "accuracy" in md
    doc = json.loads(paths["json"].read_text())
    assert doc["counts"]["regression"] == 2 and {c["status"] for c in doc["cells"]} >= {"regression"}
    suite = ET.parse(paths["junit"]).getroot().find("testsuite")
    assert suite.get("tests") == "3" and suite.get("failures") == "2"
    failures = [tc.get("name") for tc in suite.iter("testcase") if tc.find("failure") is not None]
    assert "zoo:digits-cnn [onnxruntime]" in failures and "zoo:mlp-recsys [onnxruntime]" in failures


def test_report_cli_writes_html_and_prints_markdown(history, results_db, tmp_path):
    db = str(results_db)
    res = run("report", "--db", db, "--format", "md")
    assert res.exit_code == 0 and "regression" in res.output
    out = tmp_path / "r.html"
    res = run("report", "--db", db, "--format", "html", "--out", str(out))
    assert res.exit_code == 0 and out.read_text().startswith("<!doctype html>")
    res = run("report", "--db", db, "--format", "junit", "--since", "1h")
    assert ET.fromstring(res.stdout.encode()).tag == "testsuites"


def test_report_of_an_empty_database_is_still_a_page(results_db):
    with ResultsStore(results_db) as st:
        data = gather(st)
        assert "No measurements" in render(data, "html")
        assert ET.fromstring(render(data, "junit").encode()).find("testsuite").get("tests") == "0"


def test_lut_staircases_are_drawn_only_when_tables_exist(history, tmp_path):
    from edgeprune.latency.entry import LatencyEntry
    from edgeprune.latency.store import LUTStore, TableKey

    key = TableKey(target="host", target_fingerprint="abc", device="local", backend="onnxruntime",
                   backend_version="1.32.0", threads=2)
    entries = {f"conv-i64-o{c}-k3x3-s1x1-p1x1-d1x1-hw16x16-dense-b": LatencyEntry(ms=0.1 * (1 + (c + 7) // 8))
               for c in range(8, 65, 3)}
    from edgeprune.prune.space import PrunableLayer, PruneGroup, PruneSpace

    # the table names the reported model and its layers (staircases are that model's own layers)
    layer = PrunableLayer(name="features.10", kind="conv", in_channels=64, out_channels=64, out_group="g",
                          kernel=(3, 3), padding=(1, 1), input_hw=(16, 16))
    space = PruneSpace(groups={"g": PruneGroup(id="g", size=64)}, layers=[layer])
    models = {"fp": {"name": "zoo:digits-cnn", "full": LatencyEntry(ms=1.0).to_dict(), "space": space.to_dict()}}
    store = LUTStore(tmp_path / "lut")
    store.save(store.path_for(key), key, entries, models)
    with_lut = render(gather(history, lut_dirs=[tmp_path / "lut"]), "html")
    without = render(gather(history, lut_dirs=[tmp_path / "nothing"]), "html")
    assert "Per-layer latency staircases" in with_lut and "Per-layer latency staircases" not in without


def test_pareto_front_keeps_only_undominated_points():
    pts = [(1.0, 97.0), (0.5, 96.5), (0.6, 96.0), (0.3, 93.0), (0.7, 96.9)]
    assert pareto_front(pts) == [3, 1, 4, 0]


def test_measurement_dict_round_trip():
    m = measurement(np.random.default_rng(0))
    assert Measurement.from_dict(m.to_dict()) == m


def test_default_db_path_honours_env(monkeypatch, tmp_path):
    from edgeprune.results.store import default_db_path

    monkeypatch.setenv("EDGEPRUNE_DB", str(tmp_path / "x.sqlite"))
    assert default_db_path(None) == tmp_path / "x.sqlite"
    assert default_db_path("none") is None
    monkeypatch.delenv("EDGEPRUNE_DB")
    assert default_db_path(None) == Path("results.sqlite")
    assert os.fspath(default_db_path("~/r.sqlite")).startswith(os.path.expanduser("~"))


def test_db_names_a_sqlite_file_a_postgresql_url_or_nothing(monkeypatch, tmp_path):
    from edgeprune.results.location import PgUrl, beside, default_db_path

    # what used to become a SQLite file in a folder named 'postgresql:'
    url = default_db_path("postgresql://lab:hunter2@db.lab:5433/results?sslmode=require")
    assert isinstance(url, PgUrl) and url.dbname == "results"
    assert str(url) == "postgresql://lab:***@db.lab:5433/results?sslmode=require" and "hunter2" not in repr(url)
    assert "hunter2" in url.url  # only the driver sees it
    assert str(default_db_path("postgres://u@h/d?password=x1&connect_timeout=3")) == \
        "postgres://u@h/d?password=***&connect_timeout=3"
    monkeypatch.setenv("EDGEPRUNE_DB", "postgresql://ci@db.lab/results")
    assert default_db_path(None) == PgUrl("postgresql://ci@db.lab/results")
    # SQLite stays exactly as it was, and gains the sqlite: forms
    assert default_db_path(str(tmp_path / "a:b.sqlite")) == tmp_path / "a:b.sqlite"  # a colon is not a scheme
    assert default_db_path("sqlite:r.sqlite") == Path("r.sqlite")
    assert default_db_path("sqlite:///rel/r.sqlite") == Path("rel/r.sqlite")
    assert default_db_path("sqlite:////abs/r.sqlite") == Path("/abs/r.sqlite")
    assert default_db_path("off") is None
    assert beside(tmp_path / "r.sqlite", ".artifacts") == tmp_path / "r.sqlite.artifacts"
    assert beside(url, ".artifacts").name == "db.lab-5433-results.artifacts"
    for bad, says in (("mysql://root:pw@db/results", "unknown scheme 'mysql'"), ("postgresql://u@h:x/d", "port"),
                      ("postgresql://u@h", "no database named"), ("sqlite://host/r.sqlite", "has no host")):
        with pytest.raises(ResultsError, match=says) as exc:
            default_db_path(bad)
        assert ":pw@" not in str(exc.value)


def test_an_unknown_scheme_is_one_line_and_exit_10_before_any_work(tmp_path):
    res = CliRunner().invoke(cli, ["results", "list", "--db", "mysql://root:topsecret@db.lab/results"])
    assert res.exit_code == 10 and "unknown scheme 'mysql'" in res.output and "topsecret" not in res.output
    assert "postgresql://" in res.output and "Traceback" not in res.output  # the hint names what works
    res = CliRunner().invoke(cli, ["compile", "--model", "zoo:digits-cnn", "--target", "host", "--out",
                                   str(tmp_path / "o"), "--db", "mysql://db.lab/results"])
    assert res.exit_code == 10 and "unknown scheme" in res.output and not (tmp_path / "o").exists()
    assert not Path("mysql:").exists()


def test_one_report_shows_every_shard_of_the_night(results_db):
    """A lab's runners run `nightly --shard I/N` into one database: the report of the
    newest run shows the cells of all N shards of that night (and only of that night)."""
    from edgeprune.results.shards import shard_spec, sibling_shards

    assert shard_spec("edgeprune nightly --matrix n.yaml --shard 2/3") == (2, 3)
    assert shard_spec("edgeprune nightly --shard=1/2") == (1, 2) and shard_spec("edgeprune nightly") is None
    rng = np.random.default_rng(5)

    def night(shard: str | None, model: str, started: str, label: str = "lab") -> int:
        rid = st.begin_run("nightly", label=label, started=started,
                           command="edgeprune nightly --matrix n.yaml" + (f" --shard {shard}" if shard else ""))
        st.add_measurement(rid, measurement(rng, model=model))
        st.finish_run(rid, "complete")
        return rid

    with ResultsStore(results_db) as st:
        night("1/2", "old-a", "2026-01-01T02:00:00.000+00:00")  # the night before
        night("2/2", "old-b", "2026-01-01T02:00:00.000+00:00")
        first_try = night("1/2", "retried", "2026-01-02T02:00:00.000+00:00")
        night("1/2", "zoo:a", "2026-01-02T02:30:00.000+00:00")  # shard 1 was run again: the newest counts
        night("1/1", "other-matrix", "2026-01-02T02:00:00.000+00:00", label="another")
        last = night("2/2", "zoo:b", "2026-01-02T02:10:00.000+00:00")
        assert [r.command[-3:] for r in sibling_shards(st, st.run(last))] == ["1/2"]
        assert first_try not in {r.id for r in sibling_shards(st, st.run(last))}
        data = gather(st, run_id=last, since=None)
        assert sorted(r.model for r in data.rows) == ["zoo:a", "zoo:b"]
        assert any("2 shards" in n for n in data.notes)
        alone = gather(st, run_id=night(None, "unsharded", "2026-01-03T02:00:00.000+00:00"), since=None)
        assert [r.model for r in alone.rows] == ["unsharded"]


def test_a_password_typed_on_the_command_line_is_not_stored(results_db):
    with ResultsStore(results_db) as st:
        rid = st.begin_run("nightly", command="edgeprune nightly --db postgresql://ci:Hunter-2@db.lab/results "
                                              "--report-dir 'a b' --shard 1/2")
        assert st.run(rid).command == ("edgeprune nightly --db postgresql://ci:***@db.lab/results "
                                       "--report-dir 'a b' --shard 1/2")
