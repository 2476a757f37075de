#!/usr/bin/env bash
# ppl_timing.sh: the WikiText-2 perplexity wall clock of the 376M EC shape (issue #6's ≤ 3 s row), repeated, with
# the load's parts (-v debug lines: checkpoint, backend, weights) and a process without the model for scale.
# Needs ropepp built (ROPEPP=path) and .device/ppl carried (tokenizer.json, tokenizer_config.json, wiki.test.raw).
#   VARIANTS="name:ENV=1,ENV2=0 ..." (default "default:"), REPS (default 3), PPL_ARGS (more flags).
set -u -o pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
ROPEPP=${ROPEPP:-$ROOT/build-device/ropepp}
M="$WORK/models/ec-376m"
ensure_model ec 376m
cp "$ROOT/.device/ppl/tokenizer.json" "$ROOT/.device/ppl/tokenizer_config.json" "$M/"
# bash's own clock around the process (a `python3 -c` here would add its ~50 ms start-up to every wall).
wall() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
t0=$EPOCHREALTIME; "$ROPEPP" --version >/dev/null 2>&1; t1=$EPOCHREALTIME
echo "process start + exit (--version): $(wall "$t0" "$t1") s"
for v in ${VARIANTS:-default:}; do
  name=${v%%:*}; envs=${v#*:}
  for r in $(seq "${REPS:-3}"); do
    t0=$EPOCHREALTIME
    env ${envs//,/ } "$ROPEPP" -v perplexity --device cuda -m "$M" -f "$ROOT/.device/ppl/wiki.test.raw" ${PPL_ARGS:-} \
      --json >"$WORK/ppl_t.json" 2>"$WORK/logs/ppl_t_${name}_$r.err"
    rc=$?; t1=$EPOCHREALTIME; w=$(wall "$t0" "$t1")
    s=$(python3 -c "import json;j=json.loads(open('$WORK/ppl_t.json').read().strip().splitlines()[-1]);print(f\"scoring {j['seconds']:.3f} s, load {j['load_seconds']:.3f} s, tokenize {j['tokenize_seconds']:.3f} s, ppl {j['ppl']:.4f}\")" 2>&1)
    echo "$name #$r rc=$rc wall $w s (started $(date -d "@$t0" +%T.%3N)) | $s"
    grep -h -E 'tokenizing .* while loading|load: |weights uploaded|results written|main: (returns|exits)' \
      "$WORK/logs/ppl_t_${name}_$r.err" | sed 's/^/    /'
  done
done
