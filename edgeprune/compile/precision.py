"""Reduced float precisions (bf16, fp16) as variants of an artifact, like INT8.

``compile --precision bf16`` builds, beside every fp32 artifact whose backend can run it
(``Backend.precisions``: OpenVINO today), an ``<backend>-bf16`` artifact: the same fp32
IR, run with ``precision: bf16`` (the CPU plugin converts the graph when it compiles it
on the device). Like INT8 it is verified by accuracy, not bit parity
(:data:`PRECISION_RULE`), chosen by ``auto`` only when labelled accuracy holds, and
reported as what it is (``precision: bf16`` in summary.json).

:func:`check_precisions` runs before any export: an unknown precision, no requested
backend able to run it, or a CPU without the instructions (the device's flags, from
:mod:`edgeprune.host` for this machine) fail at once with exit code 5
(:class:`BackendError`, as an unsupported backend does) and a line that names what is
missing. OpenVINO would not fail: on an AVX2-only CPU it silently compiles f32 when
asked for bf16, and on AVX-512 without AVX512-BF16 it emulates bf16, slower than f32.
Where the device's flags are unknown on the host (a board not probed yet), the runner
refuses the job on the device with the same table
(:mod:`edgeprune.runner.adapters.precision`) and reads back what the runtime compiled.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

from edgeprune.compile.backends import BACKENDS, Artifact, get_backend
from edgeprune.compile.quantize import INT8_OUTPUT_REL_TOL
from edgeprune.config.targets import Target
from edgeprune.errors import BackendError
from edgeprune.runner.adapters.precision import NATIVE_FLAGS, missing_support

#: precisions ``--precision`` builds beside fp32 (int8 is ``--quantize int8``)
REDUCED = tuple(NATIVE_FLAGS)
PRECISION_RULE = (
    "bf16/fp16 artifacts run the fp32 artifact at the reduced precision on the device (OpenVINO "
    "INFERENCE_PRECISION_HINT, read back from the compiled model); like INT8 they are not held to the fp32 "
    f"tolerance: they pass parity when max |output - fp32 reference| <= {INT8_OUTPUT_REL_TOL:g} x max |fp32 "
    "reference output|, and are chosen only if their accuracy on held-out data is within the accuracy tolerance "
    "of the fp32 model"
)


def able_backends(precision: str) -> list[str]:
    """Registered backends that can run an fp32 artifact at ``precision``."""
    return [n for n in BACKENDS.names() if precision in BACKENDS.get(n).precisions]


def precision_jobs(precisions: Iterable[str], names: Sequence[str]) -> list[tuple[str, str, str]]:
    """(job name, backend, precision) of every reduced-precision artifact to build:
    ``openvino-bf16`` for ``bf16`` when openvino is among ``names``."""
    return [(f"{n}-{p}", n, p) for p in precisions for n in names if p in get_backend(n).precisions]


def check_precisions(precisions: Sequence[str], names: Sequence[str], target: Target,
                     flags: Iterable[str] | None, arch: str | None = None) -> None:
    """Refuse, before any work, a precision that cannot be built or run as asked.

    ``flags`` are the CPU flags of the device that will run the artifacts (``arch`` its
    machine, default the target's); None = not known here (the runner checks on the device).
    """
    for p in precisions:
        if p not in REDUCED:
            raise BackendError(f"unknown precision '{p}'", f"choose {', '.join(REDUCED)} (int8: --quantize int8)")
        if not any(p in get_backend(n).precisions for n in names):
            raise BackendError(f"--precision {p} needs one of these backends: {', '.join(able_backends(p))}; "
                               f"this run builds {', '.join(names)}", f"add --backend {able_backends(p)[0]}")
        if flags is None:
            continue
        a = arch or (target.arch if target.arch != "auto" else None)
        why = missing_support(p, flags, a or "x86_64")
        if why:
            raise BackendError(f"cannot run {p} on the CPU of target {target.name}: {why}",
                               f"drop --precision {p} (fp32 runs everywhere), or compile for a device whose CPU "
                               "has it")


def device_flags(target: Target, local: bool) -> tuple[frozenset[str] | None, str | None]:
    """(CPU flags, machine) of the device the run times on, when the host knows them: this
    machine's for a local device running a native target; else (None, None)."""
    if not (local and target.is_native):
        return None, None
    from edgeprune.host import host_cpu

    cpu = host_cpu()
    return cpu.flags, cpu.arch


def build_precision_artifacts(fp32: dict[str, Artifact], fp32_errors: dict[str, str], precisions: Sequence[str],
                              names: Sequence[str], log: Callable[[str], None]
                              ) -> tuple[list[str], dict[str, Artifact], dict[str, str]]:
    """The ``<backend>-<precision>`` artifacts: each is its fp32 artifact (the same files,
    nothing rebuilt) with ``precision`` in its runtime options. Returns (names,
    artifacts, errors) by job name; a failed fp32 build fails its variants with it."""
    out_names: list[str] = []
    artifacts: dict[str, Artifact] = {}
    errors: dict[str, str] = {}
    for job, base, p in precision_jobs(precisions, names):
        out_names.append(job)
        art = fp32.get(base)
        if art is None:
            errors[job] = f"not built: the fp32 {base} artifact it runs was not built ({fp32_errors.get(base, '?')})"
            continue
        log(f"adding {job}: the {base} artifact run at {p} ...")
        artifacts[job] = dataclasses.replace(
            art, options={**art.options, "precision": p}, build_seconds=0.0,
            notes=list(art.notes) + [f"{p}: the {base} artifact ({art.path.name}) run at {p} precision on the device"])
    return out_names, artifacts, errors


def check_for_device(precisions: Sequence[str], names: Sequence[str], target: Target, local: bool) -> None:
    """:func:`check_precisions` against the device that will run them, as far as the host
    knows its CPU (:func:`device_flags`)."""
    if precisions:
        check_precisions(precisions, names, target, *device_flags(target, local))
