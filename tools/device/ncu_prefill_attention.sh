#!/usr/bin/env bash
# ncu_prefill_attention.sh: Nsight Compute on the wgmma prefill attention kernel of a 376M EC prompt, with the
# binaries of .device/bin.tar.xz (pack_binaries.sh ropepp; no build on the device): one launch of pp4096 (a
# one-sequence prompt from position 0: paired token tiles) and one of a late 4,096-token chunk of pp65536 (history
# 49,152: unpaired), so that the two can be compared section by section. Writes $OUT/ncu_pp4096.txt, ncu_pp64k.txt.
#   run: bash tools/device/ncu_prefill_attention.sh     carry: [".device/bin.tar.xz"]
set -u -o pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
unpack_prebuilt || exit 1
ensure_model ec 376m
NCU=$(find_tool ncu)
[ -n "$NCU" ] || { echo "no ncu on this machine"; exit 1; }
run() {  # name, launches to skip, prompt length
  ROPEPP_CUDA_GRAPHS=0 timeout 240 "$NCU" --kernel-name "regex:${KERNEL:-attention_prefill_wgmma}" --launch-skip "$2" \
    --launch-count 1 --section SpeedOfLight --section WarpStateStats --section ComputeWorkloadAnalysis \
    --section Occupancy --section LaunchStats --section SchedulerStats --section InstructionStats \
    --section MemoryWorkloadAnalysis "$WORK/bin/ropepp" bench --device cuda -b 4096 -r 1 -m "$WORK/models/ec-376m" \
    -p "$3" -n 0 --no-ceilings --no-breakdown >"$OUT/ncu_$1.txt" 2>&1
  echo "ncu $1 rc=$?"
}
run pp4096 10 4096      # the untimed warm-up run's 7 launches, then the timed run's layer 3
run pp64k 96 65536      # chunk 12 of 16 (positions 49,152 .. 53,247), layer 0
for f in pp4096 pp64k; do
  echo "== $f"
  grep -E "Duration|Compute \(SM\) Throughput|Memory Throughput|Executed Ipc A|Issue Slots Busy|No Eligible|Active Warps Per|Eligible Warps|Warp Cycles Per Issued|Registers Per|Achieved Occupancy|Grid Size|Block Limit|Theoretical Occ|Tensor|L1/TEX Hit|L2 Hit|Stall|Waves Per SM" "$OUT/ncu_$f.txt" | head -40
done
