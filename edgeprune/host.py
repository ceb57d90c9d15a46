"""What this machine's CPU is and can do: the one place the host side asks.

Everything edgeprune says about the host comes from here: the CPU name and flags (read
by :mod:`edgeprune.runner.probe`, the single /proc/cpuinfo reader, so the host and a
board are described by the same code), core counts, how busy other processes keep it,
and what the flags mean for the roofline: SIMD register width, FMA datapath width and
units, int8/bf16 instructions, the clock. The ``host`` target
(:mod:`edgeprune.config.targets`) is resolved from :func:`host_cpu` every time it is
loaded: the machines of this project change CPU between sessions (an AMD Zen 4, an
Intel Xeon with AVX-512 and AMX, an AVX2-only EPYC VM), and a hard-coded 256-bit vector
made the host roofline read 227 % on the Xeon.

What the flags say, and what they cannot (:func:`simd_from_flags`):

* ``avx512f`` -> 512-bit registers and, on Intel, two 512-bit FMA units (Skylake-SP
  Gold/Platinum, Ice Lake, Sapphire Rapids; the one-unit parts cannot be told from
  flags). AMD Zen 4 has AVX-512 registers but runs them as two 256-bit FMA halves: an
  ``avx512f`` CPU with the AMD-only ``sse4a`` flag and without ``avx512_vp2intersect``
  (which Zen 5, with full 512-bit datapaths, added) counts as 2 x 256-bit units.
* ``avx2`` / ``avx`` -> 256-bit; two FMA units with ``fma`` (Haswell and newer, Zen),
  otherwise one multiply and one add pipe, counted as one FMA unit.
* ``asimd`` / ``neon`` (aarch64) -> 128-bit NEON, two FMA units (Cortex-A76 and newer,
  Neoverse); SVE's vector length is not in the flags, so SVE machines count as NEON.
* anything else -> 128-bit SSE, one unit.
* int8: ``avx512_vnni``, ``avx_vnni``, ``amx_int8``, ARM ``asimddp``/``i8mm``; bf16:
  ``avx512_bf16``, ``amx_bf16``, ARM ``bf16``. Reported as capabilities (the report
  says what an INT8 build could use); the fp32 roofline does not count them.

The clock is *nominal* (:func:`nominal_clock`): cpufreq's ``base_frequency``, else the
"@ 2.10GHz" of the model name, else /proc/cpuinfo's ``cpu MHz`` (what a VM reports as
its nominal clock), else cpufreq's ``cpuinfo_max_freq``. CPUs boost above the nominal
clock (a Zen 4 VM ran resnet18 at ~218 GFLOP/s against a 166 GFLOP/s nominal peak), so
roofline fractions can pass 100 %; a target file's ``clock_ghz`` can state the all-core
boost clock for a true peak.
"""

from __future__ import annotations

import os
import platform
import re
import time
from dataclasses import dataclass, field
from functools import lru_cache

from edgeprune.runner.probe import cpu_flags as _probe_flags
from edgeprune.runner.probe import cpu_model as _probe_model
from edgeprune.runner.probe import read_text

#: flags worth passing on as target features ("+avx2"); LLVM names are the TVM backend's job
FEATURE_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "neon", "asimd", "asimddp")
#: flag -> name of an int8 / bf16 instruction set it provides
INT8_FLAGS = {"avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI", "amx_int8": "AMX-INT8",
              "asimddp": "NEON dot product", "i8mm": "I8MM"}
BF16_FLAGS = {"avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16", "bf16": "BF16"}

_CPUFREQ = "/sys/devices/system/cpu/cpu0/cpufreq"
DEFAULT_CLOCK_GHZ = 2.0  # when nothing says: a guess, and the clock's source says so


@dataclass(frozen=True)
class Simd:
    """What the CPU flags say about vector arithmetic (see the module docstring)."""

    isa: str  # "AVX-512", "AVX2", "AVX", "NEON", "SSE"
    register_bits: int  # width of one vector register: the step latency staircases follow
    vector_bits: int  # width of one FMA unit's datapath: what the roofline counts
    fma_units: int
    int8: tuple[str, ...] = ()
    bf16: tuple[str, ...] = ()

    @property
    def fp32_lanes(self) -> int:
        """fp32 lanes of one register."""
        return self.register_bits // 32


@dataclass(frozen=True)
class Clock:
    ghz: float
    source: str  # where the number came from, for the peak's description


@dataclass(frozen=True)
class HostCpu:
    """This machine's CPU, as the roofline and the reports see it."""

    model: str
    arch: str  # platform.machine(): x86_64, aarch64
    flags: frozenset[str] = field(repr=False)
    cores: int
    simd: Simd
    clock: Clock

    def features(self) -> list[str]:
        """The flags targets care about, as ``+flag`` (``+avx2``, ``+avx512f``, ``+neon``)."""
        return [f"+{f}" for f in FEATURE_FLAGS if f in self.flags]


