"""The GPU check behind ``scripts/gpu-check.sh``: run it through that script.

``check`` (on the machine with the NVIDIA GPU): what the GPU and the Python there are,
then three timed runs of ``zoo:digits-cnn`` with real edgeprune commands, each verified
against the CPU reference (PyTorch on that machine's CPU) and scored on the held-out
digits:

1. TVM's CUDA artifact for the GPU found (``--target host-cuda``, built there; or, with a
   runtime-only TVM, the ``.so`` that ``pack`` built, timed with ``bench --artifact``);
2. ONNX Runtime on ``host-cuda``: the CUDAExecutionProvider with onnxruntime-gpu, else
   the CPU provider (the report says which);
3. ONNX Runtime on the CPU (``--target host``);

then ``pytest -m gpu tests/test_gpu_run.py``. It writes ``gpu-check.json``,
``gpu-check.md`` and the TVM run's ``report.md`` to the output folder, and exits 0 only
when the TVM CUDA artifact ran, verified and kept its accuracy. Every "cannot" is one
line starting ``gpu-check: FAILED:``; nothing here imports edgeprune until the
environment is known to have what it needs.

``pack`` (here, with the project's .venv): what a GPU machine without apache-tvm and
pydantic needs, under ``build/gpu-check/`` (git-ignored; name it in the device call's
``carry``): wheels for that machine's Python, a runtime-only TVM (no 250 MB compiler
library), the digits-cnn weights and its TVM CUDA artifact for ``--arch``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACK = REPO / "build" / "gpu-check"
MODEL = "zoo:digits-cnn"
#: timing of each run: enough runs for a stable median on a GPU, seconds in all
TIMING = ["--warmup", "20", "--min-runs", "200", "--min-time", "1", "--max-time", "20", "--rounds", "1"]
#: what edgeprune needs that a CUDA/PyTorch image may lack (pip name -> import name)
EDGEPRUNE_NEEDS = {"pydantic": "pydantic", "PyYAML": "yaml", "click": "click", "rich": "rich", "numpy": "numpy",
                   "torch": "torch", "onnx": "onnx", "onnxruntime": "onnxruntime", "jinja2": "jinja2",
                   "psutil": "psutil"}
#: wheels ``pack`` fetches for the device's Python (versions: the ones installed here)
PACK_WHEELS = ("apache-tvm-ffi", "pydantic", "pydantic-core", "annotated-types", "typing-inspection")


class Failed(Exception):
    """One line for the user: what could not be done, and what to do."""


def say(msg: str) -> None:
    print(f"gpu-check: {msg}", flush=True)


def num(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def one_run(f: dict) -> str:
    """One run's figures in a line (or why it failed)."""
    if not f["ok"]:
        return f"failed: {f['error']}"
    parity = "not checked" if f["verified"] is None else ("ok" if f["verified"] else "FAILED")
    where = f", {f['providers'][0]}" if f.get("providers") else (f", {f['device']}" if f.get("device") else "")
    return (f"median {num(f['median_ms'], '.4f')} ms over {f['runs']} runs{where}, parity {parity} "
            f"(max diff {num(f['max_abs_diff'], '.2e')}), accuracy {num(f['accuracy'], '.2f')}%")


# ------------------------------------------------------------------ what is here
def gpu_facts() -> dict:
    from edgeprune.runner.probe import nvidia_gpus  # stdlib only: importable without edgeprune's deps

    rows, why = nvidia_gpus(os.environ.get("NVIDIA_SMI") or None)
    if not rows:
        raise Failed(f"no NVIDIA GPU found ({why}): run this on a machine with one")
    return {"gpus": rows}


