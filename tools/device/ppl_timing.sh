#!/usr/bin/env bash
# ppl_timing.sh: the WikiText-2 perplexity wall clock of the 376M EC shape (issue #6's ≤ 3 s row), repeated, with
# the load's parts (-v debug lines: checkpoint, backend, weights) and a process without the model for scale.
# Needs ropepp built (ROPEPP=path) and .device/ppl carried (tokenizer.json, tokenizer_config.json, wiki.test.raw).
#   VARIANTS="name:ENV=1,ENV2=0 ..." (default "default:"), REPS (default 3), PPL_ARGS (more flags).
#   BIN=base / BIN=<name> among a variant's settings runs $WORK/bin/ropepp_<name> (pack_binaries.sh BASE= / EXTRA=).
#   PPL_IDS=1: score .device/pplids/wiki.ids.xz (the same text tokenized here: `ropepp tokenize --ids`) with
#   --ids-file instead of tokenizing on the device, for binaries packed without ICU's data (the scoring is the
#   same; the wall lacks the tokenizing, which runs beside the load anyway).
#   Prebuilt, with the text (the #6 row as written): `PACK_ICU_DATA=1 bash tools/device/pack_binaries.sh ropepp`
#   (18 MB) and `tar -C .device -cf - ppl | xz -9 > .device/ppl.tar.xz` (2 MB; unpacked here when .device/ppl is
#   absent), carry both (with the ~45 MB tree they fit the 64 MiB a call carries) and set PREBUILT=1: the archive
#   is unpacked into $WORK/bin and its ropepp runs.
set -u -o pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
ROPEPP=${ROPEPP:-$ROOT/build-device/ropepp}
if [ "${PREBUILT:-0}" = 1 ]; then
  unpack_prebuilt || exit 1
  ROPEPP=$WORK/bin/ropepp
fi
M="$WORK/models/ec-376m"
ensure_model ec 376m
if [ "${PPL_IDS:-0}" = 1 ]; then
  xz -dc "$ROOT/.device/pplids/wiki.ids.xz" >"$WORK/wiki.ids" || { echo "no .device/pplids/wiki.ids.xz"; exit 1; }
  INPUT=(--ids-file "$WORK/wiki.ids")
else
  if [ ! -f "$ROOT/.device/ppl/tokenizer.json" ] && [ -f "$ROOT/.device/ppl.tar.xz" ]; then
    tar -xJf "$ROOT/.device/ppl.tar.xz" -C "$ROOT/.device" || { echo "cannot unpack .device/ppl.tar.xz"; exit 1; }
  fi
  cp "$ROOT/.device/ppl/tokenizer.json" "$ROOT/.device/ppl/tokenizer_config.json" "$M/"
  INPUT=(-f "$ROOT/.device/ppl/wiki.test.raw")
fi
# bash's own clock around the process (a `python3 -c` here would add its ~50 ms start-up to every wall).
wall() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
t0=$EPOCHREALTIME; "$ROPEPP" --version >/dev/null 2>&1; t1=$EPOCHREALTIME
echo "process start + exit (--version): $(wall "$t0" "$t1") s"
for v in ${VARIANTS:-default:}; do
  name=${v%%:*}; envs=${v#*:}
  variant_bin "$envs" "$ROPEPP"
  envs=$ENVS
  for r in $(seq "${REPS:-3}"); do
    t0=$EPOCHREALTIME
    env ${envs//,/ } "$BIN" -v perplexity --device cuda -m "$M" "${INPUT[@]}" ${PPL_ARGS:-} \
      --json >"$WORK/ppl_t.json" 2>"$WORK/logs/ppl_t_${name}_$r.err"
    rc=$?; t1=$EPOCHREALTIME; w=$(wall "$t0" "$t1")
    s=$(python3 -c "import json;j=json.loads(open('$WORK/ppl_t.json').read().strip().splitlines()[-1]);print(f\"scoring {j['seconds']:.3f} s, load {j['load_seconds']:.3f} s, tokenize {j.get('tokenize_seconds',0):.3f} s, ppl {j['ppl']:.4f}\")" 2>&1)
    echo "$name #$r rc=$rc wall $w s (started $(date -d "@$t0" +%T.%3N)) | $s"
    grep -h -E 'tokenizing .* while loading|load: |weights uploaded|results written|main: (returns|exits)' \
      "$WORK/logs/ppl_t_${name}_$r.err" | sed 's/^/    /'
  done
done
