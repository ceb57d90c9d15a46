"""Where edgeprune keeps things on disk: one function per place, one environment variable.

* ``$EDGEPRUNE_CACHE`` (default ``~/.cache/edgeprune``) is the root of everything
  edgeprune measures or trains and may reuse later: ``lut/`` (latency tables),
  ``models/`` (trained zoo weights), ``tuning/`` (TVM tuning databases,
  ``$EDGEPRUNE_TUNING_DIR`` overrides just that one), ``locks/``.
* Data that ships inside the package (targets, templates, the on-device runner) is
  found through :mod:`importlib.resources`, so a wheel installed anywhere finds it:
  :func:`package_data`.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

CACHE_ENV = "EDGEPRUNE_CACHE"


def cache_root() -> Path:
    """``$EDGEPRUNE_CACHE`` or ``~/.cache/edgeprune``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgeprune"


def cache_dir(name: str) -> Path:
    """One kind of cached data under :func:`cache_root` (``lut``, ``models``, ``tuning``...)."""
    return cache_root() / name


def package_data(*parts: str) -> Path:
    """A file or folder shipped inside the ``edgeprune`` package (e.g. ``targets``).

    Installed packages live on a real filesystem (wheel or editable install), so the
    traversable is a plain path; zipped installs are not supported.
    """
    return Path(str(resources.files("edgeprune").joinpath(*parts)))
