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
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
START=$(date +%s)
export PYTHONUNBUFFERED=1
SUM="$OUT/summary.txt"
# The JSON results go to $J and come back as one archive ($OUT takes at most 8 files).
J="$WORK/json"; mkdir -p "$J"
note() { echo "$*" | tee -a "$SUM"; }

# 1. op-parity tests + memcheck (builds test_backend_ops and everything else in build-device)
# BENCH_ONLY=1: build ropepp and run the benchmarks alone. SKIP_BENCH=1: everything but the benchmarks.
# PREBUILT=1 (with BENCH_ONLY=1): no build; ropepp from .device/bin.tar.xz (tools/device/pack_binaries.sh ropepp,
# carried), so the full table costs no device build (~4 minutes).
if [ "${PREBUILT:-0}" = 1 ]; then
  [ "${BENCH_ONLY:-0}" = 1 ] || { note "PREBUILT=1 needs BENCH_ONLY=1 (the tests are run by decode_ab.sh)"; exit 1; }
  unpack_prebuilt || { note "no .device/bin.tar.xz to unpack"; exit 1; }
elif [ "${BENCH_ONLY:-0}" = 1 ]; then
  configure_device_build "$ROOT/build-device" "$WORK/logs/cfg.log"
else
OUT="$WORK/logs" BUDGET_S=${OPS_BUDGET_S:-330} OTHER_TESTS=0 bash "$ROOT/tools/device/run_cuda_tests.sh" \
  >"$WORK/logs/run_cuda_tests.out" 2>&1
cat "$WORK/logs/summary.txt" >>"$SUM" 2>/dev/null
fi
BUILD=$ROOT/build-device
TARGETS="ropepp test_cuda_e2e test_decoder_layers"; [ "${BENCH_ONLY:-0}" = 1 ] && TARGETS=ropepp
if [ "${PREBUILT:-0}" = 1 ]; then
  BIN=$WORK/bin/ropepp
else
  cmake --build "$BUILD" -j "$(nproc)" --target $TARGETS >"$WORK/logs/build_rest.log" 2>&1 ||
    note "build ropepp/test_cuda_e2e/test_decoder_layers FAILED: $(grep -m1 error "$WORK/logs/build_rest.log" | cut -c1-150)"
  BIN=$BUILD/ropepp
fi

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

# 3b. all layers of a decode step as one op (the persistent kernel) vs the CPU backend and the separate kernels
timeout 300 "$BUILD/tests/test_decoder_layers" >"$WORK/logs/decoder_layers.log" 2>&1
note "test_decoder_layers: rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$WORK/logs/decoder_layers.log" | head -2 | tr '\n' ' ')"

# 4. 65,536 tokens: prefill + decode on the GPU vs the reference
timeout 200 python3 "$ROOT/tools/device/long_context_check.py" "$BIN" "$WORK/models" >"$WORK/logs/long.log" 2>&1
note "long-context check rc=$?"
tail -3 "$WORK/logs/long.log" | tee -a "$SUM"
fi

