"""Host side: the runner as one file for a bundle (``runner.pyz``), and the probe for stdin.

The zipapp holds this package's modules (not this one: it is host-only) under the name
``edgeprune_runner`` and a ``__main__`` that calls its CLI, so ``python runner.pyz ...``
runs it on any Python >= 3.8 with nothing installed but numpy and a runtime. The zip is
built deterministically (fixed timestamps, sorted entries): the same edgeprune writes
byte-identical runners, so bundles built twice do not differ.
"""

from __future__ import annotations

import io
import os
import zipfile
from importlib import resources
from pathlib import Path

RUNNER_FILE = "runner.pyz"
#: the package's name inside the zipapp
ZIP_PACKAGE = "edgeprune_runner"
_HOST_ONLY = ("ship.py",)
_MAIN = ("# edgeprune on-device benchmark runner: python runner.pyz BUNDLE_DIR | --probe\n"
         "import sys\n\nfrom %s.cli import main\n\nsys.exit(main())\n" % ZIP_PACKAGE)
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip can hold


def _sources(folder, prefix: str):
    """(path inside the zip, bytes) of every module under ``folder``, sorted."""
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        name = prefix + "/" + entry.name
        if entry.is_dir():
            if entry.name != "__pycache__":
                yield from _sources(entry, name)
        elif entry.name.endswith(".py") and entry.name not in _HOST_ONLY:
            yield name, entry.read_bytes()


def zipapp_bytes() -> bytes:
    """The runner zipapp: a ``#!/usr/bin/env python3`` line, then the zip."""
    buf = io.BytesIO()
    buf.write(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        files = [("__main__.py", _MAIN.encode())] + list(_sources(resources.files(__package__), ZIP_PACKAGE))
        for name, data in files:
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, data)
    return buf.getvalue()


def write_runner(bundle_dir: Path) -> Path:
    """Write ``runner.pyz`` into ``bundle_dir`` (atomically, executable); its path."""
    path = Path(bundle_dir) / RUNNER_FILE
    tmp = path.with_name(RUNNER_FILE + ".tmp")
    tmp.write_bytes(zipapp_bytes())
    os.chmod(tmp, 0o755)
    tmp.replace(path)
    return path


def probe_source() -> bytes:
    """The probe module's source, to run as ``python - --probe`` with it on stdin (a probe
    then needs nothing uploaded to, or cleaned up on, the device)."""
    return resources.files(__package__).joinpath("probe.py").read_bytes()
