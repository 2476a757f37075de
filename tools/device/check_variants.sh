#!/usr/bin/env bash
# check_variants.sh: one device run for kernel variants behind CUDA backend switches, staged so that a variant
# that hangs or fails costs little: build, then op tests in growing order (the fused/16-bit ops, one shape's
# attention up to 5,000 positions, all attention cases), then test_cuda_e2e with the default switches and with
# every variant that passed, then `ropepp bench` and WikiText-2 perplexity per passing variant. A variant
# whose smoke test failed or timed out is dropped from everything after it. Results: $OUT/summary.txt, JSON.
#   run: bash tools/device/check_variants.sh     carry: [".device/icu.tar.xz", ".device/ppl"]
#   VARIANTS="name:ENV=1,ENV2=1 ..." (default: this session's three switches, alone and together); each
#   variant's name is matched against the op tests' failure lines by the words in CHECK_<name> (below).
#   BENCH_ARGS (default "-p 4096,65536 -n 16 -d 0,65408"), MODEL (default ec-376m), PPL=0 skips perplexity.
set -u -o pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
START=$(date +%s)
SUM="$OUT/summary.txt"
note() { echo "$*" | tee -a "$SUM"; }
el() { echo $(($(date +%s) - START)); }
BUILD=$ROOT/build-device
MODEL=${MODEL:-ec-376m}
for m in ${MODELS:-rope eh ec}; do
  ensure_model $m 376m
done &
GEN=$!
configure_device_build "$BUILD" "$WORK/logs/cfg.log"
cmake --build "$BUILD" -j "$(nproc)" --target ropepp test_backend_ops test_cuda_e2e >"$WORK/logs/build.log" 2>&1 ||
  { note "build FAILED"; grep -m5 -E "error|FAILED" "$WORK/logs/build.log" | tee -a "$SUM"; exit 1; }
note "build $(el) s"

VARIANTS=${VARIANTS:-"ws:ROPEPP_CUDA_PREFILL_WS=1 half:ROPEPP_CUDA_HALF_ACTIVATIONS=1 mma:ROPEPP_CUDA_DECODE_MMA=1"}
# Words of the op tests' failure lines that belong to each variant (the tests run every variant themselves).
declare -A CHECK=([ws]="warp-specialized" [half]="16-bit" [mma]="tensor cores")
declare -A BAD=()
ops() {  # name, timeout, gtest filter, [env...]
  local name=$1 t=$2 filter=$3
  shift 3
  env "$@" timeout "$t" "$BUILD/tests/test_backend_ops" --gtest_filter="$filter" >"$WORK/logs/ops_$name.log" 2>&1
  local rc=$?
  note "ops [$name] rc=$rc $(el) s: $(grep -E '^\[  (PASSED|FAILED)' "$WORK/logs/ops_$name.log" | tr '\n' ' ')"
  grep -E "Failure|NMSE .* above|unwritten" "$WORK/logs/ops_$name.log" | head -12 | tee -a "$SUM"
  for v in "${!CHECK[@]}"; do
    if [ $rc = 124 ] || grep -E "Failure|above tolerance|unwritten" -A3 "$WORK/logs/ops_$name.log" | grep -q "${CHECK[$v]}"; then
      BAD[$v]=1
    fi
  done
  return $rc
}
ops fused 120 '*FusedLayerOps*:*SwigluAddGather*'
# one kernel at a time on one shape first: a hang names its kernel and costs 60 s
declare -A SMOKE=([ws]="prefill warp-specialized" [mma]="decode tensor cores")
for v in "${!SMOKE[@]}"; do
  env ROPEPP_OPS_MAX_CTX=5000 ROPEPP_OPS_ATTN_KERNEL="${SMOKE[$v]}" timeout 60 "$BUILD/tests/test_backend_ops" \
    --gtest_filter='Shapes/BackendOpsAttention.AllCases/376M_E*' >"$WORK/logs/ops_smoke_$v.log" 2>&1
  rc=$?
  note "ops smoke [$v] rc=$rc $(el) s: $(grep -E '^\[  (PASSED|FAILED)' "$WORK/logs/ops_smoke_$v.log" | tr '\n' ' ')"
  grep -E "Failure|NMSE .* above|unwritten" "$WORK/logs/ops_smoke_$v.log" | head -6 | tee -a "$SUM"
  [ $rc = 0 ] || BAD[$v]=1
