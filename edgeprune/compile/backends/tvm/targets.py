"""What TVM is told about a target: the LLVM / CUDA / OpenCL target dict, the cross
compiler that links the ``.so``, and the TVM version.

These are the facts that identify a build, so the tuning database key
(``records.target_key``) hashes exactly what :func:`target_dict` returns: a change here
changes which records a build finds.
"""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING, Any

from edgeprune.compile.backends.base import dist_version

if TYPE_CHECKING:
    from edgeprune.config.targets import Target

NAME = "tvm"

#: /proc/cpuinfo flag names -> LLVM feature names (only where they differ or matter)
_LLVM_FEATURES = {
    "+sse4_2": "+sse4.2",
    "+avx512_vnni": "+avx512vnni",
    "+asimd": "+neon",
    "+asimddp": "+dotprod",
}

#: x86 extensions a CPU *name* implies but a VM may hide (the hypervisor masks their CPUID
#: bits): LLVM feature -> /proc/cpuinfo flag. Turning off the root turns off what depends
#: on it in LLVM (``-avx512f`` clears every AVX-512 extension, ``-amx-tile`` every AMX one).
#: LLVM feature -> /proc/cpuinfo flag, for the extensions a VM may hide from a CPU whose
#: model LLVM still recognises (seen: an EPYC VM reported as znver4 without AVX-512 and
#: GFNI; code using either died with SIGILL). Turning off avx512f turns off its family.
_MASKABLE = {"avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c", "bmi": "bmi1", "bmi2": "bmi2",
             "adx": "adx", "movbe": "movbe", "sha": "sha_ni", "gfni": "gfni", "vaes": "vaes",
             "vpclmulqdq": "vpclmulqdq", "avxvnni": "avx_vnni", "avx512f": "avx512f", "amx-tile": "amx_tile"}


def tvm_version() -> str:
    """The installed apache-tvm version (a BackendError with a pip hint if there is none)."""
    return dist_version(NAME, ("apache-tvm", "tvm"), "apache-tvm")


def llvm_features(features: list[str]) -> list[str]:
    """Target CPU flags in LLVM's spelling, de-duplicated, order kept."""
    out: list[str] = []
    for f in features:
        g = _LLVM_FEATURES.get(f, f)
        if g not in out:
            out.append(g)
    return out


def hidden_features(cpu: str, flags: set[str] | frozenset[str]) -> list[str]:
    """``-feature`` for every extension LLVM's ``cpu`` implies that this host's flags lack.

    LLVM names the host CPU from its family and model (``znver4``), not from what the CPU
    may run: an AMD EPYC VM whose hypervisor hides AVX-512 is still ``znver4``, and code
    built for it died with SIGILL (measured: every tuning candidate and ``model.so``). Empty
    when the flags are unknown (no /proc/cpuinfo) or nothing is hidden, so a host whose CPU
    name is the whole truth keeps the plain ``mcpu`` target (and its tuning records).
    """
    if not flags:
        return []
    import tvm
    from tvm.target import codegen

    implied = codegen.llvm_get_cpu_features(tvm.target.Target({"kind": "llvm", "mcpu": cpu}))
    return [f"-{feat}" for feat, flag in _MASKABLE.items() if feat in implied and flag not in flags]


def cpu_target(target: "Target", with_cores: bool = True) -> dict[str, Any]:
    """The LLVM target dict for the target's CPU.

    The host asks LLVM for its own CPU name (it knows the micro-architecture better than a
    flag list), minus the extensions this machine hides (:func:`hidden_features`); only
    when LLVM says ``generic`` are the detected SIMD features passed.
    """
    import tvm

    from edgeprune.host import cpu_flags

    d: dict[str, Any] = {"kind": "llvm"}
    if target.is_host:
        cpu = tvm.target.codegen.llvm_get_system_cpu()
        d["mcpu"] = cpu
        if cpu == "generic":
            feats = llvm_features(target.resolved_features())
            if feats:
                d["mattr"] = feats
        else:
            hidden = hidden_features(cpu, cpu_flags())
            if hidden:
                d["mattr"] = hidden
    else:
        d["mtriple"] = target.triple
        d["mcpu"] = target.cpu
        feats = llvm_features(target.resolved_features())
        if feats:
            d["mattr"] = feats
    if with_cores:
        d["num-cores"] = target.num_cores()
    return d


def target_dict(target: "Target") -> dict[str, Any]:
    """The ``tvm.target.Target`` dict (plain ``"llvm -mcpu=..."`` strings are rejected by TVM 0.27)."""
    opts = target.options_for(NAME)
    if target.accelerator == "cuda":
        return {"kind": "cuda", "arch": target.cuda_arch, "host": cpu_target(target, with_cores=False)}
    if target.accelerator == "opencl":
        return {"kind": "opencl", "device": opts.get("device", "mali"),
                "host": cpu_target(target, with_cores=False)}
    return cpu_target(target)


def cross_compiler(target: "Target") -> str | None:
    """Compiler command for linking the .so, or None for the host's own."""
    if target.arch == platform.machine():
        return None
    return str(target.options_for(NAME).get("cross_compiler") or f"{target.arch}-linux-gnu-g++")


def apt_package(compiler: str) -> str:
    """The Debian package of a cross compiler, for the 'not installed' hint.

    ``aarch64-linux-gnu-g++`` -> ``g++-aarch64-linux-gnu``;
    ``x86_64-linux-gnu-g++`` -> ``g++-x86-64-linux-gnu``.
    """
    prefix = compiler[: -len("-g++")] if compiler.endswith("-g++") else compiler
    return "g++-" + prefix.replace("_", "-")
