#!/usr/bin/env bash
# chat_tmux.sh ROPEPP MODEL_DIR WORK_DIR [PYTHON]: `ropepp chat` in a real terminal (a private tmux server),
# driven with send-keys and read with capture-pane:
#   a reply; Ctrl-C in the middle of a long reply (the session goes on); Ctrl-C at the prompt clears the
#   line; /reset; a \-continued message; /save + /load (checked in the JSON); /exit with status 0; then with
#   a small -c: context overflow (notice, oldest turns dropped, history kept in /save), a message too long for
#   the context (error, session goes on), Ctrl-D with status 0.
# MODEL_DIR needs a tokenizer; the test fixture (tests/e2e/chat_fixture.sh) is a tiny random model, so replies
# are noise: --ignore-eos and -n keep their lengths predictable.
set -euo pipefail
ropepp=$(realpath "${1:?usage: chat_tmux.sh ROPEPP MODEL_DIR WORK_DIR [PYTHON]}")
model=$(realpath "${2:?}")
work=${3:?}
py=${4:-/usr/bin/python3}
command -v tmux >/dev/null || { echo "chat_tmux: tmux not found (Debian package tmux)" >&2; exit 1; }
rm -rf "$work"
mkdir -p "$work"
work=$(realpath "$work")
sock="$work/tmux.sock"
pane="$work/pane.txt"
tm() { tmux -S "$sock" "$@"; }
trap 'tm kill-server 2>/dev/null || true' EXIT

capture() { tm capture-pane -p -J -S - -E - -t chat >"$pane"; }
dump() {
  echo "----- pane -----" >&2
  tail -n 60 "$pane" >&2 || true
  echo "----------------" >&2
}
fail() { capture || true; echo "FAIL: $*" >&2; dump; exit 1; }
# count REGEX: lines of the pane (with its history) matching the extended regex.
count() { capture; grep -Ec -- "$1" "$pane" || true; }
# wait_count REGEX N [SECONDS]: until at least N lines match.
wait_count() {
  local re=$1 n=$2 t=${3:-60} i
  for ((i = 0; i < t * 5; i++)); do
    (($(count "$re") >= n)) && return 0
    sleep 0.2
  done
  fail "timed out after ${t}s waiting for $n line(s) matching /$re/ (have $(count "$re"))"
}
type_line() { tm send-keys -t chat -l -- "$1"; tm send-keys -t chat Enter; }
# A /stats marker: waits until the n-th "conversation: M messages" line for this M appears.
declare -A seen=()
# (after_keys M: the same wait, when the keys that run /stats were sent already.)
after_keys() {
  local m=$1
  seen[$m]=$((${seen[$m]:-0} + 1))
  wait_count "^conversation: $m messages " "${seen[$m]}"
}
expect_messages() {
  type_line "/stats"
  after_keys "$1"
}

tm -f /dev/null new-session -d -s chat -x 150 -y 40 \
  "env -i HOME='$work' TERM=screen LANG=C.UTF-8 PATH=/usr/bin:/bin PS1='$ ' bash --norc --noprofile"
tm set-option -t chat history-limit 100000 >/dev/null
sleep 0.3

# ---- run 1: a large context -------------------------------------------------------------------------------
type_line "'$ropepp' chat -m '$model' -c 65536 -t 1 --temp 0 --ignore-eos -n 24; echo EXIT=\$?"
wait_count "^chat: template plain" 1
wait_count "^> ?$" 1

# A reply.
type_line "Hello there"
wait_count "\[reply cut at n-predict = 24 tokens\]" 1
expect_messages 2

# Editing keys: Backspace (both modes); with libedit also Ctrl-A and history (Up).
tm send-keys -t chat -l -- "/statsXY"
tm send-keys -t chat BSpace BSpace Enter
after_keys 2
if (($(count "line editing on") > 0)); then
  tm send-keys -t chat -l -- "stats"
  tm send-keys -t chat C-a
  tm send-keys -t chat -l -- "/"
  tm send-keys -t chat Enter
  after_keys 2
  tm send-keys -t chat Up Enter
  after_keys 2
