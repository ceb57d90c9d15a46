"""A wheel of edgeprune installs into a fresh venv and works from a folder outside the checkout.

The editable install the suite runs on hides packaging mistakes: every file of the
checkout is importable and readable. This test builds a real wheel (plain ``pip wheel``,
no build isolation: no network), installs it into a new venv and runs the CLI from a
temporary folder with no ``PYTHONPATH``: the shipped targets must be listed, and a small
``compile`` must write a verified summary.json. Then the package data (targets,
templates, the runner that is zipped into every bundle) is known to travel in the wheel.

To stay fast the new venv does not reinstall the dependencies: a ``.pth`` file puts this
venv's site-packages *after* its own, and the wheel is installed with ``--no-deps``. A
plain path line in a .pth adds that folder without processing the .pth files inside it,
so the checkout's editable-install hook there stays inactive; the test checks that
``edgeprune`` is imported from the new venv, never from the checkout.

Slow (about a minute: the build, the install and a real compile and benchmark); CI runs
it through ``make test-wheel``.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

#: what a wheel is built from: the package, its metadata and the readme it names
SOURCES = ("pyproject.toml", "README.md", "edgeprune")


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(bin folder of a fresh venv with the wheel installed, the environment to run it in)."""
    root = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "EDGEPRUNE_TARGETS_DIR")}
    # build from a copy, so the checkout gets no build/ or egg-info and parallel runs cannot collide
    src = root / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    dist = root / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", str(dist), str(src)], cwd=root, env=env)
    wheels = list(dist.glob("edgeprune-*.whl"))
    assert len(wheels) == 1, wheels

    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root, env=env)
    py = venv / "bin" / "python"
    new_site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                         cwd=root, env=env).stdout.strip())
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (new_site / "zz_edgeprune_test_deps.pth").write_text("".join(f"{p}\n" for p in deps))
    _run([str(py), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheels[0])], cwd=root, env=env)
    return venv / "bin", env


def test_the_installed_package_is_the_wheel_not_the_checkout(installed, tmp_path):
    bindir, env = installed
    out = _run([str(bindir / "python"), "-c", "import edgeprune, edgeprune.paths as p; "
                "print(edgeprune.__file__); print(p.package_data('targets'))"], cwd=tmp_path, env=env).stdout.split()
    venv = bindir.parent.resolve()
    for path in out:
        assert Path(path).resolve().is_relative_to(venv), f"{path} is not inside the new venv {venv}"
        assert not Path(path).resolve().is_relative_to(REPO)


def test_targets_lists_the_shipped_targets(installed, tmp_path):
    bindir, env = installed
    res = _run([str(bindir / "edgeprune"), "targets", "--json"], cwd=tmp_path, env=env)
    targets = {t["name"]: t for t in json.loads(res.stdout)}
    assert {"host", "x86-avx2", "rpi4", "jetson-orin-nano", "mali-g610"} <= set(targets)
    for t in targets.values():
        assert Path(t["source"]).resolve().is_relative_to(bindir.parent.resolve())
    assert targets["host"]["vector_bits"] in (128, 256, 512)  # detected, not 'auto'


def test_a_small_compile_runs_from_outside_the_checkout(installed, tmp_path):
    bindir, env = installed
    out = tmp_path / "out"
    env = env | {"EDGEPRUNE_DB": str(tmp_path / "results.sqlite")}
    _run([str(bindir / "edgeprune"), "compile", "--model", "zoo:digits-cnn", "--target", "host",
          "--backend", "onnxruntime", "--out", str(out), "--min-runs", "5", "--min-time", "0",
          "--warmup", "1", "--rounds", "1", "--eval-samples", "64"], cwd=tmp_path, env=env, timeout=900)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target"] == "host" and summary["backend"] == "onnxruntime"
    ort = next(b for b in summary["backends"] if b["name"] == "onnxruntime")
    assert ort["verified"] is True and ort["error"] is None
    assert ort["latency_ms"]["median"] > 0
    assert (out / "report.md").exists() and (out / "bundle" / "runner.pyz").exists()
