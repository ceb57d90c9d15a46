"""Shared fixtures. Models and artifacts are session-scoped: built once, used by many tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    """Tests run from the repo root, as a user following the README would."""
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("EDGEPRUNE_DEVICES", raising=False)
    monkeypatch.delenv("EDGEPRUNE_TARGETS_DIR", raising=False)


@pytest.fixture(scope="session")
def host_target():
    from edgeprune.config.targets import get_target

    old = os.getcwd()
    os.chdir(REPO)
    try:
        return get_target("host")
    finally:
        os.chdir(old)
