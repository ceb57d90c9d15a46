"""What a device needs to run bundles, and how to install what it lacks.

Input is the device's probe (``runner.pyz --probe``). Runtimes are pinned to the host's
versions where the artifact format demands it: a TVM ``.so`` only loads into the TVM
runtime it was built with, and OpenVINO IR is read best by the same release. ONNX files
are portable, so ONNX Runtime is not pinned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

#: backend -> (python module on the device, pip distributions, pin to the host's version?)
RUNTIMES: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "onnxruntime": ("onnxruntime", ("onnxruntime",), False),
    "openvino": ("openvino", ("openvino",), True),
    "tvm": ("tvm", ("apache-tvm", "apache-tvm-ffi"), True),
}
BASE = ("numpy",)  # the runner itself needs only numpy


def _host_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def pip_specs(backend: str) -> list[str]:
    _, dists, pin = RUNTIMES[backend]
    out = []
    for d in dists:
        v = _host_version(d) if pin else None
        out.append(f"{d}=={v}" if v else d)
    return out


def install_hint(backends: list[str], python: str, with_numpy: bool = False) -> str:
    import shlex

    specs = (["numpy"] if with_numpy else []) + [s for b in backends for s in pip_specs(b)]
    return shlex.join([python, "-m", "pip", "install", *specs])


def _runtimes_of(probe: dict[str, Any]) -> dict[str, str | None]:
    """backend -> version or None, tolerant of the probe's exact layout."""
    raw = probe.get("runtimes") or {}
    out: dict[str, str | None] = {}
    for backend, (module, _, _) in RUNTIMES.items():
        info = raw.get(backend, raw.get(module))
        if isinstance(info, dict):
            ok = info.get("available", info.get("ok", info.get("version") is not None))
            out[backend] = (info.get("version") or "unknown version") if ok else None
        elif isinstance(info, str):
            out[backend] = info
        else:
            out[backend] = None
    return out


def _numpy_of(probe: dict[str, Any]) -> str | None:
    v = probe.get("numpy")
    if isinstance(v, dict):
        return v.get("version")
    if v is None:
        v = (probe.get("packages") or {}).get("numpy")
    return v


def missing_runtimes(probe: dict[str, Any], backends: list[str], python: str) -> dict[str, str]:
    """backend -> install command, for each of ``backends`` the device cannot run."""
    have = _runtimes_of(probe)
    numpy_missing = _numpy_of(probe) is None and "numpy" in probe
    out = {}
    for b in backends:
        if b not in RUNTIMES:
            continue
        if have.get(b) is None or numpy_missing:
            out[b] = "install: " + install_hint([b], python, with_numpy=numpy_missing)
    return out


@dataclass
class DeviceCheck:
    """The readable outcome of ``edgeprune devices check`` for one device."""

    name: str
    address: str
    ok: bool
    emulated: bool = False
    error: str | None = None
    arch: str | None = None
    cpu: str | None = None
    python: str | None = None
    numpy: str | None = None
    runtimes: dict[str, str | None] = field(default_factory=dict)
    target: str | None = None
    target_arch: str | None = None
    missing: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    probe: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def assess(name: str, address: str, probe: dict[str, Any], python: str, target=None,
           emulated: bool = False) -> DeviceCheck:
    """Turn a probe into what is there, what is missing for the device's target, and how to fix it."""
    runtimes = _runtimes_of(probe)
    numpy_v = _numpy_of(probe)
    py = probe.get("python")
    if isinstance(py, dict):
        py = py.get("version")
    chk = DeviceCheck(
        name=name, address=address, ok=True, emulated=emulated,
        arch=probe.get("arch") or probe.get("machine"), cpu=probe.get("cpu") or probe.get("cpu_model"),
        python=py, numpy=numpy_v, runtimes=runtimes, probe=probe,
    )
    wanted = list(RUNTIMES)
    if target is not None:
        chk.target, chk.target_arch = target.name, target.arch
        wanted = [b for b in target.backends if b in RUNTIMES]
        arch = (chk.arch or "").lower()
        norm = {"arm64": "aarch64", "amd64": "x86_64"}.get(arch, arch)
        if norm and target.arch and norm != target.arch and not target.is_host:
            chk.warnings.append(f"device arch is {chk.arch} but target {target.name} is {target.arch}")
    if numpy_v is None:
        chk.missing["numpy"] = "install: " + install_hint([], python, with_numpy=True)
    for b in wanted:
        if runtimes.get(b) is None:
            chk.missing[b] = "install: " + install_hint([b], python)
        elif RUNTIMES[b][2]:
            host = _host_version(RUNTIMES[b][1][0])
            dev_v = runtimes[b]
            if host and dev_v and not _same_release(host, dev_v):
                chk.warnings.append(
                    f"{b} {dev_v} on the device, {host} on this host: artifacts may not load; "
                    + install_hint([b], python)
                )
    return chk


def _same_release(a: str, b: str) -> bool:
    def norm(v: str) -> str:
        return v.split("+")[0].split(".post")[0].split("-")[0]

    return norm(a) == norm(b)
