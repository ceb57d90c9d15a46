"""What this machine is: CPU, cores, NVIDIA GPUs, Python, numpy and which runtimes are installed.

The single CPU reader of edgeprune: the runner reports it with every result (``env``),
``devices check`` asks a board for it (``runner.pyz --probe``), and the host side
(:mod:`edgeprune.host`) imports :func:`cpu_model` and :func:`cpu_flags` from here, so a
board and the host are described by the same code.

This module imports nothing but the standard library, not even the rest of this
package: it is also sent on its own over SSH (``python - --probe`` with this file on
stdin), so a probe needs nothing uploaded and nothing cleaned up on the board.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import shutil
import subprocess
import sys

RUNNER_VERSION = 1
KNOWN_BACKENDS = ("onnxruntime", "openvino", "tvm")
#: backend -> (module to import, pip package that provides it, distributions to ask for a version)
RUNTIMES = {
    "onnxruntime": ("onnxruntime", "onnxruntime", ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino")),
    "openvino": ("openvino", "openvino", ("openvino",)),
    "tvm": ("tvm", "apache-tvm", ("apache-tvm", "tvm")),
}
#: ARM "CPU part" ids -> core names (ARM boards' /proc/cpuinfo has no model name per core)
ARM_PARTS = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd40": "Neoverse-V1", "0xd41": "Cortex-A78",
    "0xd42": "Cortex-A78AE", "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710",
    "0xd48": "Cortex-X2", "0xd49": "Neoverse-N2", "0xd4b": "Cortex-A78C", "0xd4f": "Neoverse-V2",
}


def read_text(path: str) -> str:
    """The file's text, or "" where it does not exist or cannot be read (containers, macOS)."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def cpu_model(cpuinfo: str | None = None) -> str:
    """A human-readable CPU name from /proc/cpuinfo (x86 'model name'; ARM board model + cores).

    ``cpuinfo`` is the file's text (for tests of other machines); None reads this one.
    """
    info = read_text("/proc/cpuinfo") if cpuinfo is None else cpuinfo
    fields = {}
    parts = []
    for line in info.splitlines():
        if ":" not in line:
            continue
        k, v = line.split(":", 1)
        k, v = k.strip(), v.strip()
        if k == "CPU part":
            name = ARM_PARTS.get(v.lower(), "ARM part " + v)
            if name not in parts:
                parts.append(name)
        elif k not in fields and v:
            fields[k] = v
    for key in ("model name", "cpu model", "Model", "Hardware", "Processor"):
        if key in fields:
            name = fields[key]
            if parts and key != "model name":
                name += " (" + " + ".join(parts) + ")"
            return name
    if parts:
        return " + ".join(parts)
    return platform.processor() or platform.machine()


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags: x86 'flags' (avx2, avx512f, amx_tile, ...) or ARM 'Features'
    (asimd, asimddp, sve, ...) of the first processor in /proc/cpuinfo; empty where the
    kernel does not tell. ``cpuinfo`` as in :func:`cpu_model`."""
    info = read_text("/proc/cpuinfo") if cpuinfo is None else cpuinfo
    for line in info.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


#: what ``nvidia-smi --query-gpu`` is asked about each GPU. ``--format=csv`` keeps the
#: header, so columns are read by name (``memory.total [MiB]``), not by position.
NVIDIA_SMI_QUERY = ("index", "name", "compute_cap", "memory.total", "clocks.max.sm", "driver_version")
NVIDIA_SMI_TIMEOUT_S = 15
_NOT_A_VALUE = ("[N/A]", "N/A", "[Not Supported]", "[Unknown Error]", "")


def parse_nvidia_smi(text: str) -> list[dict]:
    """One dict per GPU from ``nvidia-smi --query-gpu=... --format=csv`` output (header
    first): keys are the header's field names without their unit (``memory.total``),
    numbers with a unit (``81559 MiB``, ``1980 MHz``) become ints, ``[N/A]`` and
    ``[Not Supported]`` become None, anything else stays a string."""
    rows = [r for r in csv.reader(text.splitlines(), skipinitialspace=True) if r and any(c.strip() for c in r)]
    if not rows:
        return []
    keys = [h.strip().split(" [")[0] for h in rows[0]]
    out = []
    for row in rows[1:]:
        if len(row) != len(keys):
            continue
        gpu = {}
        for key, cell in zip(keys, row):
            cell = cell.strip()
            number = cell.split(" ")[0]
            if cell in _NOT_A_VALUE:
                gpu[key] = None
            elif key != "name" and number.isdigit() and len(cell.split(" ")) <= 2:
                gpu[key] = int(number)
            else:
                gpu[key] = cell
        out.append(gpu)
    return out


def nvidia_gpus(exe: str | None = None) -> tuple[list[dict], str | None]:
    """This machine's NVIDIA GPUs as :func:`parse_nvidia_smi` reads them, and why there
    are none (``nvidia-smi not found``, its own error line, a timeout), else None.

    nvidia-smi rather than the CUDA runtime: it needs no Python package, answers in
    milliseconds, and says in one line why the driver is not usable."""
    if exe is not None and not os.access(exe, os.X_OK):
        return [], "nvidia-smi not found at %s" % exe
    exe = exe or shutil.which("nvidia-smi")
    if exe is None:
        return [], "nvidia-smi not found"
    cmd = [exe, "--query-gpu=" + ",".join(NVIDIA_SMI_QUERY), "--format=csv"]
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, timeout=NVIDIA_SMI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return [], "nvidia-smi did not answer in %d s" % NVIDIA_SMI_TIMEOUT_S
    except OSError as exc:
        return [], "nvidia-smi: %s" % (exc.strerror or exc)
    if p.returncode != 0:
        lines = [ln.strip() for ln in (p.stdout + "\n" + p.stderr).splitlines() if ln.strip()]
        return [], "nvidia-smi: %s" % (lines[-1] if lines else "exit code %d" % p.returncode)
    gpus = parse_nvidia_smi(p.stdout)
    if not gpus:
        return [], "nvidia-smi lists no GPU"
    return gpus, None


def governor() -> str | None:
    """cpu0's cpufreq scaling governor (None where the kernel does not expose it: most VMs)."""
    g = read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").strip()
    return g or None