def simd_from_flags(flags: set[str] | frozenset[str]) -> Simd:
    """Register width, FMA datapath width and units, int8/bf16 sets from CPU flags alone."""
    int8 = tuple(name for flag, name in INT8_FLAGS.items() if flag in flags)
    bf16 = tuple(name for flag, name in BF16_FLAGS.items() if flag in flags)
    if "avx512f" in flags:
        zen4 = "sse4a" in flags and "avx512_vp2intersect" not in flags
        return Simd("AVX-512", 512, 256 if zen4 else 512, 2, int8, bf16)
    if "avx2" in flags or "avx" in flags:
        return Simd("AVX2" if "avx2" in flags else "AVX", 256, 256, 2 if "fma" in flags else 1, int8, bf16)
    if "asimd" in flags or "neon" in flags:
        return Simd("NEON", 128, 128, 2, int8, bf16)
    return Simd("SSE", 128, 128, 1, int8, bf16)


def cpu_model() -> str:
    """This machine's CPU name (x86 'model name'; ARM board model + core names)."""
    return _cpuinfo_facts()[0]


def cpu_flags() -> frozenset[str]:
    """This machine's CPU flags (x86 'flags' or ARM 'Features' of /proc/cpuinfo)."""
    return _cpuinfo_facts()[1]


@lru_cache(maxsize=1)
def _cpuinfo_facts() -> tuple[str, frozenset[str], float | None]:
    """/proc/cpuinfo read once: (model, flags, 'cpu MHz' or None)."""
    text = read_text("/proc/cpuinfo")
    mhz = None
    m = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", text, re.MULTILINE)
    if m:
        mhz = float(m.group(1))
    return _probe_model(text), frozenset(_probe_flags(text)), mhz


def cores() -> int:
    """Logical CPUs of the machine (what the roofline and the target's ``cores: auto`` count)."""
    return os.cpu_count() or 1


def usable_cores() -> int:
    """Cores this process may run on (affinity-aware; containers often restrict it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return cores()


def _khz_file(name: str) -> float | None:
    text = read_text(f"{_CPUFREQ}/{name}").strip()
    try:
        return float(text) / 1e6 if text else None
    except ValueError:
        return None


@lru_cache(maxsize=1)
def nominal_clock() -> Clock:
    """The nominal clock and where it was read (order in the module docstring)."""
    base = _khz_file("base_frequency")
    if base:
        return Clock(base, "cpufreq base_frequency")
    m = re.search(r"@\s*([0-9.]+)\s*GHz", cpu_model())
    if m:
        return Clock(float(m.group(1)), "the CPU model name")
    mhz = _cpuinfo_facts()[2]
    if mhz:
        return Clock(mhz / 1000.0, "'cpu MHz' in /proc/cpuinfo")
    top = _khz_file("cpuinfo_max_freq")
    if top:
        return Clock(top, "cpufreq cpuinfo_max_freq (the boost clock)")
    return Clock(DEFAULT_CLOCK_GHZ, "a default: the machine does not tell")


@lru_cache(maxsize=1)
def host_cpu() -> HostCpu:
    """This machine's CPU facts (read once per process)."""
    flags = cpu_flags()
    machine = {"arm64": "aarch64", "AMD64": "x86_64"}.get(platform.machine(), platform.machine())
    return HostCpu(model=cpu_model(), arch=machine, flags=flags, cores=cores(), simd=simd_from_flags(flags), clock=nominal_clock())


def _cpu_times() -> tuple[int, int]:
    """(total, idle) jiffies over all CPUs, from the first line of /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields), idle


def busy_cores(sample_s: float = 0.5) -> float:
    """CPUs kept busy by *other* processes, sampled over ``sample_s`` while the caller waits.

    The 1-minute load average is the obvious measure and the wrong one: it still counts
    the inference threads edgeprune itself ran a moment ago (after profiling a table on
    2 threads it reads ~2-6 on an otherwise idle 2-core host), so it warned about "a busy
    machine" that was only busy with us, and made training fall back to one thread.
    Sampling ``/proc/stat`` while this process sleeps measures the others only. Falls
    back to the load average where /proc/stat does not exist (not Linux).
    """
    n = cores()
    try:
        total0, idle0 = _cpu_times()
        time.sleep(sample_s)
        total1, idle1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        try:
            return float(os.getloadavg()[0])
        except (AttributeError, OSError):  # pragma: no cover - neither (Windows)
            return 0.0
    total = total1 - total0
    if total <= 0:
        return 0.0
    return max(0.0, (1.0 - (idle1 - idle0) / total) * n)