def module_facts() -> dict:
    """What imports here (version, or the one-line reason it does not)."""
    out: dict = {}
    for pip_name, mod in EDGEPRUNE_NEEDS.items():
        try:
            m = importlib.import_module(mod)
            out[pip_name] = getattr(m, "__version__", "ok")
        except Exception as exc:  # noqa: BLE001 - any failure is "missing" with its reason
            out[pip_name] = None
            out[f"{pip_name}_error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    try:
        import onnxruntime

        out["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except Exception:  # noqa: BLE001
        pass
    try:
        import tvm

        from edgeprune.runner.adapters.tvm import cuda_unavailable

        out["tvm"] = tvm.__version__
        out["tvm_runtime_only"] = bool(getattr(tvm.base, "_RUNTIME_ONLY", False))
        out["tvm_cuda"] = cuda_unavailable(tvm) or "ok"
    except Exception as exc:  # noqa: BLE001
        out["tvm"] = None
        out["tvm_error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    try:
        importlib.import_module("cuda.bindings.nvrtc")
        out["nvrtc"] = "cuda-bindings"
    except Exception:  # noqa: BLE001
        out["nvrtc"] = None
    out["nvcc"] = shutil.which("nvcc")
    try:
        importlib.import_module("edgeprune.cli")
        out["edgeprune"] = "ok"
    except Exception as exc:  # noqa: BLE001
        out["edgeprune"] = None
        out["edgeprune_error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return out


def mode_of(mods: dict) -> str:
    """"build" (TVM builds CUDA here), "prebuilt" (a packed .so and a runtime-only TVM),
    or a Failed naming everything that is missing."""
    missing = [f"{k} ({mods.get(k + '_error', 'not installed')})" for k in EDGEPRUNE_NEEDS if not mods.get(k)]
    if mods.get("tvm") is None:
        missing.append(f"apache-tvm ({mods.get('tvm_error', 'not installed')})")
    elif mods.get("tvm_cuda") != "ok":
        missing.append(f"TVM CUDA runtime: {mods['tvm_cuda']}")
    if not (mods.get("nvrtc") or mods.get("nvcc")):
        missing.append("a CUDA compiler for TVM (cuda-bindings for NVRTC, or nvcc on PATH)")
    if not missing and mods.get("edgeprune") is None:
        missing.append(f"edgeprune ({mods.get('edgeprune_error')})")
    if missing:
        raise Failed("cannot run here, missing: " + "; ".join(missing)
                     + " (on a machine without them: scripts/gpu-check.sh --pack --python X.Y --arch sm_XX "
                       "where edgeprune is installed, then carry build/gpu-check)")
    if not mods.get("tvm_runtime_only"):
        return "build"
    if not (PACK / "tvm" / "model.so").is_file():
        raise Failed("this TVM is runtime-only and build/gpu-check/tvm/model.so is not here: "
                     "run scripts/gpu-check.sh --pack where edgeprune is installed, and carry build/gpu-check")
    return "prebuilt"


# ------------------------------------------------------------------ the runs
def edgeprune(args: list[str], work: Path, log, timeout: float = 900) -> dict:
    """One ``edgeprune ... --json`` run: its summary (dict), or {"error": its last line}."""
    cmd = [sys.executable, "-m", "edgeprune.cli", *args, "--db", "none", "--json"]
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    log.write(p.stderr + f"[exit {p.returncode} after {time.time() - t0:.1f} s]\n")
    try:
        summary = json.loads(p.stdout)
    except ValueError:
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        return {"error": lines[-1] if lines else f"exit code {p.returncode}"}
    return summary[0] if isinstance(summary, list) else summary


def figures(summary: dict, backend: str) -> dict:
    """The numbers the report keeps of one backend of a summary."""
    if "error" in summary:
        return {"ok": False, "error": summary["error"]}
    b = next((x for x in summary.get("backends", []) if x.get("name") == backend), None)
    if b is None:
        return {"ok": False, "error": f"no {backend} result ({summary.get('choice_reason')})"}
    rs = (b.get("env") or {}).get("runtime_settings") or {}
    lat = b.get("latency_ms") or {}
    return {"ok": bool(b.get("latency_ms")) and not b.get("error"), "error": b.get("error"),
            "median_ms": lat.get("median"), "p90_ms": lat.get("p90"), "runs": b.get("runs"),
            "verified": b.get("verified"), "max_abs_diff": b.get("max_abs_diff"), "tolerance": b.get("tolerance"),
            "accuracy": b.get("accuracy"), "reference_accuracy": (summary.get("original") or {}).get("accuracy"),
            "providers": rs.get("providers"), "device": rs.get("device"), "gpu": rs.get("gpu"),
            "runtime_note": rs.get("note"), "notes": b.get("notes", []),
            "runtime_version": b.get("backend_version")}


def check(out: Path, work: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    log = open(out / "gpu-check.log", "a")
    report: dict = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": sys.version.split()[0],
                    "python_executable": sys.executable, "model": MODEL}
    try:
        report.update(gpu_facts())
        g = report["gpus"][0]
        say(f"GPU: {g.get('name')}, compute {g.get('compute_cap')}, {g.get('memory.total')} MiB, "
            f"max SM clock {g.get('clocks.max.sm')} MHz, driver {g.get('driver_version')}"
            + (f" (+{len(report['gpus']) - 1} more)" if len(report["gpus"]) > 1 else ""))
        mods = module_facts()
        report["modules"] = mods
        say("python " + report["python"] + ": " + ", ".join(
            f"{k} {v}" for k, v in mods.items() if not k.endswith("_error") and k not in ("nvcc",)))
        report["mode"] = mode = mode_of(mods)
        say(f"mode: {mode} ({'TVM builds the CUDA artifact here' if mode == 'build' else 'the packed TVM artifact'})")
        if mode == "build":
            tvm_args = ["compile", "-m", MODEL, "-t", "host-cuda", "-b", "tvm", "-o", str(work / "tvm"), *TIMING]
        else:
            pack = json.loads((PACK / "pack.json").read_text())
            report["pack"] = pack
            if pack.get("arch") != "sm_" + str(g.get("compute_cap", "")).replace(".", ""):
                say(f"note: the packed artifact was built for {pack.get('arch')}; this GPU is compute "
                    f"{g.get('compute_cap')} (its CUDA source is compiled for this GPU when it loads)")
            tvm_args = ["bench", "-m", MODEL, "-t", "host-cuda", "-b", "tvm", "--artifact",
                        str(PACK / "tvm" / "model.so"), "-o", str(work / "tvm"), *TIMING]
        runs = {"tvm-cuda": (tvm_args, "tvm"),
                "onnxruntime-host-cuda": (["compile", "-m", MODEL, "-t", "host-cuda", "-b", "onnxruntime",
                                           "-o", str(work / "ort-gpu"), *TIMING], "onnxruntime"),
                "onnxruntime-cpu": (["compile", "-m", MODEL, "-t", "host", "-b", "onnxruntime",
                                     "-o", str(work / "ort-cpu"), *TIMING], "onnxruntime")}
        report["runs"] = {}
        for name, (args, backend) in runs.items():
            say(f"running {name} ...")
            f = report["runs"][name] = figures(edgeprune(args, work, log), backend)
            say(f"  {name}: {one_run(f)}")
        if (work / "tvm" / "report.md").exists():
            shutil.copy(work / "tvm" / "report.md", out / "report-tvm-cuda.md")
        report["pytest_gpu"] = run_gpu_tests(out)
        say(f"pytest -m gpu: {report['pytest_gpu']}")
        verdict(report)
    except Failed as exc:
        report["failed"] = str(exc)
    finally:
        log.close()
    (out / "gpu-check.json").write_text(json.dumps(report, indent=1, sort_keys=True, default=str) + "\n")
    (out / "gpu-check.md").write_text(markdown(report))
    say(f"wrote {out / 'gpu-check.json'} and {out / 'gpu-check.md'}")
    if report.get("failed"):
        say(f"FAILED: {report['failed']}")
        return 1
    say("OK: the TVM CUDA artifact ran on the GPU, matched the CPU reference and kept its accuracy")
    return 0


def verdict(report: dict) -> None:
    t = report["runs"]["tvm-cuda"]
    if not t["ok"]:
        raise Failed(f"the TVM CUDA artifact did not run: {t['error']}")
    if t.get("device") != "cuda":
        raise Failed(f"the TVM artifact ran on {t.get('device')}, not the GPU")
    if not t["verified"]:
        raise Failed(f"the TVM CUDA outputs differ from the CPU reference: max diff {num(t['max_abs_diff'], '.3g')} "
                     f"> {num(t['tolerance'], '.3g')}")
    acc, ref = t.get("accuracy"), t.get("reference_accuracy")
    if acc is not None and ref is not None and acc < ref - 1.0:
        raise Failed(f"the TVM CUDA artifact lost accuracy: {acc:.2f}% vs {ref:.2f}% (PyTorch)")


def run_gpu_tests(out: Path) -> str:
    """``pytest -m gpu tests/test_gpu_run.py``: its last line (passed / skipped and why)."""
    try:
        importlib.import_module("pytest")
    except ImportError:
        return "not run (pytest is not installed)"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rs",
           str(REPO / "tests" / "test_gpu_run.py")]
    try:
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return "timed out after 900 s"
    (out / "pytest-gpu.log").write_text(p.stdout + p.stderr)
    lines = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit code {p.returncode}"


def markdown(r: dict) -> str:
    lines = ["# GPU check", ""]
    for g in r.get("gpus", []):
        lines.append(f"- GPU: {g.get('name')}, compute {g.get('compute_cap')}, {g.get('memory.total')} MiB, "
                     f"max SM clock {g.get('clocks.max.sm')} MHz, driver {g.get('driver_version')}")
    lines.append(f"- python {r.get('python')} ({r.get('python_executable')}), mode: {r.get('mode', '-')}")
    if r.get("failed"):
        lines += ["", f"**FAILED**: {r['failed']}"]
    if r.get("runs"):
        lines += ["", f"Model `{r['model']}`; parity against the CPU reference (PyTorch on this CPU).", "",
                  "| run | provider / device | median ms | p90 ms | runs | parity (max diff) | accuracy |",
                  "|---|---|---:|---:|---:|---|---:|"]
        for name, f in r["runs"].items():
            if not f["ok"]:
                lines.append(f"| {name} | – | – | – | – | {f['error']} | – |")
                continue
            where = (f.get("gpu") or {}).get("name") or (f.get("providers") or [f.get("device")])[0]
            parity = "–" if f["verified"] is None else ("ok" if f["verified"] else "FAIL")
            lines.append(f"| {name} | {where} | {num(f['median_ms'], '.4f')} | {num(f['p90_ms'], '.4f')} | "
                         f"{f['runs']} | {parity} ({num(f['max_abs_diff'], '.1e')}) | {num(f['accuracy'], '.2f')} |")
        notes = [f"{n}: {f['runtime_note']}" for n, f in r["runs"].items() if f.get("runtime_note")]
        lines += [""] + [f"- {n}" for n in notes]
    if r.get("pytest_gpu"):
        lines += ["", f"`pytest -m gpu`: {r['pytest_gpu']}"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ pack (on a machine with edgeprune)
def pack(arch: str, python: str) -> int:
    from importlib import metadata

    if PACK.exists():
        shutil.rmtree(PACK)
    (PACK / "wheels").mkdir(parents=True)
    pins = [f"{n}=={metadata.version(n)}" for n in PACK_WHEELS]
    say(f"downloading wheels for Python {python} x86_64: {', '.join(pins)}")
    plats = [a for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
                         "manylinux_2_17_x86_64", "manylinux2014_x86_64") for a in ("--platform", p)]
    p = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", python, "--implementation", "cp", *plats, "-d", str(PACK / "wheels"),
                        *pins], capture_output=True, text=True)
    if p.returncode != 0:
        raise Failed("pip download failed: " + ([ln for ln in p.stderr.splitlines() if ln.strip()] or ["?"])[-1])
    import tvm

    site = Path(tvm.__file__).resolve().parents[1]
    dist = next(site.glob("apache_tvm-*.dist-info"))
    skip = {"lib/libtvm_compiler.so", "3rdparty", "src", "web"}
    say(f"packing a runtime-only TVM {tvm.__version__} from {site} (without {', '.join(sorted(skip))})")

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        rel = info.name.split("/", 1)[1] if "/" in info.name else ""
        if "__pycache__" in info.name or (info.name.startswith("tvm/") and any(
                rel == s or rel.startswith(s + "/") for s in skip)):
            return None
        return info

    with tarfile.open(PACK / "tvm-runtime.tar.xz", "w:xz") as tar:
        tar.add(site / "tvm", arcname="tvm", filter=keep)
        tar.add(dist, arcname=dist.name)
    os.environ["EDGEPRUNE_CACHE"] = str(PACK / "cache")
    from edgeprune.compile.backends import get_backend
    from edgeprune.compile.export import export_onnx
    from edgeprune.config.targets import load_target_file
    from edgeprune.models.spec import load_model

    say(f"building the TVM CUDA artifact of {MODEL} for {arch} (weights cached in build/gpu-check/cache)")
    model = load_model(MODEL, log=lambda m: say("  " + m))
    exp = export_onnx(model, PACK / "model.onnx")
    target_file = PACK / f"gpu-check-{arch}.yaml"
    target_file.write_text(f"name: gpu-check-{arch}\ndescription: a GPU machine's {arch}, packed by gpu-check\n"
                           f"arch: x86_64\ntriple: x86_64-linux-gnu\ncpu: x86-64\ncores: 1\nclock_ghz: 1.0\n"
                           f"accelerator: cuda\ncuda_arch: {arch}\nbackends: [tvm]\n")
    art = get_backend("tvm").build(exp.path, load_target_file(target_file), PACK / "tvm")
    (PACK / "pack.json").write_text(json.dumps({"arch": arch, "python": python, "model": MODEL, "tvm": tvm.__version__,
                                                "wheels": pins, "notes": art.notes}, indent=1) + "\n")
    size = sum(f.stat().st_size for f in PACK.rglob("*") if f.is_file())
    say(f"packed {size / 2**20:.1f} MiB in {PACK}: name build/gpu-check in the device call's carry")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--work", type=Path, required=True)
    pk = sub.add_parser("pack")
    pk.add_argument("--arch", required=True, help="the GPU machine's CUDA architecture, e.g. sm_90")
    pk.add_argument("--python", required=True, help="the GPU machine's python3 version, e.g. 3.12")
    a = ap.parse_args()
    try:
        return check(a.out, a.work) if a.cmd == "check" else pack(a.arch, a.python)
    except Failed as exc:
        say(f"FAILED: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
