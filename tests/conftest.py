"""Shared fixtures. Models and artifacts are session-scoped: built once, used by many tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# a real PostgreSQL server for the results store's tests (skipped, with the reason, where none can run)
from pg_fixture import pg_server, pg_url, pytest_report_header, results_db  # noqa: F401

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch, tmp_path):
    """Tests run from the repo root, as a user following the README would."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("EDGEPRUNE_DB", str(tmp_path / "results.sqlite"))  # recorded runs stay out of the repo
    monkeypatch.delenv("EDGEPRUNE_DEVICES", raising=False)
    monkeypatch.delenv("EDGEPRUNE_TARGETS_DIR", raising=False)
    monkeypatch.delenv("EDGEPRUNE_INSECURE_ACCEPT_NEW_HOST_KEY", raising=False)  # host keys verified unless a test asks


@pytest.fixture(scope="session", autouse=True)
def _stop_signals_not_ignored():
    """A test run started in the background by a script (``make test &``: the shell
    ignores SIGINT for it) or under ``nohup`` (SIGHUP ignored) passes the ignored signal
    on to every process the tests start, and an ignored signal never reaches edgeprune's
    handlers: the interruption tests would test the shell, not edgeprune (measured: a
    ``nohup ... &`` CI rehearsal failed all nine Ctrl-C / SIGHUP tests, each passing when
    run in the foreground). Restore the defaults for this process and its children."""
    import signal

    restored = {}
    for sig, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGHUP, signal.SIG_DFL)):
        if signal.getsignal(sig) == signal.SIG_IGN:
            restored[sig] = signal.signal(sig, default)
    yield
    for sig, old in restored.items():
        signal.signal(sig, old)


@pytest.fixture(scope="session", autouse=True)
def _own_tuning_db(tmp_path_factory):
    """TVM builds in tests use an empty tuning database unless a test tunes into its own:
    the user's records (~/.cache/edgeprune/tuning) must not change what the suite builds."""
    old = os.environ.get("EDGEPRUNE_TUNING_DIR")
    os.environ["EDGEPRUNE_TUNING_DIR"] = str(tmp_path_factory.mktemp("tuning"))
    yield
    if old is None:
        os.environ.pop("EDGEPRUNE_TUNING_DIR", None)
    else:
        os.environ["EDGEPRUNE_TUNING_DIR"] = old


@pytest.fixture(scope="session")
def host_target():
    from edgeprune.config.targets import get_target

    old = os.getcwd()
    os.chdir(REPO)
    try:
        return get_target("host")
    finally:
        os.chdir(old)