# 5. benchmarks (SKIP_BENCH=1: stop after the correctness part)
wait $GEN776
if [ "${SKIP_BENCH:-0}" = 1 ]; then
  note "total $(($(date +%s) - START)) s (benchmarks skipped)"
  tar -C "$WORK" -czf "$OUT/logs.tar.gz" logs
  echo; echo "==== summary ===="; cat "$SUM"
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv,noheader >>"$SUM" 2>&1
bench() {  # name, args...
  local name=$1; shift
  timeout 120 "$BIN" bench --device cuda -b 4096 -r 5 "$@" --json >"$J/bench_$name.json" 2>"$WORK/logs/bench_$name.err"
  note "bench $name rc=$? ($*)"
  python3 - "$J/bench_$name.json" <<'PY' | tee -a "$SUM"
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
bench ec376 -m "$WORK/models/ec-376m" -p 4096,512,65536 -n 128 -d 0,16384,65408
bench eh376 -m "$WORK/models/eh-376m" -p 4096 -n 128 -d 0,16384,65408
[ "${SKIP_HF:-0}" = 1 ] || bench rope376 -m "$WORK/models/rope-376m" -p 4096 -n 128 -d 0,16384
bench ec776 -m "$WORK/models/ec-776m" -p 4096 -n 128 -d 0
# the per-op decode and prefill breakdowns and the 64k memory plan
for m in ec376 eh376 ec776; do
  python3 - "$J/bench_$m.json" "$m" <<'PY' 2>&1 | tee -a "$SUM"
import json, sys
j = json.load(open(sys.argv[1]))
for kind, title in (("decode", "decode step"), ("prefill", f"prefill {j.get('prefill_breakdown_tokens')} tokens")):
    rows, total = j.get(kind + "_breakdown", []), j.get(kind + "_breakdown_sum_us", 0)
    print(f"{sys.argv[2]} {title}: ops timed alone sum to {total:.1f} us")
    for b in rows:
        print(f"  {b['op']:<40} x{b['calls']:<4} {b['us']:9.1f} us {100*b['us']/max(total,1e-9):5.1f}% "
              f"{b['bytes']/1e6:9.2f} MB {b['GBps']:7.0f} GB/s")
PY
done
"$BIN" info -m "$WORK/models/ec-376m" --device cuda -c 65536 -b 2048 2>&1 | tail -1 | tee -a "$SUM"
# GPU memory at 65,536 context with a smaller prefill batch (the -b 4096 rows above hold more activations)
timeout 60 "$BIN" bench --device cuda -b 2048 -r 1 -m "$WORK/models/ec-376m" -p 65536 -n 16 -d 65408 --no-ceilings \
  --no-breakdown --json >"$J/bench_ec376_b2048.json" 2>"$WORK/logs/bench_b2048.err"
python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print('ec376 -b 2048 ctx 65536: allocated', round(j['allocated_bytes']/2**30,3), 'GiB;', [(r['test'], round(r['tok_per_s'])) for r in j['results']])" \
  "$J/bench_ec376_b2048.json" 2>&1 | tee -a "$SUM"

# 6. HF transformers / PyTorch reference side by side (tools/bench/hf_compare.py; SKIP_HF=1 skips it)
[ "${SKIP_HF:-0}" = 1 ] || timeout 150 python3 "$ROOT/tools/bench/hf_compare.py" \
  -m "$WORK/models/ec-376m" -m "$WORK/models/rope-376m" -m "$WORK/models/eh-376m" \
  -j "$J/bench_ec376.json" -j "$J/bench_rope376.json" -j "$J/bench_eh376.json" \
  --out "$J/hf_compare.json" >"$WORK/logs/hf_compare.log" 2>&1
note "hf_compare rc=$?"
sed -n '/^HF transformers/,$p' "$WORK/logs/hf_compare.log" | tee -a "$SUM"
grep -E 'vs reference|error' "$WORK/logs/hf_compare.log" | tee -a "$SUM"

# 7. WikiText-2 perplexity on the 376M EC shape (default recipe 4096/512), Llama-3 tokenizer carried in
#    .device/ppl (tokenizer.json, tokenizer_config.json, wiki.test.raw; see tools/device/README or the notes)
if [ -f "$ROOT/.device/ppl/tokenizer.json" ] && [ "${SKIP_PPL:-0}" != 1 ]; then
  cp "$ROOT/.device/ppl/tokenizer.json" "$ROOT/.device/ppl/tokenizer_config.json" "$WORK/models/ec-376m/"
  for b in ${PPL_BATCHES:-4096}; do  # e.g. PPL_BATCHES="4096 8192 4096 8192" (later runs overwrite the JSON)
    t0=$(date +%s.%N)
    timeout 90 "$BIN" perplexity --device cuda -b $b -m "$WORK/models/ec-376m" -f "$ROOT/.device/ppl/wiki.test.raw" \
      --json >"$J/ppl_ec376_b$b.json" 2>"$WORK/logs/ppl_b$b.err"
    rc=$?
    note "perplexity ec-376m WikiText-2 (-b $b) rc=$rc wall $(python3 -c "import time;print(round(time.time()-$t0,2))") s"
    tail -4 "$WORK/logs/ppl_b$b.err" | tee -a "$SUM"
    python3 -c "import json,sys; j=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); print({k: j[k] for k in j if k != 'windows'})" \
      "$J/ppl_ec376_b$b.json" 2>&1 | cut -c1-400 | tee -a "$SUM"
  done
fi
note "total $(($(date +%s) - START)) s"
tar -C "$WORK" -czf "$OUT/logs.tar.gz" logs
tar -C "$WORK" -czf "$OUT/json.tar.gz" json
echo; echo "==== summary ===="; cat "$SUM"
