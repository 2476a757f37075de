#!/usr/bin/env bash
# chat_piped.sh ROPEPP MODEL_DIR WORK_DIR [PYTHON]: `ropepp chat` with stdin piped (no terminal): stdout is
# exactly the replies (each followed by a newline, the same text /save records), no prompts; notices and
# command output on stderr; multi-line input, //-escaped messages, an error that does not end the session;
# exit status 0 at /exit and at the end of the input.
set -euo pipefail
ropepp=${1:?usage: chat_piped.sh ROPEPP MODEL_DIR WORK_DIR [PYTHON]}
model=${2:?}
work=${3:?}
py=${4:-/usr/bin/python3}
rm -rf "$work"
mkdir -p "$work"
fail() { echo "FAIL: $*" >&2; echo "--- stdout" >&2; cat "$work/out.txt" >&2 || true; echo "--- stderr" >&2; cat "$work/err.txt" >&2 || true; exit 1; }

# 1) The brief's example: one message, /exit, status 0.
printf 'Hello\n/save %s\n/exit\nnot read\n' "$work/one.json" |
  "$ropepp" chat -m "$model" --temp 0 -n 8 -t 1 >"$work/out.txt" 2>"$work/err.txt" || fail "exit status $?"
grep -q "chat: template plain" "$work/err.txt" || fail "no template notice on stderr"
"$py" - "$work/one.json" "$work/out.txt" <<'PY' || fail "stdout is not exactly the reply"
import json, sys
conv = json.load(open(sys.argv[1]))
out = open(sys.argv[2], encoding="utf-8").read()
msgs = conv["messages"]
assert [m["role"] for m in msgs] == ["user", "assistant"], msgs
assert msgs[0]["content"] == "Hello", msgs
want = "".join(m["content"] + "\n" for m in msgs if m["role"] == "assistant")
assert out == want, (out, want)
assert "not read" not in out
PY

# 2) Continuation lines, a """ block, a //message, a bad /set (error, session goes on), end of input = exit 0.
printf 'first \\\nsecond\n"""\nblock line\n/not a command\n"""\n/set top-k abc\n//slash\n/stats\n/save %s\n' \
  "$work/multi.json" | "$ropepp" chat -m "$model" --temp 0 -n 6 -t 1 >"$work/out.txt" 2>"$work/err.txt" \
  || fail "exit status $? at the end of the input"
grep -q "error: /set top-k 'abc'" "$work/err.txt" || fail "no error for /set top-k abc"
grep -q "conversation: 6 messages" "$work/err.txt" || fail "/stats did not go to stderr or counts are wrong"
"$py" - "$work/multi.json" "$work/out.txt" <<'PY' || fail "multi-line input or stdout wrong"
import json, sys
conv = json.load(open(sys.argv[1]))
out = open(sys.argv[2], encoding="utf-8").read()
users = [m["content"] for m in conv["messages"] if m["role"] == "user"]
assert users == ["first \nsecond", "block line\n/not a command", "/slash"], users
want = "".join(m["content"] + "\n" for m in conv["messages"] if m["role"] == "assistant")
assert out == want, (out, want)
assert conv["settings"]["n_predict"] == 6 and conv["settings"]["temp"] == 0, conv["settings"]
PY

# 3) Bad flags fail before reading input, naming the flag.
if "$ropepp" chat -m "$model" --chat-template mistral </dev/null >/dev/null 2>"$work/err.txt"; then
  fail "--chat-template mistral accepted"
fi
grep -q -- "--chat-template" "$work/err.txt" || fail "the error does not name --chat-template"
echo "chat_piped: OK"
