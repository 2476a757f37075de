#!/usr/bin/env bash
# pdl_probe.sh: the cost of one dependent kernel boundary by mechanism (graph edge, PDL wait, flag spin, persistent
# grid barrier; pdl_probe.cu), each at 1, 2 and 4 blocks per SM. Output on stdout.
#   run: bash tools/device/pdl_probe.sh [steps per graph] [replays]
set -u
D="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN=${WORK:-/tmp/ropepp-device}/pdl_probe
mkdir -p "$(dirname "$BIN")"
nvcc -O2 -arch=sm_90 -I"$D/../../kernels" -o "$BIN" "$D/pdl_probe.cu" || exit 1
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
timeout 120 "$BIN" "${1:-200}" "${2:-20}"
