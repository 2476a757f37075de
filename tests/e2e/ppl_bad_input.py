#!/usr/bin/python3
"""ppl_bad_input.py: `ropepp perplexity` with bad flags and files exits non-zero with a clear message.

    /usr/bin/python3 tests/e2e/ppl_bad_input.py --ropepp build/ropepp --model DIR

DIR: a checkpoint with a tokenizer (the ppl_ec fixture). Each case: exit status 1 and stderr containing
"error: " and the expected words (the flag or file, expected vs actual). A control case must succeed.
"""
import argparse
import os
import subprocess
import sys
import tempfile


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ropepp", required=True)
    p.add_argument("--model", required=True)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as td:
        def write(name, content):
            path = os.path.join(td, name)
            with open(path, "w") as f:
                f.write(content)
            return path

        empty = write("empty.txt", "")
        text = write("text.txt", "The tower is 324 metres tall, about the same height as an 81-storey building. " * 4)
        one = write("one.txt", "5")
        ids = write("ids.txt", " ".join(str(i % 500 + 3) for i in range(300)))
        out_of_vocab = write("oov.txt", "1 5 512 7")
        not_ids = write("bad_ids.txt", "1 5 x7")
        missing = os.path.join(td, "missing.txt")
        m = ["-m", a.model]
        cases = [
            # (name, args, expected substrings in stderr)
            ("missing file", m + ["-f", missing], ["-f " + missing, "cannot open"]),
            ("empty file", m + ["-f", empty], ["-f " + empty, "the file is empty"]),
            ("empty ids file", m + ["--ids-file", empty], ["--ids-file", "the file is empty"]),
            ("one token", m + ["--ids-file", one], ["1 token", "at least 2"]),
            ("one token, no BOS", m + ["--ids-file", one, "--no-bos"], ["1 token", "at least 2"]),
            ("no input", m, ["exactly one of -f/--file or --ids-file"]),
            ("both inputs", m + ["-f", text, "--ids-file", ids], ["exactly one of"]),
            ("window < stride", m + ["-f", text, "--window", "64", "--stride", "128"],
             ["--window 64 is shorter than --stride 128"]),
            ("stride 0", m + ["-f", text, "--stride", "0"], ["--stride 0: expected > 0"]),
            ("stride < 0", m + ["-f", text, "--stride", "-8"], ["--stride -8: expected > 0"]),
            ("window 1", m + ["-f", text, "--window", "1", "--stride", "1"], ["--window 1: expected 2 .. 65536"]),
            ("window too long", m + ["-f", text, "--window", "70000"], ["--window 70000: expected 2 .. 65536"]),
            ("chunk 1", m + ["-f", text, "--chunk", "1"], ["--chunk 1: expected 2 .. 65536"]),
            ("chunk 0", m + ["-f", text, "--chunk", "0"], ["--chunk 0: expected 2 .. 65536"]),
            ("chunk with window", m + ["-f", text, "--chunk", "64", "--window", "128"], ["--chunk 64", "--window"]),
            ("chunk longer than the text", m + ["--ids-file", ids, "--chunk", "512"],
             ["300 tokens, fewer than one --chunk of 512"]),
            ("paper with chunk", m + ["-f", text, "--chunk", "64", "--paper-formula"], ["--paper-formula", "--chunk"]),
            ("ctx shorter than window", m + ["--ids-file", ids, "-c", "64", "--window", "128", "--stride", "32"],
             ["-c/--ctx-size 64", "--window", "expected >= 128"]),
            ("id outside the vocabulary", m + ["--ids-file", out_of_vocab, "--window", "8", "--stride", "4"],
             ["token id 512", "outside the vocabulary [0, 512)"]),
            ("not an id", m + ["--ids-file", not_ids], ["--ids-file", "'x7' is not a token id"]),
            ("parallel < 0", m + ["-f", text, "--parallel", "-1"], ["--parallel -1"]),
            ("no model", ["-m", os.path.join(td, "nomodel"), "-f", text], ["nomodel"]),
        ]
        fails = []
        for name, args, want in cases:
            r = subprocess.run([a.ropepp, "perplexity"] + args, capture_output=True, text=True, timeout=120)
            missing_words = [w for w in want if w not in r.stderr]
            if r.returncode != 1 or "error: " not in r.stderr or missing_words:
                fails.append(f"{name}: exit {r.returncode}, stderr {r.stderr.strip()[-400:]!r}, missing {missing_words}")
            else:
                print(f"ok   {name}: {r.stderr.strip().splitlines()[-1]}")
        # control: the same files and flags, valid, succeed
        r = subprocess.run([a.ropepp, "perplexity"] + m + ["--ids-file", ids, "--window", "128", "--stride", "32",
                                                           "--json"], capture_output=True, text=True, timeout=300)
        if r.returncode != 0 or '"ppl":' not in r.stdout:
            fails.append(f"control run failed: exit {r.returncode}, {r.stderr[-400:]!r}")
        else:
            print("ok   control run succeeds")
    if fails:
        print("FAIL")
        for f in fails:
            print("  " + f)
        sys.exit(1)
    print(f"PASS {len(cases)} bad-input cases")


if __name__ == "__main__":
    main()