else
  (($(count "line editing off") > 0)) || fail "the banner does not say whether line editing is on"
fi

# Ctrl-C in the middle of a long reply: the reply stops, the session stays.
type_line "/set n-predict -1"
wait_count "n-predict -1" 1
type_line "Tell me a very long story"
sleep 2
tm send-keys -t chat C-c
wait_count "^\[reply stopped\]" 1 30
expect_messages 4
wait_count "stop: interrupted" 1
(($(count "^EXIT=") == 0)) || fail "ropepp exited on Ctrl-C during a reply"

# Ctrl-C at the prompt clears the line (the text is never sent).
type_line "/set n-predict 16"
wait_count "n-predict 16$" 1
tm send-keys -t chat -l -- "this text is discarded"
sleep 0.5
tm send-keys -t chat C-c
sleep 0.5
expect_messages 4
(($(count "^EXIT=") == 0)) || fail "ropepp exited on Ctrl-C at the prompt"

# /reset.
type_line "/reset"
wait_count "^conversation cleared" 1
expect_messages 0
wait_count "^context: 0 of 65536 tokens" 1

# A continued line, then /save, /reset, /load, and a turn on the loaded conversation.
type_line "first line \\"
type_line "second line"
wait_count "\[reply cut at n-predict = 16 tokens\]" 1
type_line "/save $work/conv.json"
wait_count "^saved 2 messages to " 1
type_line "/reset"
wait_count "^conversation cleared" 2
expect_messages 0
type_line "/load $work/conv.json"
wait_count "^loaded 2 messages \(0 dropped from the context\)" 1
expect_messages 2
type_line "and then?"
wait_count "\[reply cut at n-predict = 16 tokens\]" 2
expect_messages 4
"$py" - "$work/conv.json" <<'PY' || fail "conv.json is not the conversation"
import json, sys
c = json.load(open(sys.argv[1]))
m = c["messages"]
assert [x["role"] for x in m] == ["user", "assistant"], m
assert m[0]["content"] == "first line \nsecond line", m[0]
assert c["settings"]["n_predict"] == 16, c["settings"]
PY
type_line "/exit"
wait_count "^EXIT=0$" 1

# ---- run 2: a small context -------------------------------------------------------------------------------
type_line "'$ropepp' chat -m '$model' -c 96 -t 1 --temp 0 --ignore-eos -n 15 --system 'Be brief.'; echo EXIT=\$?"
wait_count "context 96 tokens" 1
for i in 1 2 3 4 5 6; do
  type_line "message $i: tell me about the weather and the cats today"
  wait_count "\[reply cut at n-predict = 15 tokens\]" "$i"
done
wait_count "^note: context full \(96 tokens\): the oldest [0-9]+ message\(s\) left the context" 1
type_line "/stats"
wait_count "^conversation: 12 messages \([1-9][0-9]* dropped from the context\)" 1
# A message that cannot fit even alone: an error, and the session goes on.
long=$(printf 'weather cats %.0s' $(seq 1 80))
type_line "$long"
wait_count "^error: the message does not fit the context" 1
type_line "still here?"
wait_count "\[reply cut at n-predict = 15 tokens\]" 7
type_line "/save $work/overflow.json"
wait_count "^saved 14 messages to " 1
"$py" - "$work/overflow.json" <<'PY' || fail "overflow.json does not keep the dropped turns"
import json, sys
c = json.load(open(sys.argv[1]))
m = c["messages"]
assert c["system"] == "Be brief.", c["system"]
users = [x["content"] for x in m if x["role"] == "user"]
want = ["message %d: tell me about the weather and the cats today" % i for i in range(1, 7)] + ["still here?"]
assert users == want, users
dropped = [x.get("dropped", False) for x in m]
n = dropped.index(False)
assert n >= 2 and n % 2 == 0 and not any(dropped[n:]), dropped
PY
tm send-keys -t chat C-d
wait_count "^EXIT=0$" 2
echo "chat_tmux: OK"
