"""The HTML report reads right at a glance: the banner's colour follows the worst
verdict, every backend's latency has a panel of its own scale, time ticks fit the span
of the history, and the staircases are the reported model's own layers with readable
titles. Real SQLite, real latency-table files, real matplotlib rendering."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pytest

from edgeprune.latency.entry import LatencyEntry
from edgeprune.latency.store import LUTStore, TableKey
from edgeprune.prune.space import PrunableLayer, PruneGroup, PruneSpace
from edgeprune.results.records import VerdictRecord
from edgeprune.results.report import gather, render
from edgeprune.results.report.figure import mpl
from edgeprune.results.report.plots import latency_figure, latency_figures
from edgeprune.results.report.staircase import load_staircases, space_from_dict
from edgeprune.results.report.timeaxis import tick_labels, time_axis
from edgeprune.results.store import ResultsStore
from results_helpers import measurement

UTC = dt.timezone.utc
INTERNAL_KEY = re.compile(r"conv-i\d+-o\d+|linear-i\d+|hw\d+x\d+|\|both\||\|out\||lo\d+x\d+")


def _banner(html: str) -> str:
    m = re.search(r'<div class="banner (\w+)"', html)
    assert m, "no banner in the page"
    return m.group(1)


def _css_colour(html: str, level: str) -> str:
    m = re.search(r"\.banner\.%s \{ background: var\(--(\w+)-bg\)" % level, html)
    assert m, f"no style for banner level {level}"
    return m.group(1)


def _nightly(tmp_path, verdicts: list[str], name: str = "v.sqlite") -> ResultsStore:
    """One nightly run whose cells carry the given stored latency verdicts (as the
    nightly command stores them)."""
    rng = np.random.default_rng(3)
    st = ResultsStore(tmp_path / name)
    rid = st.begin_run("nightly")
    for i, verdict in enumerate(verdicts):
        m = measurement(rng, 0.3 + i, backend=f"b{i}")
        st.add_measurement(rid, m)
        slower = verdict == "SLOWER"
        st.add_verdict(rid, VerdictRecord(cell=m.cell, kind="latency", verdict=verdict, regression=slower,
                                          ratio=1.09 if slower else 1.01, ci_low=0.97, ci_high=1.12,
                                          measurement_id=m.id, detail=f"{verdict.lower()} for the test"))
    st.finish_run(rid, "complete")
    return st


# ---------------------------------------------------------------- the banner
def test_inconclusive_cells_make_an_amber_banner_not_a_green_one(tmp_path):
    with _nightly(tmp_path, ["UNKNOWN", "UNKNOWN", "UNKNOWN", "SAME"]) as st:
        data = gather(st, lut_dirs=[])
        html = render(data, "html")
        md = render(data, "md")
    assert data.headline == "3 inconclusive in 4 cells"
    assert _banner(html) == "warn" and _css_colour(html, "warn") == "warn"
    assert "re-measure" in html  # the banner says what to do
    assert md.startswith("## 🟠")


def test_a_slower_cell_makes_a_red_banner_whatever_else_is_inconclusive(tmp_path):
    with _nightly(tmp_path, ["UNKNOWN", "SLOWER", "SAME"]) as st:
        data = gather(st, lut_dirs=[])
        html = render(data, "html")
    assert data.level == "bad" and _banner(html) == "bad" and _css_colour(html, "bad") == "bad"
    assert render(data, "md").startswith("## 🔴")


def test_all_fine_is_green_and_first_runs_are_neutral(tmp_path):
    with _nightly(tmp_path, ["SAME", "SAME"], "ok.sqlite") as st:
        assert _banner(render(gather(st, lut_dirs=[]), "html")) == "good"
    with _nightly(tmp_path, ["NO_BASELINE", "NEW_SERIES"], "first.sqlite") as st:
        data = gather(st, lut_dirs=[])
        assert _banner(render(data, "html")) == "info" and "too few earlier runs" in data.headline


def test_a_failed_run_with_nothing_measured_is_red_and_says_so(tmp_path):
    with ResultsStore(tmp_path / "f.sqlite") as st:
        st.finish_run(st.begin_run("compile"), "failed", note="export failed")
        data = gather(st, lut_dirs=[])
        assert data.level == "bad" and "failed: nothing measured" in data.headline
        assert _banner(render(data, "html")) == "bad"


# ---------------------------------------------------------------- latency panels and time ticks
def test_every_backend_gets_its_own_panel_and_scale(tmp_path):
    """TVM at 53 ms beside ONNX Runtime at 0.35 ms: on one linear axis ORT is flat at zero."""
    rng = np.random.default_rng(1)
    with ResultsStore(tmp_path / "p.sqlite") as st:
        for _ in range(3):
            rid = st.begin_run("compile")
            for backend, level in (("onnxruntime", 0.35), ("openvino", 0.36), ("tvm", 53.0)):
                st.add_measurement(rid, measurement(rng, level, backend=backend))
            st.finish_run(rid, "complete")
        data = gather(st, lut_dirs=[])
    (fig_info,) = latency_figures(data)
    assert fig_info["panels"] == 3
    fig = latency_figure(data.rows, sorted({r.backend for r in data.rows}))
    try:
        axes = {ax.get_title(loc="left").split(" · ")[0]: ax for ax in fig.axes}
        assert set(axes) == {"onnxruntime", "openvino", "tvm"}
        for r in data.rows:
            lo, hi = axes[r.backend].get_ylim()
            meds = [p.median_ms for p in r.history]
            assert lo <= min(p.p10_ms for p in r.history) and max(meds) <= hi
            assert (hi - lo) < 0.5 * max(meds)  # its own scale: the line fills the panel, not a sliver of it
        assert axes["onnxruntime"].get_ylim()[1] < 1.0 < 40.0 < axes["tvm"].get_ylim()[0]
    finally:
        mpl().close(fig)


def _labels(times: list[dt.datetime]) -> list[str]:
    fig, ax = mpl().subplots()
    try:
        ax.plot(times, [1.0] * len(times))
        time_axis(ax, times)
        return tick_labels(ax)
    finally:
        mpl().close(fig)


def test_one_point_history_has_one_tick_with_date_and_time():
    t = dt.datetime(2026, 3, 4, 10, 7, 12, tzinfo=UTC)
    assert _labels([t]) == ["2026-03-04 10:07 UTC"]
    assert _labels([t, t + dt.timedelta(milliseconds=300)]) == ["2026-03-04 10:07 UTC"]  # re-measurements of one run


@pytest.mark.parametrize("step, n, pattern", [
    (dt.timedelta(seconds=10), 4, r"^\d\d:\d\d:\d\d$"),
    (dt.timedelta(hours=1), 6, r"^\d\d:\d\d$"),
    (dt.timedelta(days=1), 8, r"^[A-Z][a-z]{2} \d\d$"),
])
def test_ticks_fit_the_span_and_never_repeat(step, n, pattern):
    t0 = dt.datetime(2026, 3, 4, 2, 30, tzinfo=UTC)
    labels = _labels([t0 + i * step for i in range(n)])
    assert len(labels) >= 2 and len(labels) == len(set(labels)), labels
    assert all(re.match(pattern, s) for s in labels), labels


def test_a_one_run_report_draws_no_repeated_time_labels(tmp_path):
    with _nightly(tmp_path, ["NO_BASELINE", "NO_BASELINE", "NO_BASELINE"]) as st:
        data = gather(st, lut_dirs=[])
    fig = latency_figure(data.rows, sorted({r.backend for r in data.rows}))
    try:
        bottom = [ax for ax in fig.axes if ax.xaxis.get_tick_params()["labelbottom"]]
        labels = [s for ax in bottom for s in tick_labels(ax)]
        assert len(labels) == 1 and re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d UTC$", labels[0]), labels
    finally:
        mpl().close(fig)


# ---------------------------------------------------------------- staircases
def _space() -> PruneSpace:
    """features.7 (as in digits-cnn): conv 3x3 32->64 @ 16x16 whose output channels are prunable."""
    g = PruneGroup(id="features.7", size=64, layers=("features.7",))
    layer = PrunableLayer(name="features.7", kind="conv", in_channels=32, out_channels=64, out_group="features.7",
                          kernel=(3, 3), padding=(1, 1), input_hw=(16, 16), bias=False)
    return PruneSpace(groups={g.id: g}, layers=[layer])


def _lut(tmp_path, with_space: bool = True):
    """One shared table: the reported model's layer (noisy, with one burst of noise and
    one real fast width) and an unrelated model's layer."""
    sp = _space()
    layer = sp.layers[0]
    entries = {}
    for c in range(8, 65, 4):
        level = 0.01 * (1 + c // 16)  # flat between steps: a point off its neighbours stands out
        rounds = [level, level * 1.01, level * 0.99]
        if c == 40:  # one burst: one fast-looking round, the others disagree
            rounds = [level * 0.5, level * 1.3, level * 1.6]
        if c == 52:  # a real fast kernel: every round agrees
            rounds = [level * 0.5] * 4
        entries[layer.signature(32, c)] = LatencyEntry.from_rounds(rounds, 20)
    other = PrunableLayer(name="blocks.9.conv", kind="conv", in_channels=256, out_channels=256, kernel=(1, 1),
                          input_hw=(7, 7))
    for c in range(16, 257, 16):
        entries[other.signature(256, c)] = LatencyEntry.from_rounds([0.2 + c / 1000] * 3, 20)
    full = LatencyEntry.from_rounds([0.5, 0.5, 0.5], 50).to_dict()
    models = {"fp-mine": {"name": "zoo:digits-cnn", "full": full, "variants": []},
              "fp-other": {"name": "zoo:other-net", "full": full, "variants": []}}
    if with_space:
        models["fp-mine"]["space"] = sp.to_dict()
    key = TableKey(target="host", target_fingerprint="abc", device="local", backend="onnxruntime",
                   backend_version="1.32.0", threads=2, timing="kernel")
    store = LUTStore(tmp_path / "lut")
    store.save(store.path_for(key), key, entries, models)
    return tmp_path / "lut"


def test_space_survives_its_json_round_trip():
    sp = _space()
    assert space_from_dict(sp.to_dict()) == sp


def test_staircases_show_only_the_reported_models_layers_with_readable_titles(tmp_path):
    lut = _lut(tmp_path)
    with _nightly(tmp_path, ["SAME"]) as st:  # cells of zoo:digits-cnn on host/local
        data = gather(st, lut_dirs=[lut])
        html = render(data, "html")
    (s,) = data.staircases
    assert s.model == "zoo:digits-cnn" and [lay.layers for lay in s.layers] == [["features.7"]]
    assert s.layers[0].title == "features.7 · conv 3×3 32→64 @ 16×16"
    assert "features.7 · conv 3×3 32→64 @ 16×16" in html and "Per-layer latency staircases" in html
    assert "blocks.9" not in html and "other-net" not in html
    stairs = html[html.index("Per-layer latency staircases"):html.index("How verdicts are made")]
    assert not INTERNAL_KEY.search(stairs), INTERNAL_KEY.search(stairs)
    (axis,) = s.layers[0].axes
    assert axis.label == "output channels (input 32)" and axis.full == 64
    # noise shows as noise: every round is kept, the burst is marked as noise, the real fast width as real
    assert all(len(r) >= 3 for r in axis.rounds)
    assert 40 in axis.spikes and 52 in axis.confirmed and 52 not in axis.spikes


def test_no_staircases_for_models_the_table_does_not_name(tmp_path):
    lut = _lut(tmp_path)
    rng = np.random.default_rng(0)
    with ResultsStore(tmp_path / "x.sqlite") as st:
        rid = st.begin_run("compile")
        st.add_measurement(rid, measurement(rng, 0.4, model="zoo:mlp-recsys"))
        st.finish_run(rid, "complete")
        data = gather(st, lut_dirs=[lut])
        assert data.staircases == [] and "Per-layer latency staircases" not in render(data, "html")


def test_a_zoo_model_in_an_old_table_is_rebuilt_from_its_architecture(tmp_path):
    """Tables written before spaces were stored: the zoo model's structure is rebuilt
    (untrained); only its own layers are drawn."""
    lut = _lut(tmp_path, with_space=False)
    notes: list[str] = []
    sets = load_staircases([lut], {("zoo:digits-cnn", "host", "local", "onnxruntime")}, notes)
    assert notes == []
    (s,) = sets
    names = {n for lay in s.layers for n in lay.layers}
    assert names == {"features.7"}  # the only digits-cnn layer with points in this table
    assert "blocks.9.conv" not in names


def test_an_unknown_model_without_a_stored_space_gets_a_note_not_a_section(tmp_path):
    lut = _lut(tmp_path, with_space=False)
    t = LUTStore(lut)
    (tf,) = list(t.tables())
    models = {"fp": {**tf.models["fp-mine"], "name": "my_models:net"}}
    t.save(tf.path, tf.key, models=models)
    notes: list[str] = []
    assert load_staircases([lut], {("my_models:net", "host", "local", "onnxruntime")}, notes) == []
    assert len(notes) == 1 and "profile it again" in notes[0]
