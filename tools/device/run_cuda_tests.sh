#!/usr/bin/env bash
# run_cuda_tests.sh: THE script for the device machine (an H100/H200). Builds ropepp with the CUDA backend
# for sm_90, runs the CUDA op tests (tests/test_backend_ops.cpp: every op against the CPU backend) and then
# whatever other tests build there, then compute-sanitizer (memcheck and racecheck of the op tests, memcheck of
# the whole model on a small checkpoint), and writes logs plus a summary under $OUT. The summary table is
# printed last.
#
# usage: tools/device/run_cuda_tests.sh [gtest filter for test_backend_ops]
#   The device image has no ICU: carry it from a Debian machine, once here in the repo root:
#     mkdir -p .cache/icu/lib .cache/icu/include && cp -r /usr/include/unicode .cache/icu/include/ &&
#     cp /usr/lib/x86_64-linux-gnu/libicuuc.so.72.1 .cache/icu/lib/libicuuc.so.72 &&
#     cp /usr/lib/x86_64-linux-gnu/libicudata.so.72.1 .cache/icu/lib/libicudata.so.72
#   and name .cache/icu in the device call's carry list (about 38 MB).
# env:   OUT (default build-device/out)   BUILD_DIR (default build-device)   JOBS (default nproc)
#        BUDGET_S      seconds the whole script may take (default 500); later stages are skipped, not cut
#        SANITIZE=0    skip compute-sanitizer        OTHER_TESTS=0   skip the other ctest tests
#        SANITIZE_FILTER / RACECHECK_FILTER   gtest filters of the memcheck / racecheck runs
#        BUILD_ALL=0   build only test_backend_ops
#        E2E_BREAKDOWN=1  run test_cuda_e2e (ec) three times: as is, with ROPEPP_CUDA_PRECISE_MATMUL=1, and with
#                      that plus ROPEPP_CUDA_ATTENTION=decode, to show which bf16 step the GPU/CPU gap comes from
#        ROPEPP_OPS_PERF=1 (default here) also prints decode-attention and lm_head timings
set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD_DIR:-$ROOT/build-device}
OUT=${OUT:-$BUILD/out}
JOBS=${JOBS:-$(nproc)}
BUDGET_S=${BUDGET_S:-500}
FILTER=${1:-*}
export ROPEPP_OPS_PERF=${ROPEPP_OPS_PERF:-1}
mkdir -p "$OUT" "$BUILD"
START=$(date +%s)
elapsed() { echo $(($(date +%s) - START)); }
left() { echo $((BUDGET_S - $(elapsed))); }
ROWS=()
row() { ROWS+=("$(printf '%-30s %-8s %s' "$1" "$2" "$3")"); }

summary() {
  {
    echo
    echo "==== ropepp CUDA tests: summary ($(elapsed) s) ===="
    printf '%-30s %-8s %s\n' "stage" "result" "detail"
    for r in "${ROWS[@]}"; do echo "$r"; done
  } | tee "$OUT/summary.txt"
}
trap summary EXIT

