#!/usr/bin/env bash
# decode_ab.sh: a short device run for decode-step work: builds ropepp and the CUDA tests (sm_90), runs the
# op-parity tests of the decode ops and the end-to-end GPU-vs-CPU test, then `ropepp bench` decode rows
# (376M EC/EH at depth 0 and 65,408, 776M EC at depth 0) once per variant of the CUDA backend's switches, so
# that a change is measured side by side with what it replaces in one run. Results: $OUT/summary.txt and
# ab_<variant>_<model>.json and ppl_<variant>.json in $OUT/json.tar.gz ($OUT takes at most 8 files).
#   run: bash tools/device/decode_ab.sh     carry: [".device/icu.tar.xz"]
#   VARIANTS="name:ENV=1,ENV2=0 ..." overrides the variants below; DEPTHS_376 the 376M decode depths.
#   BENCH_SPECS="tag:model:depths ..." and BENCH_ARGS (default "-p 512 -n 128") change what is benched (prefill A/B:
#   BENCH_ARGS="-p 4096,65536 -n 16"); TESTS=0 skips the tests; OPS_TIMEOUT (240 s): the op tests' limit, past which
#   the run stops (a hang there would hang the benches too); PPL=1 adds WikiText-2 perplexity of the 376M EC per variant (carry .device/ppl; PPL_ARGS: more flags, e.g. "-b 8192").
#   TIMELINE_SPECS="tag:model:depths ..." adds per variant `ropepp bench --timeline ${TIMELINE:-24}` (CUPTI: the
#   kernels of a graphed decode step, kernel_timeline.h) at those depths: text in $OUT/json.tar.gz, tables in the summary.
#   E2E_VARIANTS="name:ENV=1,... ..." runs test_cuda_e2e once more per entry with those switches set.
#   EXTRA_TESTS="test_binary:gtest_filter ..." builds and runs more test binaries (e.g. "test_perplexity:*Cuda*").
#   BASE_PATCH=1: also builds ropepp from a copy of this tree with .device/ab.patch reversed (make it here with
#   `git diff BASE_COMMIT > .device/ab.patch`; carry it too), beside the main build; a variant with BIN=base among
#   its switches runs that binary (a change without a switch measured against the code it replaces):
#   VARIANTS="new: base:BIN=base".
#   PREBUILT=1: no build; runs the binaries of .device/bin.tar.xz (tools/device/pack_binaries.sh ropepp
#   test_backend_ops test_cuda_e2e test_decoder_layers; carry it too; PPL=1 tokenizes with the carried
#   .device/icu.tar.xz, which comes first on the library path). A test binary not in the archive is skipped. With
#   bin/ropepp_base in the archive (pack_binaries.sh BASE=<a ropepp built here from the base commit>) the variants
#   with BIN=base run that binary: an A/B without any build on the device.
set -u -o pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
START=$(date +%s)
SUM="$OUT/summary.txt"
J="$WORK/json"; mkdir -p "$J"
note() { echo "$*" | tee -a "$SUM"; }
finish() {
  note "total $(($(date +%s) - START)) s"
  tar -C "$WORK" -czf "$OUT/logs.tar.gz" logs
  tar -C "$WORK" -czf "$OUT/json.tar.gz" json
  exit 0
}
BUILD=$ROOT/build-device
for m in rope eh ec; do
  ensure_model $m 376m
done &
GEN=$!
ensure_model ec 776m &
GEN776=$!
BASE_ROPEPP=
if [ "${BASE_PATCH:-0}" = 1 ]; then
  BASE_SRC=$WORK/base-src BASE_ROPEPP=$WORK/base-src/build-device/ropepp
  (
    rm -rf "$BASE_SRC" && mkdir -p "$BASE_SRC" &&
      tar -C "$ROOT" --exclude=./build-device --exclude=./.device -cf - . | tar -C "$BASE_SRC" -xf - &&
      cd "$BASE_SRC" && { patch -R -p1 -s <"$ROOT/.device/ab.patch" || git apply -R "$ROOT/.device/ab.patch"; } &&
      ROOT="$BASE_SRC" configure_device_build "$BASE_SRC/build-device" "$WORK/logs/base_cfg.log" &&
      cmake --build "$BASE_SRC/build-device" -j "$(nproc)" --target ropepp >"$WORK/logs/base_build.log" 2>&1
  ) &
  BASE_BUILD=$!
