#!/usr/bin/env bash
# profile_decode.sh: where a graphed decode step spends its time on the device. Builds ropepp (sm_90), then
#  1. `ropepp bench --timeline` (CUPTI in ropepp; the device image has no Nsight Systems): the kernels of a graphed
#     decode step in order with start, duration, the gap before each and its share of the step, for the 376M EC
#     at depth 0 and the 376M EH/EC at depth 65,408;
#  2. Nsight Compute of the decode attention split kernel and the combine kernel at depth 65,408 (graphs off):
#     speed of light, memory workload, occupancy, warp stalls.
#  3. with .device/ppl carried (tools/device/prepare_carry.sh) and PPL≠0: the WikiText-2 wall (ppl_timing.sh, PPL_REPS).
# Results: $OUT/timeline_<tag>.txt, $OUT/ncu_<tag>.txt, $OUT/ppl_timing.txt, $OUT/profile_summary.txt.
#   run: bash tools/device/profile_decode.sh     carry: [".device/icu.tar.xz", ".device/ppl"]
#   SPECS="tag:model:depth ..." (default "ec0:ec-376m:0 eh64k:eh-376m:65408 ec64k:ec-376m:65408"), NCU=0 skips step 2,
#   NCU_SPECS (default "eh64k:eh-376m:65408") the ncu runs, NCU_KERNELS the kernel-name regex.
set -u -o pipefail
D="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$D/setup.sh"
START=$(date +%s)
SUM="$OUT/profile_summary.txt"
note() { echo "$*" | tee -a "$SUM"; }
for m in eh ec; do ensure_model $m 376m; done &
GEN=$!
configure_device_build "$ROOT/build-device" "$WORK/logs/cfg.log"
cmake --build "$ROOT/build-device" -j "$(nproc)" --target ropepp >"$WORK/logs/build.log" 2>&1 ||
  { note "build FAILED"; grep -m5 -E "error|FAILED" "$WORK/logs/build.log" | tee -a "$SUM"; exit 1; }
note "build $(($(date +%s) - START)) s"
wait $GEN
ROPEPP="$ROOT/build-device/ropepp"
NCU_BIN=$(find_tool ncu)
note "ncu: ${NCU_BIN:-none}  $(nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader)"

for s in ${SPECS:-ec0:ec-376m:0 eh64k:eh-376m:65408 ec64k:ec-376m:65408}; do
  IFS=: read -r tag model depth <<<"$s"
  # CUPTI inside ropepp (kernel_timeline.h): every kernel and copy of 24 graphed decode steps
  timeout 180 "$ROPEPP" bench --device cuda -b 4096 -m "$WORK/models/$model" -p 16 -n 0 -d "$depth" -r 1 \
    --timeline "${TIMELINE:-24}" --no-ceilings --no-breakdown >"$OUT/timeline_$tag.txt" 2>"$WORK/logs/timeline_$tag.log"
  note "timeline $tag rc=$? $(tail -2 "$WORK/logs/timeline_$tag.log" | tr '\n' ' ')"
  grep -E "^timeline|^\| " "$OUT/timeline_$tag.txt" | head -60 | tee -a "$SUM"
done

if [ "${NCU:-1}" != 0 ] && [ -n "$NCU_BIN" ]; then
  for s in ${NCU_SPECS:-eh64k:eh-376m:65408}; do
    IFS=: read -r tag model depth <<<"$s"
    # graphs off: decode steps launch their kernels one by one; skip the first steps' launches (warm-up)
    ROPEPP_CUDA_GRAPHS=0 timeout 240 "$NCU_BIN" --kernel-name "regex:${NCU_KERNELS:-attention_decode_split_kv_mma|attention_decode_combine}" \
      --launch-skip 16 --launch-count 2 \
      --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
      --section WarpStateStats --section SchedulerStats \
      "$ROPEPP" bench --device cuda -b 4096 -m "$WORK/models/$model" -p 16 -n 16 -d "$depth" -r 1 \
      --no-ceilings --no-breakdown >"$OUT/ncu_$tag.txt" 2>&1
    note "ncu $tag rc=$?"
    grep -E "attention_decode|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Block Limit|Waves Per SM|Stall|Issue Slots Busy|L2 Hit|Eligible Warps" \
      "$OUT/ncu_$tag.txt" | head -60 | tee -a "$SUM"
  done
fi
# the WikiText-2 wall with this build's defaults (issue #6), when .device/ppl is carried
if [ "${PPL:-1}" != 0 ] && [ -f "$ROOT/.device/ppl/wiki.test.raw" ]; then
  ROPEPP="$ROPEPP" REPS="${PPL_REPS:-4}" VARIANTS="${PPL_VARIANTS:-default:}" bash "$D/ppl_timing.sh" 2>&1 | tee "$OUT/ppl_timing.txt" | grep -E "wall|start" | tee -a "$SUM"
fi
note "total $(($(date +%s) - START)) s"
