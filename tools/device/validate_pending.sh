#!/usr/bin/env bash
# validate_pending.sh: one device call that tests and measures the switches written while no device was lent
# (thirteenth session), each against the defaults in the same run:
#   ROPEPP_CUDA_L2_PREFETCH=N    decode kernels issue L2 prefetches before their PDL wait (kernels/l2_prefetch.cuh;
#                                bits: 1 matvecs → next projection, 2 attention → Wgate|Wup, 4 attention → its own
#                                K/V at short context): op tests (BackendOps.L2PrefetchHints, the attention kernels
#                                "..., L2 prefetch"), test_cuda_e2e under 1 and 7, decode tok/s A/B of 0, 1, 3, 7
#                                (376M EC/EH at 0 and 65,408, 776M EC)
#   ROPEPP_CUDA_DECODE_SPLIT_ALIGN=16  decode attention splits rounded to 16 positions, not 64 (at 64k: 392 blocks
#                                instead of 342 (EH) / 376 (EC) on 396 slots): op tests "..., split align 16", A/B
#   ROPEPP_PPL_LOGIT_ROWS=256    perplexity's lm_head in two matmuls of 256 rows per window, as before this session
#                                (now one of 512, its stride: the 263 MB lm_head read once per window), wall A/B
#   ROPEPP_CUDA_GRAPH_SCORING=1  perplexity/score forward calls as CUDA graphs: PerplexityCuda.GraphScoringEqualsEager
#                                and PerplexityCuda.EqualsCpu, then the WikiText-2 wall clock A/B (ppl_timing.sh)
#   run: bash tools/device/validate_pending.sh     carry: [".device/icu.tar.xz", ".device/ppl"]
# Order: one build of everything, the WikiText wall A/B (short: it comes back even if the rest runs out of time),
# then decode_ab.sh (its build step finds nothing to do): tests, then the decode A/B.
# Results: $OUT/ppl_timing.txt, $OUT/summary.txt (decode_ab.sh), logs and json archives. About 8–9 minutes;
# VARIANTS / BENCH_SPECS / REPS trim it, TESTS=0 skips the tests.
set -u -o pipefail
D="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$D/setup.sh"  # ROOT, OUT, WORK, configure_device_build
START=$(date +%s)
configure_device_build "$ROOT/build-device" "$WORK/logs/cfg.log"
cmake --build "$ROOT/build-device" -j "$(nproc)" --target ropepp test_backend_ops test_cuda_e2e test_decoder_layers \
  test_perplexity >"$WORK/logs/build.log" 2>&1 ||
  { echo "build FAILED" | tee "$OUT/summary.txt"; grep -m5 -E "error|FAILED" "$WORK/logs/build.log" | tee -a "$OUT/summary.txt"; exit 1; }
echo "build $(($(date +%s) - START)) s" | tee "$OUT/ppl_timing.txt"
ROPEPP="$ROOT/build-device/ropepp" REPS="${REPS:-3}" \
  VARIANTS="default: rows256:ROPEPP_PPL_LOGIT_ROWS=256 graph:ROPEPP_CUDA_GRAPH_SCORING=1" \
  bash "$D/ppl_timing.sh" 2>&1 | tee -a "$OUT/ppl_timing.txt"
OPS_FILTER='*L2Prefetch*:*FusedLayerOps*:*Attention*' \
ROPEPP_OPS_ATTN_KERNEL="decode|decode, L2 prefetch|decode, split align 16|decode tensor cores, split align 16|decode tensor cores, history cached|decode tensor cores, history cached, L2 prefetch|decode tensor cores, history cached, split align 16" \
E2E_VARIANTS="l2w:ROPEPP_CUDA_L2_PREFETCH=1 l2all:ROPEPP_CUDA_L2_PREFETCH=7" \
EXTRA_TESTS="test_perplexity:*Cuda*" \
VARIANTS="${VARIANTS:-def: l2_1:ROPEPP_CUDA_L2_PREFETCH=1 l2_3:ROPEPP_CUDA_L2_PREFETCH=3 l2_7:ROPEPP_CUDA_L2_PREFETCH=7 a16:ROPEPP_CUDA_DECODE_SPLIT_ALIGN=16}" \
BENCH_SPECS="${BENCH_SPECS:-ec376:ec-376m:0,65408 eh376:eh-376m:65408 ec776:ec-776m:0}" \
PPL=0 bash "$D/decode_ab.sh"
