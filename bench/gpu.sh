#!/usr/bin/env bash
# GPU benchmark of the ranker on Triton, in two steps (issue 7):
#
#   bench/gpu.sh prepare [BUILD]   here, on the CPU machine (repo venv, PyPI reachable):
#       exports weights + reference scores, packs a slim tritonserver (binary,
#       Python backend, 3.12 stub, bundled libs) and a NumPy 1.x wheel for the
#       stub into build/gpu_kit (about 55 MiB; the device tool carries 64 MiB).
#   bench/gpu.sh run [OUTDIR]      on the CUDA machine (H100/H200, Python 3.12 with
#       torch at /opt/torch/.venv, no network): unpacks the kit, starts Triton with
#       the ranker_gpu variants (FP32/FP16 x with/without dynamic batching, KIND_GPU),
#       checks their scores and measures throughput and p50/p99 at 1/32/256 rows per
#       request; writes gpu.json, gpu.md (stamped with nvidia-smi's GPU and the
#       date), gpu.png and triton.log to OUTDIR (default $OUT, else build/gpu_results).
#       Also tries the TensorRT plan builder where `tensorrt` imports.
#
# Through the device tool: run `bench/gpu.sh prepare` here, then
#   run(command="bash bench/gpu.sh run", carry=["build/gpu_kit"], timeout_s=540)
# Extra arguments after OUTDIR go to `python -m bench.gpu_bench run` (e.g. --nets ranker).
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=${GPU_KIT:-build/gpu_kit}
STUB_PY=3.12            # the CUDA machine's Python: pick the matching stub
NUMPY1=numpy==1.26.4    # the pytriton 0.7.0 stub is built against NumPy 1.x
LIBPY_DEB=http://archive.ubuntu.com/ubuntu/pool/main/p/python3.12/libpython3.12t64_3.12.3-1ubuntu0.8_amd64.deb

prepare() {
  local build=${1:-build} py=.venv/bin/python
  rm -rf "$KIT" && mkdir -p "$KIT/wheels"
  "$py" -m bench.gpu_bench prepare --build "$build" --kit "$KIT"
  local site tri stage
  site=$("$py" -c 'import importlib.util as u; print(list(u.find_spec("pytriton").submodule_search_locations)[0])')/..
  tri=$site/pytriton/tritonserver
  stage=$(mktemp -d)
  mkdir -p "$stage/tritonserver/python_backend_stubs"
  cp -r "$tri/bin" "$tri/backends" "$tri/caches" "$stage/tritonserver/"
  cp -r "$tri/python_backend_stubs/$STUB_PY" "$stage/tritonserver/python_backend_stubs/"
  rm -rf "$stage/tritonserver/backends/python/__pycache__"
  # The binary's RPATH is $ORIGIN/../../../nvidia_pytriton.libs: keep that layout.
  mkdir -p "$stage/a/b" && mv "$stage/tritonserver" "$stage/a/b/" && cp -r "$site/nvidia_pytriton.libs" "$stage/a/"
  tar -C "$stage" -cf - a | xz -T2 -6 > "$KIT/triton.tar.xz"
  rm -rf "$stage"
  # The 3.12 stub links libpython3.12.so.1.0, which a CUDA image may lack (Ubuntu's
  # python3.12 is static): carry Ubuntu noble's shared libpython as a fallback.
  curl -fsSL --max-time 60 -o "$KIT/wheels/libpython3.12t64.deb" "$LIBPY_DEB" \
    || echo "warning: no libpython3.12 fallback ($LIBPY_DEB unreachable)" >&2
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$STUB_PY" \
    --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$KIT/wheels" "$NUMPY1"
  du -sh "$KIT"
  local kib; kib=$(du -sk "$KIT" | cut -f1)
  if (( kib > 60 * 1024 )); then echo "error: $KIT is ${kib} KiB, over the 60 MiB carry budget" >&2; exit 1; fi
}

run() {
  local out=${1:-${OUT:-build/gpu_results}}; shift || true
  local py=${GPU_PYTHON:-/opt/torch/.venv/bin/python3}
  [[ -x $py ]] || py=python3
  local work=/tmp/inferline-gpu
  mkdir -p "$out" && rm -rf "$work" && mkdir -p "$work"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "warning: no nvidia-smi"
  "$py" -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.cuda.is_available()); sys.exit(0 if torch.cuda.is_available() else 1)'
  tar -C "$work" -xJf "$KIT/triton.tar.xz"
  local tri=$work/a/b/tritonserver
  cp "$tri/python_backend_stubs/$STUB_PY/triton_python_backend_stub" "$tri/backends/python/"
  chmod +x "$tri/bin/tritonserver" "$tri/backends/python/triton_python_backend_stub"
  "$py" -m pip install -q --no-index --no-deps --no-compile --target "$work/stub-site" "$KIT"/wheels/numpy-1*.whl
  # Model processes: NumPy 1.x first (the stub's ABI), then the torch venv.
  INFERLINE_EXTRA_SITE_PACKAGES="$work/stub-site:$("$py" -c 'import site; print(":".join(site.getsitepackages()))')"
  # The 3.12 stub links libpython3.12.so.1.0: where this Python keeps it.
  local libdir; libdir=$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
  LD_LIBRARY_PATH="$libdir:${LD_LIBRARY_PATH:-}"
  if [[ ! -e $libdir/libpython$STUB_PY.so.1.0 ]] && ! ldconfig -p 2>/dev/null | grep -q "libpython$STUB_PY.so.1.0"; then
    if [[ -f $KIT/wheels/libpython3.12t64.deb ]]; then
      echo "libpython$STUB_PY.so.1.0 not installed: using the kit's copy"
      dpkg-deb -x "$KIT/wheels/libpython3.12t64.deb" "$work/libpy" || dpkg -x "$KIT/wheels/libpython3.12t64.deb" "$work/libpy"
      LD_LIBRARY_PATH="$work/libpy/usr/lib/x86_64-linux-gnu:$LD_LIBRARY_PATH"
    else
      echo "warning: libpython$STUB_PY.so.1.0 not found and no fallback in the kit" >&2
    fi
  fi
  ldd "$tri/backends/python/triton_python_backend_stub" | grep -E "python|not found" || true
  export INFERLINE_EXTRA_SITE_PACKAGES LD_LIBRARY_PATH OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
  local rc=0
  "$py" -m bench.gpu_bench run --kit "$KIT" --triton "$tri" --out "$out" --workdir "$work" "$@" || rc=$?
  if "$py" -c 'import tensorrt' 2>/dev/null; then
    "$py" -m triton_models.tensorrt_build --onnx "$KIT/onnx_ranker.onnx" --repository "$work/trt_repo" \
      --calibration "$KIT/calib_ranker.npy" 2>&1 | tee "$out/tensorrt.log" || rc=$?
  else
    echo "TensorRT is not installed here: skipped the plan build (triton_models/tensorrt_build.py)" | tee "$out/tensorrt.log"
  fi
  exit $rc
}

case ${1:-} in
  prepare) shift; prepare "$@" ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 prepare [BUILD] | run [OUTDIR] [bench.gpu_bench run args...]" >&2; exit 2 ;;
esac
