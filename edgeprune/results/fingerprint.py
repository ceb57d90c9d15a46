"""The environment a number was measured in, and the *series* it belongs to.

A latency is only comparable with latencies measured on the same machine with the same
software: a new CPU, a different frequency governor, a kernel update or a new runtime
version changes the numbers without anything being wrong. Such a change starts a new
*series*; regression detection compares only within a series, so an upgrade is reported
as a series break ("onnxruntime 1.31.0 -> 1.32.0"), never as a false regression.

Two fingerprints exist:

- the *run* fingerprint (:func:`collect`, merged with what the on-device runner reports):
  machine + OS + Python + library versions, hashed into ``runs.env_hash``;
- the *series* key of one measurement (:func:`series_key`): the machine part of the
  device's fingerprint plus the measured backend's own runtime version and thread count.
  Upgrading numpy on the host does not break the OpenVINO series of a Raspberry Pi.

Volatile facts (hostname of a container, load, time) are recorded but never hashed.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgeprune.host import cpu_model

#: the keys of a fingerprint that say *which machine* (the series depends on them)
#: (``platform`` is Python's platform.platform(): OS, kernel release and libc in one string)
MACHINE_KEYS = ("cpu_model", "arch", "cores", "governor", "platform", "python")
#: libraries whose versions are recorded with every run
LIBRARIES = ("numpy", "onnxruntime", "openvino", "apache-tvm", "torch", "onnx", "scipy")

# what the on-device runner (or older rows) may call a key -> our name
_ALIASES = {
    "cpu": "cpu_model",
    "cpu_name": "cpu_model",
    "model_name": "cpu_model",
    "processor": "cpu_model",
    "machine": "arch",
    "cpu_count": "cores",
    "ncpu": "cores",
    "nproc": "cores",
    "logical_cores": "cores",
    "scaling_governor": "governor",
    "cpu_governor": "governor",
    "system": "os",
    "release": "kernel",
    "kernel_release": "kernel",
    "python_version": "python",
}


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def governor() -> str | None:
    """The cpufreq scaling governor of cpu0 (None when the kernel does not expose it,
    e.g. in most containers and VMs)."""
    return _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")


def distro() -> str | None:
    text = _read("/etc/os-release") or ""
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return None


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str]:
    """Installed versions from package metadata (does not import the heavy packages)."""
    from importlib import metadata

    out = {}
    for n in names:
        try:
            out[n.replace("apache-", "")] = metadata.version(n)
        except metadata.PackageNotFoundError:
            continue
    return out


def collect() -> dict[str, Any]:
    """The fingerprint of this machine and Python environment."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        affinity = None
    mem = None
    meminfo = _read("/proc/meminfo") or ""
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            mem = round(int(line.split()[1]) / 2**20, 1)
    return {
        "cpu_model": cpu_model(),
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "governor": governor(),
        "platform": platform.platform(),
        "os": platform.system(),
        "kernel": platform.release(),
        "distro": distro(),
        "python": platform.python_version(),
        "memory_gb": mem,
        "hostname": platform.node(),
        "libraries": library_versions(),
    }


def normalize(env: Mapping[str, Any] | None) -> dict[str, Any]:
    """Canonical key names for a fingerprint reported by any runner version."""
    out: dict[str, Any] = {}
    for k, v in (env or {}).items():
        key = _ALIASES.get(k, k)
        if key in out and out[key] is not None and k != key:
            continue  # the canonical name wins over an alias
        out[key] = v
    if "cores" in out and out["cores"] is not None:
        try:
            out["cores"] = int(out["cores"])
        except (TypeError, ValueError):
            pass
    return out


def merge(device_env: Mapping[str, Any] | None, host_env: Mapping[str, Any] | None, local: bool) -> dict[str, Any]:
    """The fingerprint of a measurement: what the device reported, completed with the
    host's facts only when the device *is* this host."""
    dev = normalize(device_env)
    if not local:
        return dev
    merged = dict(normalize(host_env))
    libs = dict(merged.get("libraries") or {})
    libs.update(dev.get("libraries") or {})
    merged.update({k: v for k, v in dev.items() if v is not None})
    if libs:
        merged["libraries"] = libs
    return merged


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def machine(env: Mapping[str, Any]) -> dict[str, Any]:
    e = normalize(env)
    return {k: e.get(k) for k in MACHINE_KEYS}


def env_hash(env: Mapping[str, Any]) -> str:
    """Hash of a run fingerprint: machine keys plus every recorded library version."""
    e = normalize(env)
    return _digest({"machine": machine(e), "libraries": e.get("libraries") or {}})


def series_key(env: Mapping[str, Any], backend: str, backend_version: str | None, threads: int | None) -> str:
    """Hash of what makes two latencies of one cell comparable."""
    return _digest({"machine": machine(env), "backend": backend, "version": backend_version, "threads": threads})


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human lines for what changed between two fingerprints (series-relevant keys and
    library versions), e.g. ``["kernel 6.1.0 -> 6.8.0", "onnxruntime 1.31.0 -> 1.32.0"]``."""
    a, b = normalize(old), normalize(new)
    lines = [f"{k} {a.get(k)} -> {b.get(k)}" for k in MACHINE_KEYS if a.get(k) != b.get(k)]
    la, lb = a.get("libraries") or {}, b.get("libraries") or {}
    for lib in sorted(set(la) | set(lb)):
        if la.get(lib) != lb.get(lib):
            lines.append(f"{lib} {la.get(lib, 'absent')} -> {lb.get(lib, 'absent')}")
    return lines
