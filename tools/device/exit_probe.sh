#!/usr/bin/env bash
# exit_probe.sh: the process-exit cost of CUDA on this machine (exit_probe.cu), each mode 3 times: wall by bash's
# $EPOCHREALTIME minus what main reported = start-up + exit. Output on stdout.   run: bash tools/device/exit_probe.sh
set -u
D="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN=${WORK:-/tmp/ropepp-device}/exit_probe
mkdir -p "$(dirname "$BIN")"
nvcc -O2 -arch=sm_90 -o "$BIN" "$D/exit_probe.cu" || exit 1
nvidia-smi --query-gpu=name,persistence_mode,driver_version --format=csv,noheader
for mode in bare alloc keep pinned reset return bare; do
  for i in 1 2 3; do
    t0=$EPOCHREALTIME
    line=$("$BIN" "$mode")
    t1=$EPOCHREALTIME
    main=$(echo "$line" | sed -E 's/.*main ([0-9.]+) s.*/\1/')
    awk -v l="$line" -v a="$t0" -v b="$t1" -v m="$main" 'BEGIN { printf "%s | wall %.3f s, outside main %.3f s\n", l, b - a, b - a - m }'
  done
done
