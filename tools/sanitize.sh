#!/usr/bin/env bash
# `make sanitize`: the C++ CPU kernels under AddressSanitizer + UndefinedBehaviorSanitizer.
#
# 1. Copies the package, its C++ sources and the tests into build/sanitize/ (the normal
#    build in dvtp_kernels/ is never touched; objects in build/sanitize/build/ are reused
#    by ninja on the next run) and builds the extension there with DVTP_SANITIZE=1
#    (setup.py: -fsanitize=address,undefined -fno-sanitize-recover=all, -O1 -g).
# 2. Runs the op tests on the cpu backend only (DVTP_TEST_BACKENDS=cpu, see
#    tests/backends.py; Triton-interpreted tests deselected) from that copy, with the ASan
#    runtime preloaded into the uninstrumented Python (LD_PRELOAD=libasan.so; leak checks
#    off: CPython's own allocations are not ours to judge).
# 3. Fails when pytest fails or any sanitizer wrote a report (log_path files), even one
#    that did not stop the run.
#
# Env: PYTHON (default .venv/bin/python), CXX compiler as for the normal build (gcc: its
#      libasan.so is preloaded; clang: set ASAN_LIB to its libclang_rt.asan .so),
#      PYTEST_ARGS (extra pytest arguments), MAX_JOBS.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PY="${PYTHON:-.venv/bin/python}"
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"
OUT="$ROOT/build/sanitize"
LOGS="$OUT/reports"
start=$(date +%s)

mkdir -p "$OUT"
for item in dvtp_kernels csrc tests; do
  # Fresh copy of the sources (cp -p keeps their mtimes, so ninja rebuilds only what
  # changed); the sanitized extension built in the copy's dvtp_kernels/ is rebuilt or
  # relinked by build_ext below.
  rm -rf "$OUT/$item"
  cp -rp "$item" "$OUT/$item"
done
cp -p setup.py pyproject.toml "$OUT/"
find "$OUT/dvtp_kernels" -name '_C*.so' -delete
find "$OUT" -name __pycache__ -prune -exec rm -rf {} +

echo "== building the sanitized extension in $OUT"
(cd "$OUT" && DVTP_SANITIZE=1 "$PY" setup.py -q build_ext --inplace) >"$OUT/build.log" 2>&1 || {
  tail -50 "$OUT/build.log"; echo "sanitized build failed (log: $OUT/build.log)"; exit 1; }
so="$(ls "$OUT"/dvtp_kernels/_C*.so)"
if ! nm -D "$so" | grep __asan >/dev/null; then  # (no -q: nm must not see SIGPIPE)
  echo "$so is not instrumented"; exit 1
fi

ASAN_LIB="${ASAN_LIB:-$(${CXX:-g++} -print-file-name=libasan.so)}"
if [ ! -e "$ASAN_LIB" ]; then
  echo "no ASan runtime at '$ASAN_LIB' (set ASAN_LIB)"; exit 1
fi
rm -rf "$LOGS"
mkdir -p "$LOGS"

echo "== op tests, cpu backend, under ASan + UBSan"
set +e
(
  cd "$OUT"
  # The copy comes first on sys.path (python -m puts the working directory there, before
  # the editable install's finder): check, then run.
  LD_PRELOAD="$ASAN_LIB" \
  ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:log_path=$LOGS/asan" \
  UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$LOGS/ubsan" \
  DVTP_TEST_BACKENDS=cpu DVTP_REQUIRE_BACKENDS=cpu \
  "$PY" -c "import dvtp_kernels, dvtp_kernels._C as c, sys; \
assert c.__file__.startswith('$OUT'), c.__file__; print('testing', c.__file__)" &&
  LD_PRELOAD="$ASAN_LIB" \
  ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:log_path=$LOGS/asan" \
  UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$LOGS/ubsan" \
  DVTP_TEST_BACKENDS=cpu DVTP_REQUIRE_BACKENDS=cpu \
  "$PY" -m pytest -q -p no:cacheprovider -k "not triton" ${PYTEST_ARGS:-} \
    tests/test_accumulate_scores.py tests/test_select_tokens.py tests/test_gather_compact.py \
    tests/test_validation.py tests/test_kernel_nonfinite.py tests/test_kernel_properties.py \
    tests/test_kernel_determinism.py
)
status=$?
set -e

reports=$(find "$LOGS" -type f | sort)
if [ -n "$reports" ]; then
  for f in $reports; do echo "---- $f"; head -60 "$f"; done
  echo "sanitizer reports found: FAIL"
  exit 1
fi
if [ "$status" -ne 0 ]; then
  echo "tests failed under the sanitizers (exit $status): FAIL"
  exit "$status"
fi
echo "no sanitizer reports; tests passed ($(( $(date +%s) - start )) s)"
