#!/usr/bin/env bash
# chat_fixture.sh OUT_DIR [PYTHON]: a tiny random RoPE++ checkpoint (vocab 300, 64k positions) with a
# sentencepiece tokenizer.model (vocab 300, byte fallback) trained here with Debian's spm_train, for the
# `ropepp chat` end-to-end tests (tests/e2e/chat_tmux.sh). Fast: well under a minute.
set -euo pipefail
out=${1:?usage: chat_fixture.sh OUT_DIR [PYTHON]}
py=${2:-/usr/bin/python3}
src=$(cd "$(dirname "$0")/../.." && pwd)
command -v spm_train >/dev/null || { echo "chat_fixture: spm_train not found (Debian package sentencepiece)" >&2; exit 1; }
rm -rf "$out"
mkdir -p "$out"
"$py" "$src/tools/gen_checkpoint.py" --out "$out" --preset tiny --vocab 300 --mode ec --dtype f32 \
  --max-pos 65536 --seed 11
"$py" - "$out/corpus.txt" <<'PY'
import random, sys
random.seed(5)
words = ("the a user assistant hello world how are you today I am fine thanks what is your name tell me "
         "about cats dogs weather sunny rain cold warm please write story once upon time there was").split()
with open(sys.argv[1], "w") as f:
    for i in range(2000):
        who = "User:" if i % 2 == 0 else "Assistant:"
        f.write(who + " " + " ".join(random.choice(words) for _ in range(random.randint(3, 12))) + "\n")
PY
spm_train --input="$out/corpus.txt" --model_prefix="$out/tokenizer" --vocab_size=300 --model_type=bpe \
  --byte_fallback=true --character_coverage=1.0 --normalization_rule_name=identity \
  --remove_extra_whitespaces=false --minloglevel=2 >"$out/spm_train.log" 2>&1 \
  || { cat "$out/spm_train.log" >&2; exit 1; }
rm -f "$out/corpus.txt" "$out/tokenizer.vocab"
echo "chat_fixture: wrote $out"