fi
if [ "${PREBUILT:-0}" = 1 ]; then  # binaries built here by pack_binaries.sh (carry .device/bin.tar.xz)
  unpack_prebuilt || { note "no .device/bin.tar.xz to unpack"; exit 1; }
  ROPEPP=$WORK/bin/ropepp TESTS_DIR=$WORK/bin
  [ -x "$WORK/bin/ropepp_base" ] && BASE_ROPEPP=$WORK/bin/ropepp_base  # pack_binaries.sh BASE=...
  note "prebuilt binaries: $(ls "$WORK/bin" | grep -v lib | tr '\n' ' ')"
else
  configure_device_build "$BUILD" "$WORK/logs/cfg.log"
  TARGETS="ropepp test_backend_ops test_cuda_e2e test_decoder_layers"
  for t in ${EXTRA_TESTS:-}; do TARGETS="$TARGETS ${t%%:*}"; done
  [ "${TESTS:-1}" = 0 ] && TARGETS=ropepp
  cmake --build "$BUILD" -j "$(nproc)" --target $TARGETS >"$WORK/logs/build.log" 2>&1 ||
    { note "build FAILED"; grep -m5 -E "error|FAILED" "$WORK/logs/build.log" | tee -a "$SUM"; exit 1; }
  ROPEPP=$BUILD/ropepp TESTS_DIR=$BUILD/tests
  note "build $(($(date +%s) - START)) s"
fi

have_test() { [ -x "$TESTS_DIR/$1" ] || { note "$1: not built/carried, skipped"; return 1; }; }
if [ "${TESTS:-1}" != 0 ]; then
# all layers of a decode step as one op (the persistent kernel) against the CPU backend and the separate kernels
if have_test test_decoder_layers; then
timeout 300 "$TESTS_DIR/test_decoder_layers" >"$WORK/logs/decoder_layers.log" 2>&1
note "test_decoder_layers rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$WORK/logs/decoder_layers.log" | tr '\n' ' ')"
grep -E "Failure|Expected|Which is|NMSE|nmse \]|ran \(or not\)|info \]" "$WORK/logs/decoder_layers.log" | head -30 | tee -a "$SUM"
fi
# op parity of the decode ops (CUDA vs the CPU backend)
have_test test_backend_ops &&
timeout "${OPS_TIMEOUT:-240}" "$TESTS_DIR/test_backend_ops" \
  --gtest_filter="${OPS_FILTER:-*FusedLayerOps*:*FusedMatmuls*:*RopeKv*:*Matmul*}" >"$WORK/logs/ops.log" 2>&1
ops_rc=$?
note "test_backend_ops rc=$ops_rc $(grep -E '^\[  (PASSED|FAILED)' "$WORK/logs/ops.log" | tr '\n' ' ')"
grep -E "FAILED|Failure|nmse \]" "$WORK/logs/ops.log" | head -20 | tee -a "$SUM"
if [ "$ops_rc" = 124 ] || [ "$ops_rc" = 137 ]; then  # a kernel that never finishes: the benches would hang too
  note "test_backend_ops timed out after ${OPS_TIMEOUT:-240} s (a hang?); last lines:"
  tail -5 "$WORK/logs/ops.log" | tee -a "$SUM"
  finish
