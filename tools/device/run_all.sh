#!/usr/bin/env bash
# run_all.sh: the one device-machine run. Builds ropepp for sm_90, runs the CUDA op-parity tests
# (run_cuda_tests.sh, with compute-sanitizer memcheck), the end-to-end GPU-vs-CPU tests on random 376M
# RoPE/EH/EC checkpoints, the 65,536-token long-context check against the PyTorch reference, and
# `ropepp bench` on the 376M EC/EH and 776M EC shapes. Everything lands in $OUT: summary.txt (printed last),
# bench_*.json, and logs.tar.gz with every log.
#
# Call (from this machine, through the device tool), carrying the ICU the device image lacks:
#   mkdir -p .device && tar -C .cache -cJf .device/icu.tar.xz icu      # once; see run_cuda_tests.sh
#   run: bash tools/device/run_all.sh     carry: [".device/icu.tar.xz"]
set -u -o pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${OUT:-$ROOT/build-device/out}
WORK=${WORK:-/tmp/ropepp-device}
mkdir -p "$OUT" "$WORK/logs" "$WORK/models"
START=$(date +%s)
export PYTHONUNBUFFERED=1
if [ -f "$ROOT/.device/icu.tar.xz" ] && [ ! -d "$ROOT/.cache/icu" ]; then
  mkdir -p "$ROOT/.cache" && tar -C "$ROOT/.cache" -xJf "$ROOT/.device/icu.tar.xz"
fi
[ -d "$ROOT/.cache/icu/lib" ] && export LD_LIBRARY_PATH="$ROOT/.cache/icu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
SUM="$OUT/summary.txt"
note() { echo "$*" | tee -a "$SUM"; }

# 1. op-parity tests + memcheck (builds test_backend_ops and everything else in build-device)
# BENCH_ONLY=1: build ropepp and run the benchmarks alone.
if [ "${BENCH_ONLY:-0}" = 1 ]; then
  ICU=$(ls "$ROOT"/.cache/icu/lib/libicuuc.so.* | head -1)
  cmake -S "$ROOT" -B "$ROOT/build-device" -G Ninja -DCMAKE_BUILD_TYPE=Release -DROPEPP_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DICU_INCLUDE_DIR="$ROOT/.cache/icu/include" -DICU_UC_LIBRARY="$ICU" -DICU_UC_LIBRARY_RELEASE="$ICU" >"$WORK/logs/cfg.log" 2>&1
else
OUT="$WORK/logs" BUDGET_S=${OPS_BUDGET_S:-230} OTHER_TESTS=0 bash "$ROOT/tools/device/run_cuda_tests.sh" \
  >"$WORK/logs/run_cuda_tests.out" 2>&1
cat "$WORK/logs/summary.txt" >>"$SUM" 2>/dev/null
fi
BUILD=$ROOT/build-device
cmake --build "$BUILD" -j "$(nproc)" --target ropepp test_cuda_e2e >"$WORK/logs/build_rest.log" 2>&1 ||
  note "build ropepp/test_cuda_e2e FAILED: $(grep -m1 error "$WORK/logs/build_rest.log" | cut -c1-150)"
BIN=$BUILD/ropepp

# 2. random checkpoints with the published shapes
for m in rope eh ec; do
  python3 "$ROOT/tools/gen_checkpoint.py" --out "$WORK/models/$m-376m" --preset 376m --mode $m --dtype bf16 >/dev/null
done
python3 "$ROOT/tools/gen_checkpoint.py" --out "$WORK/models/ec-776m" --preset 776m --mode ec --dtype bf16 >/dev/null &
GEN776=$!

if [ "${BENCH_ONLY:-0}" != 1 ]; then
# 3. end to end: GPU vs CPU backend, decode vs full forward
ROPEPP_E2E_MODELS="$WORK/models" timeout 150 "$BUILD/tests/test_cuda_e2e" >"$WORK/logs/e2e.log" 2>&1
note "test_cuda_e2e (376M rope/eh/ec): rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$WORK/logs/e2e.log" | head -2 | tr '\n' ' ')"
grep -E '^\[(rope|eh|ec)\]' "$WORK/logs/e2e.log" | tee -a "$SUM"

# 4. 65,536 tokens: prefill + decode on the GPU vs the reference
timeout 200 python3 "$ROOT/tools/device/long_context_check.py" "$BIN" "$WORK/models" >"$WORK/logs/long.log" 2>&1
note "long-context check rc=$?"
tail -3 "$WORK/logs/long.log" | tee -a "$SUM"
fi

# 5. benchmarks
wait $GEN776
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv,noheader >>"$SUM" 2>&1
bench() {  # name, args...
  local name=$1; shift
  timeout 120 "$BIN" bench --device cuda -b 4096 -r 5 "$@" --json >"$OUT/bench_$name.json" 2>"$WORK/logs/bench_$name.err"
  note "bench $name rc=$? ($*)"
  python3 - "$OUT/bench_$name.json" <<'PY' | tee -a "$SUM"
import json, sys
try:
    j = json.load(open(sys.argv[1]))
except Exception as e:
    print("  (no result:", e, ")"); sys.exit()
c = j["ceilings"]
print(f"  {j['mode']} weights {j['weights_bytes']/2**20:.0f} MiB, KV {j['kv_bytes_per_token']} B/tok, "
      f"allocated {j['allocated_bytes']/2**30:.2f} GiB, copy {c['copy_GBps']:.0f} GB/s, matmul {c['matmul_TFLOPs']:.0f} TFLOP/s")
for r in j["results"]:
    print(f"  {r['test']:<14} {r['tok_per_s']:>12.1f} ± {r['tok_per_s_sd']:<8.1f} t/s  {r['rate']:8.2f} {r['rate_unit']}"
          f"  {100*r.get('fraction_of_limit', 0):5.1f}%")
PY
}
bench ec376 -m "$WORK/models/ec-376m" -p 512,4096,65536 -n 128 -d 0,16384,65408
bench eh376 -m "$WORK/models/eh-376m" -p 4096 -n 128 -d 0,65408
bench ec776 -m "$WORK/models/ec-776m" -p 4096 -n 128 -d 0
note "total $(($(date +%s) - START)) s"
tar -C "$WORK" -czf "$OUT/logs.tar.gz" logs
echo; echo "==== summary ===="; cat "$SUM"
