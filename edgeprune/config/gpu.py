"""This machine's NVIDIA GPU, detected, never assumed: what a ``cuda_arch: auto`` target builds for.

The ``host-cuda`` target (``edgeprune/targets/host-cuda.yaml``) is *this machine's* GPU,
the way ``host`` is this machine's CPU: its CUDA architecture (``sm_90`` on an H100 /
H200), name, memory and fp32 peak are read when the target is loaded.

* Name, compute capability, memory, maximum SM clock and driver come from
  ``nvidia-smi --query-gpu`` (:func:`edgeprune.runner.probe.nvidia_gpus`: one reader for
  the host and the boards, like the CPU's).
* The number of SMs comes from the CUDA driver itself (``libcuda.so.1``,
  ``cuDeviceGetAttribute``), which every machine with a working ``nvidia-smi`` has;
  nvidia-smi does not report it. Without it the peak is unknown and the report says so.
* The fp32 peak = SMs x fp32 lanes per SM (:data:`FP32_LANES_PER_SM`, CUDA C
  Programming Guide, "Arithmetic Instructions") x the maximum SM clock x 2 (FMA). An
  H100 / H200 SXM: 132 x 128 x 1.98 GHz x 2 = 66.9 TFLOP/s, NVIDIA's published 67.

Which GPU: the one CUDA numbers 0 (what TVM's ``cuda(0)`` and ONNX Runtime's device 0
run on); with ``CUDA_VISIBLE_DEVICES`` set, the first one it names.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, replace

from edgeprune.runner.probe import nvidia_gpus

#: what to do when there is no GPU: the one line every "no GPU" error ends with
NO_GPU_HINT = "use --target host, or run on a machine with one"
#: (major, minor) compute capability -> fp32 FMA lanes per SM (results per clock per SM)
FP32_LANES_PER_SM = {
    (5, 0): 128, (5, 2): 128, (5, 3): 128, (6, 0): 64, (6, 1): 128, (6, 2): 128,
    (7, 0): 64, (7, 2): 64, (7, 5): 64, (8, 0): 64, (8, 6): 128, (8, 7): 128, (8, 9): 128,
    (9, 0): 128, (10, 0): 128, (10, 3): 128, (11, 0): 128, (12, 0): 128, (12, 1): 128,
}
_CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16


@dataclass(frozen=True)
class NvidiaGpu:
    """One NVIDIA GPU as nvidia-smi (and the CUDA driver, for ``sms``) describe it."""

    index: int
    name: str
    compute_cap: str  # "9.0"
    memory_mib: int | None = None
    max_sm_clock_mhz: int | None = None
    driver: str | None = None
    sms: int | None = None
    #: how many NVIDIA GPUs nvidia-smi listed (this one is CUDA device 0)
    count: int = 1

    @property
    def arch(self) -> str:
        """The CUDA architecture TVM builds for: ``sm_90`` for compute capability 9.0."""
        return "sm_" + self.compute_cap.replace(".", "")

    def capability(self) -> tuple[int, int]:
        major, _, minor = self.compute_cap.partition(".")
        return int(major), int(minor or 0)

    def fp32_lanes_per_sm(self) -> int | None:
        return FP32_LANES_PER_SM.get(self.capability())

    def peak_gflops(self) -> float | None:
        """fp32 peak from SMs x lanes x max SM clock x 2, or None when a factor is unknown."""
        lanes = self.fp32_lanes_per_sm()
        if not (self.sms and lanes and self.max_sm_clock_mhz):
            return None
        return self.sms * lanes * self.max_sm_clock_mhz / 1e3 * 2

    def peak_description(self) -> str:
        """How :meth:`peak_gflops` was computed, or why it is unknown, in one line."""
        peak = self.peak_gflops()
        if peak is None:
            missing = [what for what, v in (("SM count (CUDA driver)", self.sms),
                                            (f"fp32 lanes per SM of sm_{self.compute_cap}", self.fp32_lanes_per_sm()),
                                            ("max SM clock (nvidia-smi)", self.max_sm_clock_mhz)) if not v]
            return f"fp32 peak unknown: no {', '.join(missing)}; {self.describe()}"
        return (f"{self.sms} SMs x {self.fp32_lanes_per_sm()} fp32 lanes x {self.max_sm_clock_mhz / 1e3:.2f} GHz "
                f"max SM clock x 2 = {peak:.0f} GFLOP/s; {self.describe()} from nvidia-smi, SMs from the CUDA driver")

    def describe(self) -> str:
        """``NVIDIA H200 (sm_90, 143771 MiB, driver 580.159.03)``."""
        facts = [self.arch] + ([f"{self.memory_mib} MiB"] if self.memory_mib else []) + (
            [f"driver {self.driver}"] if self.driver else [])
        more = f", CUDA device 0 of {self.count}" if self.count > 1 else ""
        return f"{self.name} ({', '.join(facts)}{more})"


def gpu_from_row(row: dict, count: int = 1, sms: int | None = None) -> NvidiaGpu:
    """An :class:`NvidiaGpu` from one row of :func:`edgeprune.runner.probe.parse_nvidia_smi`;
    ValueError naming what the row lacks (an old driver reports no ``compute_cap``)."""
    cap = row.get("compute_cap")
    if not cap or not str(cap).replace(".", "").isdigit():
        raise ValueError("nvidia-smi did not report the GPU's compute capability (compute_cap needs an NVIDIA driver "
                         ">= 510)")
    name = row.get("name")
    if not name:
        raise ValueError("nvidia-smi did not report the GPU's name")

    def num(key: str) -> int | None:
        v = row.get(key)
        return v if isinstance(v, int) else None

    return NvidiaGpu(index=num("index") or 0, name=str(name), compute_cap=str(cap), memory_mib=num("memory.total"),
                     max_sm_clock_mhz=num("clocks.max.sm"), driver=row.get("driver_version") or None, sms=sms,
                     count=count)


def visible_row(rows: list[dict]) -> dict:
    """The nvidia-smi row of CUDA device 0: the first one ``CUDA_VISIBLE_DEVICES`` names
    (an index; a UUID or MIG id is matched by nothing here, so the first row is taken)."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    if first.isdigit():
        for row in rows:
            if row.get("index") == int(first):
                return row
    return rows[0]


def cuda_sm_count(ordinal: int = 0) -> int | None:
    """SMs of CUDA device ``ordinal`` from the CUDA driver API, or None without a driver.

    ``cuInit`` starts no context and allocates nothing on the GPU."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    dev, value = ctypes.c_int(), ctypes.c_int()
    try:
        if lib.cuInit(0) != 0 or lib.cuDeviceGet(ctypes.byref(dev), ordinal) != 0:
            return None
        if lib.cuDeviceGetAttribute(ctypes.byref(value), _CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev) != 0:
            return None
    except AttributeError:  # not the CUDA driver
        return None
    return int(value.value) or None


def detect_gpu(exe: str | None = None) -> tuple[NvidiaGpu | None, str | None]:
    """(this machine's GPU, None) or (None, why there is none), e.g. ``nvidia-smi not found``."""
    rows, why = nvidia_gpus(exe)
    if not rows:
        return None, why
    try:
        gpu = gpu_from_row(visible_row(rows), count=len(rows))
    except ValueError as exc:
        return None, str(exc)
    return replace(gpu, sms=cuda_sm_count(0)), None


def no_gpu_message(target: str, why: str) -> str:
    """The one line a GPU target without a GPU fails with."""
    return f"target {target}: no NVIDIA GPU found ({why}): {NO_GPU_HINT}"