fi
wait $GEN
if have_test test_cuda_e2e; then
ROPEPP_E2E_MODELS="$WORK/models" timeout 150 "$TESTS_DIR/test_cuda_e2e" >"$WORK/logs/e2e.log" 2>&1
note "test_cuda_e2e rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$WORK/logs/e2e.log" | head -2 | tr '\n' ' ')"
grep -E '^\[(rope|eh|ec)\]' "$WORK/logs/e2e.log" | tee -a "$SUM"
fi
# the same end-to-end test under other switches (E2E_VARIANTS="name:ENV=1,ENV2=1 ...")
for v in ${E2E_VARIANTS:-}; do
  name=${v%%:*}; envs=${v#*:}
  env ${envs//,/ } ROPEPP_E2E_MODELS="$WORK/models" timeout 150 "$TESTS_DIR/test_cuda_e2e" >"$WORK/logs/e2e_$name.log" 2>&1
  note "test_cuda_e2e [$name] rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$WORK/logs/e2e_$name.log" | head -2 | tr '\n' ' ')"
  grep -E '^\[(rope|eh|ec)\]' "$WORK/logs/e2e_$name.log" | tee -a "$SUM"
done
for t in ${EXTRA_TESTS:-}; do
  bin=${t%%:*}; filter=${t#*:}
  timeout 240 "$TESTS_DIR/$bin" --gtest_filter="$filter" >"$WORK/logs/$bin.log" 2>&1
  note "$bin [$filter] rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$WORK/logs/$bin.log" | tr '\n' ' ')"
  grep -E "FAILED|Failure|info \]" "$WORK/logs/$bin.log" | head -20 | tee -a "$SUM"
done
fi
wait $GEN
wait $GEN776
if [ -n "$BASE_ROPEPP" ]; then
  if [ -n "${BASE_BUILD:-}" ]; then
    wait "$BASE_BUILD"
    note "base build (ab.patch reversed) rc=$? $(grep -m3 -E "error:|FAILED:" "$WORK/logs/base_build.log" "$WORK/logs/base_cfg.log" 2>/dev/null)"
  fi
fi

VARIANTS=${VARIANTS:-"new: old:ROPEPP_CUDA_FUSED_DECODE=0"}
for v in $VARIANTS; do
  name=${v%%:*}; envs=${v#*:}
  variant_bin "$envs" "$ROPEPP" "$BASE_ROPEPP"
  envs=$ENVS
  SPECS=${BENCH_SPECS:-"ec376:ec-376m:${DEPTHS_376:-0,65408} eh376:eh-376m:${DEPTHS_376:-0,65408} ec776:ec-776m:0"}
  for spec in $SPECS; do  # (a quoted default inside ${..:-..} would be one word)
    IFS=: read -r tag model depths <<<"$spec"
    json="$J/ab_${name}_$tag.json"
    env ${envs//,/ } timeout 150 "$BIN" bench --device cuda -b 4096 -r 5 -m "$WORK/models/$model" ${BENCH_ARGS:--p 512 -n 128} \
      -d "$depths" --no-ceilings --json >"$json" 2>"$WORK/logs/ab_${name}_$tag.err"
    rc=$?
    python3 - "$json" "$name" "$tag" "$rc" "${depths%%,*}" <<'PY' | tee -a "$SUM"
import json, sys
path, name, tag, rc, depth = sys.argv[1:]
try:
    j = json.load(open(path))
except Exception as e:
    print(f"{name:<11} {tag:<6} rc={rc} no result ({e})"); sys.exit()
rows = "  ".join(f"{r['test']} {r['tok_per_s']:.0f}±{r['tok_per_s_sd']:.0f}" for r in j["results"])
print(f"{name:<11} {tag:<6} {rows}")
b = j.get("decode_breakdown", [])
if b:  # one decode step at the spec's first depth
    print(f"  {tag} decode step at depth {depth}, ops timed alone: {j.get('decode_breakdown_sum_us', 0):.1f} us")
    for r in b:
        print(f"    {r['op']:<44} x{r['calls']:<3} {r['us']:8.1f} us {r['GBps']:7.0f} GB/s")
PY
  done
  for spec in ${TIMELINE_SPECS:-}; do
    IFS=: read -r tag model depths <<<"$spec"
    txt="$J/timeline_${name}_$tag.txt"
    env ${envs//,/ } timeout 150 "$BIN" bench --device cuda -b 4096 -r 1 -m "$WORK/models/$model" -p 16 -n 0 \
      -d "$depths" --timeline "${TIMELINE:-24}" --no-ceilings --no-breakdown >"$txt" 2>"$WORK/logs/timeline_${name}_$tag.err"
    note "timeline $name $tag rc=$? $(tail -2 "$WORK/logs/timeline_${name}_$tag.err" | tr '\n' ' ')"
    grep -E "^timeline|^\| " "$txt" | grep -v -E "^\| +[0-9]+ \|" | tee -a "$SUM"  # summary + by-name rows
  done
  if [ "${PPL:-0}" = 1 ] && [ -f "$ROOT/.device/ppl/tokenizer.json" ]; then
    cp "$ROOT/.device/ppl/tokenizer.json" "$ROOT/.device/ppl/tokenizer_config.json" "$WORK/models/ec-376m/"
    t0=$(date +%s.%N)
    env ${envs//,/ } timeout 90 "$BIN" perplexity --device cuda -m "$WORK/models/ec-376m" \
      -f "$ROOT/.device/ppl/wiki.test.raw" ${PPL_ARGS:-} --json >"$J/ppl_$name.json" 2>"$WORK/logs/ppl_$name.err"
    note "$name perplexity ec-376m WikiText-2 ${PPL_ARGS:-} rc=$? wall $(python3 -c "import time;print(round(time.time()-$t0,2))") s"
    grep -E '^\||op by op' "$WORK/logs/ppl_$name.err" | tee -a "$SUM"  # PPL_ARGS=--profile: the op table
    grep -v -E '^\||op by op' "$WORK/logs/ppl_$name.err" | tail -3 | tee -a "$SUM"  # the lines after the table
    python3 -c "import json,sys; j=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); print({k: j[k] for k in ('ppl','nll','scored') if k in j})" \
      "$J/ppl_$name.json" 2>&1 | tee -a "$SUM"
  fi
done
finish
