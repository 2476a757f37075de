#!/usr/bin/env bash
# ncu_source.sh: Nsight Compute's per-instruction view (SASS with its warp-stall samples and executed counts) of
# one launch of a kernel, with the binaries of .device/bin.tar.xz (pack_binaries.sh ropepp; no build on the
# device). For each spec "name:kernel-regex:launch-skip:model:bench args" it writes $OUT/<name>.txt (the usual
# sections) and $OUT/<name>_sass.csv (one row per SASS instruction: stall reasons, issued/executed counts; read it
# with tools/device/sass_hotspots.py), and prints a few of the usual sections' figures.
#   run: SPECS='pf:attention_prefill_wgmma:10:ec-376m:-p 4096 -n 0' bash tools/device/ncu_source.sh
#   carry: [".device/bin.tar.xz"]
set -u -o pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
unpack_prebuilt || exit 1
NCU=$(find_tool ncu)
[ -n "$NCU" ] || { echo "no ncu on this machine"; exit 1; }
"$NCU" --version | tail -1
IFS=';' read -ra specs <<<"${SPECS:?}"
for spec in "${specs[@]}"; do
  IFS=':' read -r name kernel skip model args <<<"$spec"
  ensure_model "${model%%-*}" "${model#*-}"
  # shellcheck disable=SC2086
  ROPEPP_CUDA_GRAPHS=0 timeout 300 "$NCU" -f -o "$WORK/$name" --kernel-name "regex:$kernel" --launch-skip "$skip" \
    --launch-count 1 --import-source no --section SpeedOfLight --section WarpStateStats --section SourceCounters \
    --section SchedulerStats --section InstructionStats --section Occupancy --section LaunchStats \
    "$WORK/bin/ropepp" bench --device cuda -b 4096 -r 1 -m "$WORK/models/$model" $args --no-ceilings \
    --no-breakdown >"$OUT/${name}_run.txt" 2>&1
  echo "ncu $name rc=$?"
  "$NCU" -i "$WORK/$name.ncu-rep" >"$OUT/$name.txt" 2>&1
  "$NCU" -i "$WORK/$name.ncu-rep" --page source --csv --print-source sass >"$OUT/${name}_sass.csv" 2>&1
  echo "== $name: $(wc -l <"$OUT/${name}_sass.csv") SASS rows"
  grep -E "Duration|Issue Slots Busy|Eligible Warps|Warp Cycles Per Issued|Registers Per|Tensor" "$OUT/$name.txt" | head -12
done
