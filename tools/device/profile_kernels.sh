#!/usr/bin/env bash
# profile_kernels.sh: Nsight Compute on the device machine for one kernel of a 376M EC prefill (default: the
# flash-attention prefill kernel of pp4096). Writes $OUT/ncu_<name>.txt (speed of light, warp stalls, memory
# and compute workload, occupancy, source counters).
#   run: KERNEL=attention_prefill_flash bash tools/device/profile_kernels.sh   carry: [".device/icu.tar.xz"]
set -u -o pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
KERNEL=${KERNEL:-attention_prefill_flash}
configure_device_build "$ROOT/build-device" "$OUT/cfg.log"
cmake --build "$ROOT/build-device" -j "$(nproc)" --target ropepp >"$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }
ensure_model ec 376m
NCU=$(find_tool ncu)
[ -n "$NCU" ] || { echo "no ncu on this machine"; exit 1; }
ROPEPP_CUDA_GRAPHS=0 timeout 300 "$NCU" --kernel-name "regex:$KERNEL" --launch-skip "${SKIP:-4}" --launch-count 1 \
  --section SpeedOfLight --section WarpStateStats --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
  --section Occupancy --section LaunchStats --section SchedulerStats --section InstructionStats \
  "$ROOT/build-device/ropepp" bench --device cuda -b 4096 -r 1 -m "$WORK/models/ec-376m" -p 4096 -n 1 \
  --no-ceilings --no-breakdown >"$OUT/ncu_$KERNEL.txt" 2>&1
echo "ncu rc=$?"
grep -v "^==PROF==" "$OUT/ncu_$KERNEL.txt" | grep -v "^ *-*$" | tail -200
