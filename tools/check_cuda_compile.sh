#!/usr/bin/env bash
# Compile-check every csrc/cuda/*.cu with nvcc for sm_80 and sm_90, without a CUDA build of torch.
#
# Torch's CPU wheel ships the c10/cuda and ATen/cuda headers but not the generated
# c10/cuda/impl/cuda_cmake_macros.h; a temporary one-line shim stands in for it (it only
# defines C10_CUDA_BUILD_SHARED_LIBS). Flags follow what torch's CUDAExtension passes to nvcc.
#
# Usage: tools/check_cuda_compile.sh [file.cu ...]   (default: every csrc/cuda/*.cu)
# Env:   PYTHON (default .venv/bin/python if present, else python3), NVCC (default nvcc),
#        JOBS (parallel compiles, default 2), ARCHS (default "80 90"),
#        CXXSTD (default c++20, as torch 2.13 builds extensions), NVCC_EXTRA (extra nvcc flags,
#        e.g. "-Xptxas -v" for register/spill reports).
# Exit:  0 all compiled (or nvcc absent: skipped), 1 any failure.
set -u
cd "$(dirname "$0")/.." || exit 1

NVCC="${NVCC:-nvcc}"
if ! command -v "$NVCC" >/dev/null 2>&1; then
  echo "nvcc not found: skipping CUDA compile check"
  exit 0
fi
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
JOBS="${JOBS:-2}"
ARCHS="${ARCHS:-80 90}"
CXXSTD="${CXXSTD:-c++20}"

if [ "$#" -gt 0 ]; then
  files=("$@")
else
  shopt -s nullglob
  files=(csrc/cuda/*.cu)
  shopt -u nullglob
fi
if [ "${#files[@]}" -eq 0 ]; then
  echo "no CUDA sources under csrc/cuda: nothing to check"
  exit 0
fi

incs="$("$PYTHON" -c 'import sysconfig
from torch.utils.cpp_extension import include_paths
print("\n".join(include_paths() + [sysconfig.get_paths()["include"]]))')" || {
  echo "could not get torch include paths from $PYTHON"
  exit 1
}

tmp="$(mktemp -d "${TMPDIR:-/tmp}/dvtp_cuda_check.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/shim/c10/cuda/impl"
printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > "$tmp/shim/c10/cuda/impl/cuda_cmake_macros.h"

# ATen/cuda/CUDAContext.h includes the cuBLAS/cuSPARSE/cuSOLVER headers for a few handle
# and status types. A CUDA toolkit installed without those libraries (as on the CPU
# machines) gets declaration-only stubs; a full toolkit's real headers are used as is.
cuda_inc="$(cd "$(dirname "$(readlink -f "$(command -v "$NVCC")")")/../include" 2>/dev/null && pwd)"
stub() {  # stub HEADER BODY
  if [ -z "$cuda_inc" ] || [ ! -f "$cuda_inc/$1" ]; then
    printf '#pragma once\n%s\n' "$2" > "$tmp/shim/$1"
    stubbed+=("$1")
  fi
}
stubbed=()
stub cublas_v2.h 'typedef struct cublasContext* cublasHandle_t;
typedef enum { CUBLAS_STATUS_SUCCESS = 0 } cublasStatus_t;'
stub cublasLt.h 'typedef struct cublasLtContext* cublasLtHandle_t;'
stub cusparse.h 'typedef struct cusparseContext* cusparseHandle_t;
typedef enum { CUSPARSE_STATUS_SUCCESS = 0 } cusparseStatus_t;
const char* cusparseGetErrorString(cusparseStatus_t);'
stub cusolver_common.h 'typedef enum { CUSOLVER_STATUS_SUCCESS = 0 } cusolverStatus_t;'
stub cusolverDn.h '#include <cusolver_common.h>
typedef struct cusolverDnContext* cusolverDnHandle_t;'
if [ "${#stubbed[@]}" -gt 0 ]; then
  echo "note: CUDA toolkit lacks ${stubbed[*]}: using declaration-only stubs"
fi

flags=(-std="$CXXSTD" -O3 --use_fast_math -lineinfo -Xcompiler -fPIC
  -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
  -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__
  --expt-relaxed-constexpr -DTORCH_EXTENSION_NAME=_C
  -I csrc -I "$tmp/shim")
while IFS= read -r d; do [ -n "$d" ] && flags+=(-I "$d"); done <<< "$incs"
for a in $ARCHS; do flags+=(-gencode "arch=compute_${a},code=sm_${a}"); done
# shellcheck disable=SC2206
[ -n "${NVCC_EXTRA:-}" ] && flags+=(${NVCC_EXTRA})

# One background job per file, at most $JOBS at a time.
compile_one() {
  local f="$1" base log start end
  base="$(basename "$f" .cu)"
  log="$tmp/$base.log"
  start=$(date +%s.%N)
  if "$NVCC" "${flags[@]}" -c "$f" -o "$tmp/$base.o" >"$log" 2>&1; then
    echo ok >"$tmp/$base.status"
  else
    echo FAILED >"$tmp/$base.status"
  fi
  end=$(date +%s.%N)
  awk -v s="$start" -v e="$end" 'BEGIN { printf "%.1f", e - s }' >"$tmp/$base.time"
}

running=0
for f in "${files[@]}"; do
  compile_one "$f" &
  running=$((running + 1))
  if [ "$running" -ge "$JOBS" ]; then
    wait -n 2>/dev/null || wait
    running=$((running - 1))
  fi
done
wait

failed=0
for f in "${files[@]}"; do
  base="$(basename "$f" .cu)"
  status="$(cat "$tmp/$base.status" 2>/dev/null || echo FAILED)"
  printf '%-48s %-6s %ss\n' "$f" "$status" "$(cat "$tmp/$base.time" 2>/dev/null || echo '?')"
  if [ "$status" != ok ]; then
    failed=1
  fi
done
for f in "${files[@]}"; do
  base="$(basename "$f" .cu)"
  log="$tmp/$base.log"
  if [ "$(cat "$tmp/$base.status" 2>/dev/null)" != ok ]; then
    echo "---- $f: compiler output ----"
    cat "$log"
  elif [ -s "$log" ]; then
    echo "---- $f: warnings ----"
    cat "$log"
  fi
done
exit "$failed"