def dist_version(dists) -> str | None:
    """The installed version of the first of ``dists`` that is installed."""
    try:
        from importlib import metadata
    except ImportError:  # Python < 3.8
        return None
    for d in dists:
        try:
            return metadata.version(d)
        except Exception:  # noqa: BLE001 - PackageNotFoundError and broken metadata alike
            continue
    return None


def runtime_installed_version(backend: str) -> str | None:
    """Version of a runtime without importing it (TVM takes seconds to import)."""
    import importlib.util

    module, _pip, dists = RUNTIMES[backend]
    v = dist_version(dists)
    if v:
        return v
    try:
        if importlib.util.find_spec(module) is not None:
            return "unknown (importable)"
    except (ImportError, ValueError):
        pass
    return None


def base_env() -> dict:
    """The machine part of every result's ``env``."""
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "governor": governor(),
        "runner_version": RUNNER_VERSION,
    }


def probe() -> dict:
    """What ``--probe`` prints: arch, CPU (name and flags), cores, NVIDIA GPUs, Python, numpy, runtimes."""
    try:
        import numpy

        numpy_version = numpy.__version__
    except ImportError:
        numpy_version = None
    return {
        "arch": platform.machine(),
        "system": platform.system(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_flags": sorted(cpu_flags()),
        "cores": os.cpu_count(),
        "gpus": nvidia_gpus()[0],
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "numpy": numpy_version,
        "runtimes": {b: runtime_installed_version(b) for b in KNOWN_BACKENDS},
        "governor": governor(),
        "runner_version": RUNNER_VERSION,
    }


def print_probe() -> int:
    print(json.dumps(probe(), indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":  # python probe.py [--probe], or this file on stdin: python - --probe
    sys.exit(print_probe())