done
# every case with the kernels that survived (a failed one is left out so that it cannot hang this run)
if [ -z "${BAD[ws]:-}${BAD[mma]:-}" ]; then
  ops attn_all 240 '*Attention*'
else
  for k in "decode" "prefill" "prefill mma.sync" "auto"; do
    ops "attn_${k// /_}" 120 '*Attention*' ROPEPP_OPS_ATTN_KERNEL="$k"
  done
  [ -z "${BAD[ws]:-}" ] && ops attn_ws 120 '*Attention*' ROPEPP_OPS_ATTN_KERNEL="prefill warp-specialized"
  [ -z "${BAD[mma]:-}" ] && ops attn_mma 120 '*Attention*' ROPEPP_OPS_ATTN_KERNEL="decode tensor cores"
fi
note "variants failing the op tests: ${!BAD[*]}"

bench() {  # name, [env...]
  local name=$1
  shift
  local json="$OUT/bench_$name.json"
  env "$@" timeout 150 "$BUILD/ropepp" bench --device cuda -b 4096 -r 3 -m "$WORK/models/$MODEL" \
    ${BENCH_ARGS:--p 4096,65536 -n 16 -d 0,65408} --no-ceilings --json >"$json" 2>"$WORK/logs/bench_$name.err"
  local rc=$?
  python3 - "$json" "$name" "$rc" <<'PY' | tee -a "$SUM"
import json, sys
path, name, rc = sys.argv[1:]
try:
    j = json.load(open(path))
except Exception as e:
    print(f"{name:<8} rc={rc} no result ({e})"); sys.exit()
print(f"{name:<8} " + "  ".join(f"{r['test']} {r['tok_per_s']:.0f}±{r['tok_per_s_sd']:.0f}" for r in j["results"]))
PY
}
ppl() {  # name, [env...]
  local name=$1
  shift
  [ "${PPL:-1}" = 1 ] && [ -f "$ROOT/.device/ppl/tokenizer.json" ] || return 0
  cp "$ROOT/.device/ppl/tokenizer.json" "$ROOT/.device/ppl/tokenizer_config.json" "$WORK/models/$MODEL/"
  local t0
  t0=$(date +%s.%N)
  env "$@" timeout 90 "$BUILD/ropepp" perplexity --device cuda -m "$WORK/models/$MODEL" \
    -f "$ROOT/.device/ppl/wiki.test.raw" ${PPL_ARGS:-} --json >"$OUT/ppl_$name.json" 2>"$WORK/logs/ppl_$name.err"
  note "$name perplexity WikiText-2 ${PPL_ARGS:-} rc=$? wall $(python3 -c "import time;print(round(time.time()-$t0,2))") s"
  python3 -c "import json,sys; j=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); print({k: j[k] for k in ('ppl','nll','scored') if k in j})" \
    "$OUT/ppl_$name.json" 2>&1 | tee -a "$SUM"
}
e2e() {  # name, [env...]
  local name=$1
  shift
  env "$@" ROPEPP_E2E_MODELS="$WORK/models" timeout 150 "$BUILD/tests/test_cuda_e2e" >"$WORK/logs/e2e_$name.log" 2>&1
  note "test_cuda_e2e [$name] rc=$? $(el) s: $(grep -E '^\[  (PASSED|FAILED)' "$WORK/logs/e2e_$name.log" | head -2 | tr '\n' ' ')"
  grep -E '^\[(rope|eh|ec)\]|Failure' "$WORK/logs/e2e_$name.log" | head -12 | tee -a "$SUM"
}
GOOD=()
all_env=()
for v in $VARIANTS; do
  name=${v%%:*}; envs=${v#*:}
  [ -n "${BAD[$name]:-}" ] && { note "skipping $name (op tests)"; continue; }
  GOOD+=("$v")
  all_env+=(${envs//,/ })
done
wait $GEN
bench base
ppl base
for v in "${GOOD[@]}"; do
  name=${v%%:*}; envs=${v#*:}
  bench "$name" ${envs//,/ }
done
if [ ${#GOOD[@]} -gt 0 ]; then
  [ ${#GOOD[@]} -gt 1 ] && bench all "${all_env[@]}"
  ppl all "${all_env[@]}"
fi
e2e default
[ ${#all_env[@]} -gt 0 ] && e2e passing "${all_env[@]}"
note "total $(el) s"
tar -C "$WORK" -czf "$OUT/logs.tar.gz" logs
