#!/usr/bin/env bash
# Builds ropepp (CPU backend; CUDA sources compiled too when nvcc is found) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/cuda/bin:$PATH"
BUILD=${BUILD:-build}
JOBS=${JOBS:-$(nproc)}
# ctest runs several multi-threaded tests at once on few cores: OpenMP threads that spin while waiting would
# steal the cores from the threads doing the work (seen: 100x slowdowns). Sleep instead.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-}
cmake --build "$BUILD" -j "$JOBS"
ctest --test-dir "$BUILD" --output-on-failure -j "$JOBS" ${CTEST_ARGS:-}
