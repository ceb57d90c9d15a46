#!/usr/bin/env bash
# The GPU check (issue 16): on a machine with an NVIDIA GPU, build TVM's CUDA artifact of
# zoo:digits-cnn for the GPU found (nvidia-smi's compute_cap), run it there, check it
# against the CPU reference and its accuracy, and time it beside ONNX Runtime
# (CUDAExecutionProvider when onnxruntime-gpu is installed, and on the CPU); then
# `pytest -m gpu tests/test_gpu_run.py`. A few minutes end to end.
#
#   scripts/gpu-check.sh                                 # on the GPU machine, in a copy of this checkout
#   scripts/gpu-check.sh --pack --python 3.12 --arch sm_90   # here: build/gpu-check/ for a GPU machine
#                                                        # that lacks apache-tvm / pydantic (carry it there)
#
# Output: $OUT if set, else ./out/gpu-check/: gpu-check.json, gpu-check.md, gpu-check.log,
# report-tvm-cuda.md, pytest-gpu.log. Exit 0 only when the TVM CUDA artifact ran on the
# GPU, matched the CPU reference and kept its accuracy; otherwise 1 and one line
# "gpu-check: FAILED: <why>". Figures go to docs/results.md by hand (docs/compilers.md).
#
# Python: the first of $PYTHON, ./.venv/bin/python, python3 that runs numpy; edgeprune is
# this checkout (PYTHONPATH=$PWD). A carried build/gpu-check/ (from --pack) is installed
# into a temporary folder first: its wheels, a runtime-only TVM and the packed artifact.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD

OUT_DIR=${OUT:-$ROOT/out/gpu-check}

# one line on stdout, and the same in gpu-check.json / .md where the output folder can be written
fail() {
  echo "gpu-check: FAILED: $*"
  if mkdir -p "$OUT_DIR" 2>/dev/null; then
    printf '{"failed": "%s"}\n' "$(printf '%s' "$*" | sed 's/\\/\\\\/g; s/"/\\"/g')" >"$OUT_DIR/gpu-check.json"
    printf '# GPU check\n\n**FAILED**: %s\n' "$*" >"$OUT_DIR/gpu-check.md"
  fi
  exit 1
}

find_python() {
  local py
  for py in "${PYTHON:-}" "$ROOT/.venv/bin/python" python3; do
    [ -n "$py" ] || continue
    if "$py" -c 'import numpy' >/dev/null 2>&1; then echo "$py"; return 0; fi
  done
  return 1
}

PY=$(find_python) || fail "no python with numpy found (tried \$PYTHON, ./.venv/bin/python, python3)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

if [ "${1:-}" = "--pack" ]; then
  shift
  exec "$PY" "$ROOT/scripts/gpu_check.py" pack "$@"
fi

mkdir -p "$OUT_DIR" || fail "cannot create the output folder $OUT_DIR"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/edgeprune-gpu-check.XXXXXX") || fail "cannot create a work folder"

# nvidia-smi first: without a GPU nothing else matters (the Python side says it the same way)
SMI=${NVIDIA_SMI:-$(command -v nvidia-smi || true)}
if [ -z "$SMI" ] || [ ! -x "$SMI" ]; then
  fail "no NVIDIA GPU found (nvidia-smi not found${SMI:+ at $SMI}): run this on a machine with one"
fi
"$SMI" --query-gpu=index,name,compute_cap,memory.total,clocks.max.sm,driver_version --format=csv \
  | tee "$OUT_DIR/nvidia-smi.csv" | sed 's/^/gpu-check: nvidia-smi: /'

# a carried pack: wheels and a runtime-only TVM into a temporary site folder, the weights into a cache
PACK=$ROOT/build/gpu-check
if [ -d "$PACK" ]; then
  SITE=$WORK/site
  mkdir -p "$SITE"
  if ls "$PACK"/wheels/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$PACK"/wheels/*.whl \
      || fail "could not install the carried wheels ($PACK/wheels) for $("$PY" -V 2>&1): pack them for this Python"
  fi
  if [ -f "$PACK/tvm-runtime.tar.xz" ]; then
    tar -xJf "$PACK/tvm-runtime.tar.xz" -C "$SITE" || fail "could not unpack $PACK/tvm-runtime.tar.xz"
  fi
  export PYTHONPATH="$ROOT:$SITE${PYTHONPATH#"$ROOT"}"
  if [ -d "$PACK/cache" ]; then
    cp -r "$PACK/cache" "$WORK/cache" && export EDGEPRUNE_CACHE=$WORK/cache
  fi
fi

# TVM's CUDA runtime (tvm/lib/libtvm_runtime_cuda.so) needs libcudart.so.13 on the loader path
if ! ldconfig -p 2>/dev/null | grep -q 'libcudart\.so\.13'; then
  for d in $("$PY" - <<'EOF' 2>/dev/null
import glob, os, shutil, site, sys
cands = []
nvcc = shutil.which("nvcc")
if nvcc:
    root = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    cands += [os.path.join(root, "lib64"), os.path.join(root, "lib")]
cands += glob.glob("/usr/local/cuda*/lib64") + glob.glob("/usr/local/cuda*/lib")
for sp in site.getsitepackages() + [p for p in sys.path if p.endswith("site-packages")]:
    cands += glob.glob(os.path.join(sp, "nvidia", "*", "lib")) + glob.glob(os.path.join(sp, "nvidia", "cu*", "lib"))
seen = []
for c in cands:
    if glob.glob(os.path.join(c, "libcudart.so.13*")) and c not in seen:
        seen.append(c)
print(" ".join(seen))
EOF
  ); do
    export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  done
fi

"$PY" "$ROOT/scripts/gpu_check.py" check --out "$OUT_DIR" --work "$WORK"
rc=$?
[ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"
exit $rc
