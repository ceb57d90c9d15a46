"""The precision a job runs at: read from the job, checked against the device's CPU.

One source of truth: ``options["precision"]`` of a job, written on the host when the
artifact is built or adopted (``Backend.runtime_options``) and carried unchanged by
every path that times it (compile, bench ``--artifact``, the profiler's layer bundles,
nightly re-measurement). The loaders set it explicitly, every time: an OpenVINO job
without it would otherwise run the CPU plugin's *default* precision, bfloat16 on an
AMX host, f16 on an ARM board with FP16 arithmetic, while claiming fp32.

Reduced float precisions run only where the CPU executes them natively
(:data:`NATIVE_FLAGS`, the CPU flags of /proc/cpuinfo as :mod:`..probe` reads them).
OpenVINO itself is no guide: asked for bf16 on an AVX2-only CPU it silently compiles
f32, and on an AVX-512 CPU without AVX512-BF16 it *emulates* bf16 (slower than f32).
So a job refuses a precision its CPU lacks, with the missing instruction sets named,
and the loader reads back what the runtime compiled and refuses a silent fallback.

This module is the table the host side checks too (before any export), so the host and
the device cannot disagree about what a CPU can run.
"""

from __future__ import annotations

import platform

from ..errors import JobError

#: every precision a job can name; "fp32" when a job names none
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
DEFAULT_PRECISION = "fp32"
#: reduced float precision -> {machine: {cpu flag: instruction set}}: any one flag runs it
#: natively. OpenVINO's CPU plugin has no bf16 kernels on ARM; FP16 on ARM needs the
#: ARMv8.2 half-precision arithmetic (``asimdhp``).
NATIVE_FLAGS = {
    "bf16": {"x86_64": {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16"}},
    "fp16": {"x86_64": {"amx_fp16": "AMX-FP16", "avx512_fp16": "AVX512-FP16"},
             "aarch64": {"asimdhp": "ARMv8.2 FP16 arithmetic (asimdhp)"}},
}
#: OpenVINO's spelling of INFERENCE_PRECISION_HINT values (int8 QDQ models keep f32 for
#: the layers that are not quantized)
OV_HINTS = {"fp32": "f32", "int8": "f32", "bf16": "bf16", "fp16": "f16"}
OV_NAMES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}


def job_precision(options: dict) -> str:
    """The precision a job asks for. A job from before precision was recorded (an
    ``INFERENCE_PRECISION_HINT`` option, or nothing) means fp32 or what its hint said."""
    p = options.get("precision")
    if p is None:
        hint = options.get("INFERENCE_PRECISION_HINT", options.get("inference_precision_hint"))
        p = OV_NAMES.get(str(hint).lower(), DEFAULT_PRECISION) if hint is not None else DEFAULT_PRECISION
    p = str(p).lower()
    if p not in PRECISIONS:
        raise JobError("unknown precision '%s' (choose %s)" % (p, ", ".join(PRECISIONS)))
    return p


def machine() -> str:
    m = platform.machine()
    return {"AMD64": "x86_64", "arm64": "aarch64"}.get(m, m)


def missing_support(precision: str, flags, arch: str) -> str | None:
    """Why a CPU with ``flags`` (on ``arch``) cannot run ``precision`` natively, as one
    sentence naming what it lacks; None when it can (fp32 and int8 run anywhere)."""
    if precision not in NATIVE_FLAGS:
        return None
    wanted = NATIVE_FLAGS[precision].get(arch)
    if not wanted:
        return "%s is not supported on %s CPUs by OpenVINO's CPU plugin" % (precision, arch)
    if set(wanted) & set(flags):
        return None
    return "%s needs %s, which this CPU lacks" % (
        precision, " or ".join("%s (flag %s)" % (name, flag) for flag, name in wanted.items()))


def ov_type_name(value) -> str:
    """``f32`` / ``bf16`` / ``f16`` from a compiled model's INFERENCE_PRECISION_HINT."""
    for attr in ("to_string", "get_type_name"):
        fn = getattr(value, attr, None)
        if fn is not None:
            try:
                return str(fn())
            except Exception:  # noqa: BLE001 - older bindings return plain strings
                pass
    return str(value)