# ---- 1. environment: the GPU, compilers, and the headers/libraries the build needs -------------------
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  nvcc --version 2>&1 | tail -2
  cmake --version 2>&1 | head -1
  g++ --version 2>&1 | head -1
  echo "ninja $(ninja --version 2>/dev/null || echo missing)"
} >"$OUT/env.txt" 2>&1
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
row "gpu" "$([ -n "$GPU" ] && echo ok || echo NONE)" "${GPU:-no nvidia-smi / no GPU}"
missing=()
check_header() {  # name, header path relative to an include dir
  local d
  for d in /usr/include /usr/local/include /usr/include/*; do
    if [ -e "$d/$2" ]; then
      echo "found   $1 ($d/$2)" >>"$OUT/env.txt"
      return
    fi
  done
  if false; then
    echo "found   $1 ($2)" >>"$OUT/env.txt"
  else
    echo "MISSING $1 ($2)" >>"$OUT/env.txt"
    missing+=("$1")
  fi
}
check_header fmt fmt/format.h
check_header icu unicode/uchar.h
check_header nlohmann-json nlohmann/json.hpp
check_header CLI11 CLI/CLI.hpp
check_header spdlog spdlog/spdlog.h
check_header sentencepiece sentencepiece_processor.h
check_header gtest gtest/gtest.h
compgen -G '/usr/lib/x86_64-linux-gnu/libicuuc.so*' >/dev/null || compgen -G '/usr/lib64/libicuuc.so*' >/dev/null ||
  missing+=("icu-lib")
compgen -G '/usr/lib/x86_64-linux-gnu/libfmt.*' >/dev/null || compgen -G '/usr/local/lib/libfmt.*' >/dev/null ||
  missing+=("fmt-lib")
# ICU is missing from the device image: use a copy carried in .cache/icu (headers + libicuuc/libicudata
# .so.NN from the development machine; see the usage note at the top).
ICU_ARGS=()
if [[ " ${missing[*]} " == *" icu "* || " ${missing[*]} " == *" icu-lib "* ]] && [ -d "$ROOT/.cache/icu/lib" ]; then
  uc=$(ls "$ROOT"/.cache/icu/lib/libicuuc.so.* | head -1)
  ICU_ARGS=(-DICU_INCLUDE_DIR="$ROOT/.cache/icu/include" -DICU_UC_LIBRARY="$uc" -DICU_UC_LIBRARY_RELEASE="$uc")
  export LD_LIBRARY_PATH="$ROOT/.cache/icu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  row "icu" "carried" "$(basename "$uc") from .cache/icu (the image has no ICU)"
  missing=("${missing[@]/icu-lib/}")
  missing=("${missing[@]/icu/}")
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | grep .)
fi
if ((${#missing[@]})); then
  row "dependencies" "MISSING" "${missing[*]} (see env.txt; the lead must vendor or make them optional)"
else
  row "dependencies" "ok" "fmt icu json CLI11 spdlog sentencepiece gtest"
fi

# ---- 2. configure + build: the CUDA op tests first, then everything else (keep going past failures) --
GEN=()
[ ! -f "$BUILD/CMakeCache.txt" ] && command -v ninja >/dev/null && GEN=(-G Ninja)
if ! cmake -S "$ROOT" -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DROPEPP_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 "${ICU_ARGS[@]}" >"$OUT/build.log" 2>&1; then
  row "configure" "FAIL" "see build.log: $(grep -m1 -E 'Error|error' "$OUT/build.log" | cut -c1-90)"
  exit 1
fi
row "configure" "ok" "$(grep -m1 'CUDA compiler identification' "$OUT/build.log" | sed 's/.*identification is //')"
t0=$(date +%s)
if cmake --build "$BUILD" -j "$JOBS" --target test_backend_ops >>"$OUT/build.log" 2>&1; then
  row "build test_backend_ops" "ok" "$(($(date +%s) - t0)) s"
else
  row "build test_backend_ops" "FAIL" "see build.log: $(grep -m1 -E 'error' "$OUT/build.log" | cut -c1-90)"
  exit 1
fi
t0=$(date +%s)
if [ "${BUILD_ALL:-1}" = 1 ]; then
  if grep -q 'CMAKE_GENERATOR:INTERNAL=Ninja' "$BUILD/CMakeCache.txt"; then KEEP=(-- -k 0); else KEEP=(-- -k); fi
  if timeout $(($(left) - 200 > 60 ? $(left) - 200 : 60)) cmake --build "$BUILD" -j "$JOBS" "${KEEP[@]}" >>"$OUT/build.log" 2>&1; then
    row "build all" "ok" "$(($(date +%s) - t0)) s"
  else
    row "build all" "FAIL" "some targets failed (build.log); CUDA op tests still run"
  fi
fi

# ---- 3. the CUDA op tests ---------------------------------------------------------------------------
t0=$(date +%s)
timeout $(($(left) - 30 > 60 ? $(left) - 30 : 60)) "$BUILD/tests/test_backend_ops" --gtest_filter="$FILTER" \
  >"$OUT/test_backend_ops.log" 2>&1
rc=$?
pass=$(sed -nE 's/^\[  PASSED  \] ([0-9]+) tests?\..*/\1/p' "$OUT/test_backend_ops.log")
fails=$(sed -nE 's/^\[  FAILED  \] ([0-9]+) tests?, listed below.*/\1/p' "$OUT/test_backend_ops.log")
skips=$(sed -nE 's/^\[  SKIPPED \] ([0-9]+) tests?, listed below.*/\1/p' "$OUT/test_backend_ops.log")
res=$([ $rc = 0 ] && echo ok || echo FAIL)
[ $rc = 124 ] && res=TIMEOUT
row "test_backend_ops" "$res" "${pass:-0} passed, ${fails:-0} failed, ${skips:-0} skipped, $(($(date +%s) - t0)) s"
grep -E '^\[  FAILED  \] [A-Za-z].*\(' "$OUT/test_backend_ops.log" | head -12 | while read -r l; do echo "    $l"; done
grep -E 'NMSE .* above|unwritten|differ|error' "$OUT/test_backend_ops.log" | head -8 | cut -c1-200

# ---- 4. the other tests (whatever built) --------------------------------------------------------------
if [ "${OTHER_TESTS:-1}" = 1 ] && [ "$(left)" -gt 120 ]; then
  t0=$(date +%s)
  (cd "$BUILD" && timeout $(($(left) - 90)) ctest -E 'BackendOps' -j "$JOBS" --timeout 120 --output-on-failure) \
    >"$OUT/ctest.log" 2>&1
  rc=$?
  row "ctest (other tests)" "$([ $rc = 0 ] && echo ok || echo FAIL)" \
    "$(grep -E 'tests passed|tests failed' "$OUT/ctest.log" | tail -1), $(($(date +%s) - t0)) s"
else
  row "ctest (other tests)" "skipped" "no time left or OTHER_TESTS=0"
fi

# ---- 4b. where the end-to-end GPU/CPU difference comes from -------------------------------------------
if [ "${E2E_BREAKDOWN:-0}" = 1 ] && [ -x "$BUILD/tests/test_cuda_e2e" ] && [ "$(left)" -gt 150 ]; then
  t0=$(date +%s)
  for cfg in "default" "ROPEPP_CUDA_PRECISE_MATMUL=1" "ROPEPP_CUDA_PRECISE_MATMUL=1 ROPEPP_CUDA_ATTENTION=decode"; do
    envs=()
    [ "$cfg" != default ] && read -r -a envs <<<"$cfg"
    echo "== $cfg" >>"$OUT/e2e_breakdown.log"
    env "${envs[@]}" timeout 100 "$BUILD/tests/test_cuda_e2e" --gtest_filter='*ec*' >>"$OUT/e2e_breakdown.log" 2>&1
    echo "  e2e ec, $cfg:"
    grep -E '^\[ec\]' "$OUT/e2e_breakdown.log" | tail -2 | sed 's/^/    /'
  done
  row "e2e breakdown (ec)" "done" "e2e_breakdown.log, $(($(date +%s) - t0)) s"
fi

# ---- 5. compute-sanitizer: memcheck on a short filter of the op tests, racecheck (shared-memory hazards) on
#         the kernels that use shared memory, memcheck over the whole model (fused decode kernels, recorded
#         graphs) on a small checkpoint. Each stage runs while more than 60 s of the budget are left.
sanitize() {  # label, log file, tool, [VAR=value...] command...
  local label=$1 log=$2 tool=$3 t0 rc res envs=() extra=()
  shift 3
  while [[ "$1" == *=* ]]; do envs+=("$1"); shift; done
  [ "$tool" = racecheck ] && extra=(--racecheck-report hazard)
  [ "$(left)" -gt 60 ] || return 0
  t0=$(date +%s)
  env ROPEPP_OPS_PERF= "${envs[@]}" timeout $(($(left) - 20)) compute-sanitizer --tool "$tool" "${extra[@]}" \
    --error-exitcode 3 "$@" >"$OUT/$log" 2>&1
  rc=$?
  res=$([ $rc = 0 ] && echo ok || echo FAIL)
  [ $rc = 124 ] && res=TIMEOUT
  row "$label" "$res" "$(grep -m1 'RACECHECK SUMMARY\|ERROR SUMMARY' "$OUT/$log"), $(($(date +%s) - t0)) s"
}
if [ "${SANITIZE:-1}" = 1 ] && command -v compute-sanitizer >/dev/null; then
  sanitize "compute-sanitizer memcheck" sanitizer.log memcheck "$BUILD/tests/test_backend_ops" \
    --gtest_filter="${SANITIZE_FILTER:-BackendOps.KvAppendPaged:BackendOps.ArgmaxNll:*AllCases/tiny_*:*AllCases/376M_EH}"
  sanitize "compute-sanitizer racecheck" racecheck.log racecheck ROPEPP_OPS_MAX_CTX=1100 ROPEPP_OPS_NO_CUBLAS=1 \
    "$BUILD/tests/test_backend_ops" --gtest_filter="${RACECHECK_FILTER:-*AllCases/tiny_*:BackendOps.ArgmaxNll:BackendOps.FusedMatmuls}"
  [ -x "$BUILD/tests/test_cuda_e2e" ] && sanitize "memcheck test_cuda_e2e (small)" sanitizer_e2e.log memcheck \
    ROPEPP_E2E_MODELS= "$BUILD/tests/test_cuda_e2e" --gtest_filter='*CudaE2E*'
else
  row "compute-sanitizer" "skipped" "SANITIZE=0 or no compute-sanitizer"
fi

grep '^\[ perf \]' "$OUT/test_backend_ops.log"
