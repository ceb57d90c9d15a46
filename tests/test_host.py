"""edgeprune.host: this machine's CPU facts, and the host target built from them."""

import subprocess
import sys

import pytest

from edgeprune.config.targets import get_target, load_target_file
from edgeprune.host import Clock, HostCpu, busy_cores, cpu_flags, cpu_model, host_cpu, simd_from_flags
from edgeprune.paths import package_data

SKYLAKE_SP = {"sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"}
SAPPHIRE_RAPIDS = SKYLAKE_SP | {"avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "avx_vnni"}
ZEN4 = {"sse4_2", "sse4a", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"}
ZEN3 = {"sse4_2", "sse4a", "avx", "avx2", "fma"}
SANDY_BRIDGE = {"sse4_2", "avx"}
CORTEX_A76 = {"fp", "asimd", "asimddp"}


def test_a_spinning_process_is_seen_as_busy_cpu():
    """busy_cores() sees other processes' CPU use now, not our own past work (the load average did)."""
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()+5\nwhile time.time()<t: pass"])
    try:
        assert busy_cores(0.5) >= 0.5  # one core spinning (plus whatever else runs)
    finally:
        spinner.kill()
        spinner.wait()


@pytest.mark.parametrize(("flags", "isa", "register_bits", "vector_bits", "fma_units"), [
    (SAPPHIRE_RAPIDS, "AVX-512", 512, 512, 2),
    (SKYLAKE_SP, "AVX-512", 512, 512, 2),
    (ZEN4, "AVX-512", 512, 256, 2),  # AVX-512 registers on two 256-bit FMA halves
    (ZEN4 | {"avx512_vp2intersect"}, "AVX-512", 512, 512, 2),  # Zen 5: full-width datapaths
    (ZEN3, "AVX2", 256, 256, 2),
    (SANDY_BRIDGE, "AVX", 256, 256, 1),
    (CORTEX_A76, "NEON", 128, 128, 2),
    ({"sse4_2"}, "SSE", 128, 128, 1),
])
def test_simd_width_and_fma_units_follow_the_flags(flags, isa, register_bits, vector_bits, fma_units):
    simd = simd_from_flags(flags)
    assert (simd.isa, simd.register_bits, simd.vector_bits, simd.fma_units) == (isa, register_bits, vector_bits, fma_units)


def test_int8_and_bf16_instructions_are_reported():
    spr = simd_from_flags(SAPPHIRE_RAPIDS)
    assert {"AMX-INT8", "AVX512-VNNI", "AVX-VNNI"} <= set(spr.int8)
    assert {"AMX-BF16", "AVX512-BF16"} <= set(spr.bf16)
    assert simd_from_flags(ZEN3).int8 == () and simd_from_flags(ZEN3).bf16 == ()
    assert simd_from_flags(CORTEX_A76).int8 == ("NEON dot product",)


def _cpu(flags: set[str], cores: int = 2, ghz: float = 3.0, arch: str = "x86_64") -> HostCpu:
    return HostCpu(model="test CPU", arch=arch, flags=frozenset(flags), cores=cores, simd=simd_from_flags(flags),
                   clock=Clock(ghz, "a test"))


def test_the_host_target_vector_width_follows_the_cpu_flags():
    """The roofline of `host` comes from the CPU it runs on, never from the file (issue 15:
    a hard-coded 256-bit vector read 227 % of peak on an AVX-512 Xeon)."""
    def host_on(cpu: HostCpu):
        return load_target_file(package_data("targets", "host.yaml"), cpu)

    xeon = host_on(_cpu(SAPPHIRE_RAPIDS))
    assert (xeon.vector_bits, xeon.fma_units, xeon.fp32_lanes(), xeon.cores) == (512, 2, 16, 2)
    assert xeon.peak_gflops() == pytest.approx(2 * 3.0 * 2 * 16 * 2)
    assert "AMX-INT8" in xeon.int8 and "AMX-BF16" in xeon.bf16
    assert "+avx512f" in xeon.features
    desc = xeon.peak_description()
    assert "2 cores x 3.00 GHz nominal x 2 FMA x 16 fp32 lanes x 2 = 384 GFLOP/s" in desc
    assert "AVX-512" in desc and "/proc/cpuinfo" in desc

    zen4 = host_on(_cpu(ZEN4))
    assert (zen4.vector_bits, zen4.fp32_lanes()) == (256, 16)
    assert zen4.peak_gflops() == pytest.approx(xeon.peak_gflops() / 2)

    zen3 = host_on(_cpu(ZEN3))
    assert (zen3.vector_bits, zen3.fma_units, zen3.fp32_lanes()) == (256, 2, 8)
    arm = host_on(_cpu(CORTEX_A76, cores=4, arch="aarch64"))
    assert (arm.arch, arm.triple, arm.vector_bits, arm.fp32_lanes()) == ("aarch64", "aarch64-linux-gnu", 128, 4)


def test_this_machines_host_target_is_detected():
    t = get_target("host")
    cpu = host_cpu()
    assert t.vector_bits == cpu.simd.vector_bits and t.fma_units == cpu.simd.fma_units
    assert t.clock_ghz == cpu.clock.ghz and t.num_cores() == cpu.cores
    assert t.detected and cpu.model in t.detected
    assert cpu_model() == cpu.model and cpu_flags() == cpu.flags


def test_a_board_target_keeps_its_file_numbers_and_says_so():
    rpi4 = get_target("rpi4")
    assert rpi4.detected is None and rpi4.detected_on(_cpu(SAPPHIRE_RAPIDS)) == rpi4
    assert rpi4.peak_description().startswith("4 cores x 1.50 GHz nominal x 1 FMA x 4 fp32 lanes x 2 = 48 GFLOP/s")
    assert "rpi4.yaml" in rpi4.peak_description()
    assert "published" in get_target("jetson-orin-nano").peak_description()
