#!/usr/bin/python3
"""ppl_reference.py: `ropepp perplexity` against the float64 PyTorch reference on WikiText.

    # fixture: a random tiny checkpoint + a 512-piece sentencepiece tokenizer trained on WikiText
    /usr/bin/python3 tests/e2e/ppl_reference.py setup --out DIR --wiki wiki.test.raw --mode ec --dtype f32
    # one case: the engine on a WikiText slice vs the reference recipe written out in Python
    /usr/bin/python3 tests/e2e/ppl_reference.py check --model DIR --ropepp build/ropepp --wiki wiki.test.raw \
        --chars 4000 --window 256 --stride 64 --paper-formula [--chunk N]

check writes the slice (lines joined by spaces, one line, no newline) to a file and runs
  1. `ropepp perplexity -m DIR -f slice --json` (the engine's tokenizer, BOS added),
  2. `ropepp perplexity -m DIR --ids-file ids --json` with ids = [BOS] + spm_encode(slice) (independent
     tokenization, by the sentencepiece CLI): same token count, same result,
  3. the reference: load_checkpoint(DIR, float64), model(input_ids) -> logits per window, with the loops of
     Hugging Face's perplexity guide (sliding), the paper's test_ppl.py (--paper-formula) and llama.cpp's
     perplexity (--chunk) transcribed literally (labels, -100 / ignore_index, shift).
Passes when ppl (and the paper number, and every window's NLL sum) agree within relative --tol (1e-4).
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
from ropepp_ref.model import load_checkpoint  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.join(HERE, "..", "..", "tools")


def wiki_text(path, offset, chars):
    with open(path, encoding="utf-8") as f:
        lines = [l.strip() for l in f.read().split("\n")]
    text = " ".join(l for l in lines if l)
    return text[offset:offset + chars]


def setup(a):
    os.makedirs(a.out, exist_ok=True)
    subprocess.run([sys.executable, os.path.join(TOOLS, "gen_checkpoint.py"), "--out", a.out, "--preset", "tiny",
                    "--mode", a.mode, "--dtype", a.dtype, "--seed", str(a.seed)], check=True, stdout=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory() as td:
        train = os.path.join(td, "train.txt")
        with open(a.wiki, encoding="utf-8") as f, open(train, "w", encoding="utf-8") as g:
            g.write(f.read(200_000))
        # ids: unk 0, bos 1, eos 2 (the tiny preset's bos_token_id / eos_token_id); 512 = the tiny vocab
        subprocess.run(["spm_train", f"--input={train}", f"--model_prefix={os.path.join(td, 'tok')}",
                        "--vocab_size=512", "--character_coverage=0.9995", "--minloglevel=2"], check=True)
        os.replace(os.path.join(td, "tok.model"), os.path.join(a.out, "tokenizer.model"))
    print(f"fixture {a.out}: tiny {a.mode} {a.dtype} checkpoint + 512-piece sentencepiece tokenizer")


def run_engine(a, source_args, extra):
    cmd = [a.ropepp, "perplexity", "-m", a.model, "--json"] + source_args + extra
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
    if r.returncode != 0:
        sys.exit(f"FAIL: `{' '.join(cmd)}` exited {r.returncode}\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1]), time.time() - t0


class Reference:
    def __init__(self, model_dir):
        self.model = load_checkpoint(model_dir, dtype=torch.float64)
        with open(os.path.join(model_dir, "config.json")) as f:
            cfg = json.load(f)
        self.bos, self.eos = cfg["bos_token_id"], cfg["eos_token_id"]
        self.forwards = 0

    @torch.no_grad()
    def logits(self, ids):  # ids: 1-D LongTensor -> [T, V] float64
        self.forwards += 1
        return self.model(ids[None, :])[0]

    def sliding(self, ids, W, S):
        """Hugging Face's perplexity guide (https://huggingface.co/docs/transformers/perplexity)."""
        N = ids.numel()
        nll_sum, n_tokens, prev_end, windows = 0.0, 0, 0, []
        for begin_loc in range(0, N, S):
            end_loc = min(begin_loc + W, N)
            trg_len = end_loc - prev_end
            input_ids = ids[begin_loc:end_loc]
            target_ids = input_ids.clone()
            target_ids[:-trg_len] = -100
            logits = self.logits(input_ids)
            s = F.cross_entropy(logits[:-1], target_ids[1:], ignore_index=-100, reduction="sum").item()
            n = int((target_ids[1:] != -100).sum())
            if n > 0:
                windows.append((begin_loc, n, s))
            nll_sum += s
            n_tokens += n
            prev_end = end_loc
            if end_loc == N:
                break
        return nll_sum / n_tokens, n_tokens, windows

    def paper(self, ids, W, S):
        """The RoPE++ paper's test_ppl.py, ignore_index = eos_token_id."""
        N = ids.numel()
        lls = []
        for i in range(0, N, S):
            begin_loc = max(i + S - W, 0)
            end_loc = i + S
            input_ids = ids[begin_loc:end_loc]
            labels = input_ids.clone()
            labels[:-S] = self.eos
            logits = self.logits(input_ids)
            loss_ = F.cross_entropy(logits[:-1], labels[1:], ignore_index=self.eos, reduction="mean")
            lls.append(loss_ * S)
        return float(torch.exp(torch.stack(lls).sum() / i))

    def chunks(self, ids, C):
        """llama.cpp's perplexity: chunks of C, BOS first (the input starts with BOS), second halves."""
        n_chunk = ids.numel() // C
        first = C // 2
        nll, count, windows = 0.0, 0, []
        for i in range(n_chunk):
            start = i * C
            toks = ids[start:start + C].clone()
            toks[0] = self.bos
            lp = torch.log_softmax(self.logits(toks), dim=-1)
            s = 0.0
            for j in range(first, C - 1):
                s -= lp[j, ids[start + j + 1]].item()
            windows.append((start, C - 1 - first, s))
            nll += s
            count += C - 1 - first
        return nll / count, count, windows


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


def check(a):
    text = wiki_text(a.wiki, a.offset, a.chars)
    fails = []
    with tempfile.TemporaryDirectory() as td:
        text_file = os.path.join(td, "slice.txt")
        with open(text_file, "w", encoding="utf-8") as f:
            f.write(text)
        enc = subprocess.run(["spm_encode", "--model", os.path.join(a.model, "tokenizer.model"), "--output_format=id"],
                             stdin=open(text_file, encoding="utf-8"), capture_output=True, text=True, check=True)
        ref = Reference(a.model)
        ids = [ref.bos] + [int(x) for x in enc.stdout.split()]
        ids_file = os.path.join(td, "ids.txt")
        with open(ids_file, "w") as f:
            f.write(" ".join(map(str, ids)))

        extra = []
        if a.chunk:
            extra += ["--chunk", str(a.chunk)]
        else:
            if a.window:
                extra += ["--window", str(a.window)]
            if a.stride:
                extra += ["--stride", str(a.stride)]
            if a.paper_formula:
                extra.append("--paper-formula")
        extra += a.engine_args.split() if a.engine_args else []
        eng, secs = run_engine(a, ["-f", text_file], extra)
        eng_ids, _ = run_engine(a, ["--ids-file", ids_file], extra)

    if eng["tokens"] != len(ids):
        fails.append(f"-f gave {eng['tokens']} tokens, [BOS] + spm_encode gives {len(ids)}")
    for k in ("ppl", "scored", "windows"):
        if eng[k] != eng_ids[k] and not (isinstance(eng[k], float) and rel(eng[k], eng_ids[k]) < 1e-9):
            fails.append(f"-f and --ids-file differ in {k}: {eng[k]} vs {eng_ids[k]}")

    t0 = time.time()
    x = torch.tensor(ids, dtype=torch.long)
    W = a.window or 4096
    S = a.stride or 512
    if a.chunk:
        nll, n, windows = ref.chunks(x, a.chunk)
        recipe = "chunk"
    else:
        nll, n, windows = ref.sliding(x, W, S)
        recipe = "sliding"
    if eng["recipe"] != recipe:
        fails.append(f"recipe {eng['recipe']} != {recipe}")
    if eng["scored"] != n:
        fails.append(f"scored {eng['scored']} != reference {n}")
    if rel(eng["nll"], nll) > a.tol:
        fails.append(f"nll {eng['nll']:.9f} vs reference {nll:.9f}: relative {rel(eng['nll'], nll):.2e} > {a.tol:g}")
    ppl = math.exp(nll)
    if rel(eng["ppl"], ppl) > a.tol:
        fails.append(f"ppl {eng['ppl']:.6f} vs reference {ppl:.6f}: relative {rel(eng['ppl'], ppl):.2e}")
    if len(eng["per_window"]) != len(windows):
        fails.append(f"{len(eng['per_window'])} windows vs reference {len(windows)}")
    else:
        for ew, (start, cnt, s) in zip(eng["per_window"], windows):
            if ew["start"] != start or ew["scored"] != cnt or rel(ew["nll_sum"], s) > a.tol:
                fails.append(f"window {ew} vs reference start {start} scored {cnt} nll_sum {s:.6f}")
                break
    paper_msg = ""
    if a.paper_formula and not a.chunk:
        pp = ref.paper(x, W, S)
        got = eng.get("paper", {}).get("ppl")
        if got is None or rel(got, pp) > a.tol:
            fails.append(f"paper ppl {got} vs reference {pp:.6f}")
        paper_msg = f", paper {pp:.4f} (engine {got:.4f}, {eng['paper']['extra_windows']} extra windows)"
    ref_secs = time.time() - t0

    name = a.name or recipe
    summary = (f"{name}: {len(ids)} tokens, {eng['windows']} windows, {n} scored; ppl engine {eng['ppl']:.6f} "
               f"reference {ppl:.6f} (relative {rel(eng['ppl'], ppl):.1e}){paper_msg}; engine {secs:.1f} s, "
               f"reference {ref.forwards} forwards {ref_secs:.1f} s")
    if fails:
        print("FAIL " + summary)
        for f in fails:
            print("  " + f)
        sys.exit(1)
    print("PASS " + summary)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup")
    s.add_argument("--out", required=True)
    s.add_argument("--wiki", required=True)
    s.add_argument("--mode", default="ec")
    s.add_argument("--dtype", default="f32")
    s.add_argument("--seed", type=int, default=7)
    c = sub.add_parser("check")
    c.add_argument("--model", required=True)
    c.add_argument("--ropepp", required=True)
    c.add_argument("--wiki", required=True)
    c.add_argument("--offset", type=int, default=100_000, help="first character of the slice")
    c.add_argument("--chars", type=int, required=True)
    c.add_argument("--window", type=int, default=0, help="0: the engine's default (4096)")
    c.add_argument("--stride", type=int, default=0, help="0: the engine's default (512)")
    c.add_argument("--chunk", type=int, default=0)
    c.add_argument("--paper-formula", action="store_true")
    c.add_argument("--engine-args", default="", help="more ropepp flags, e.g. '-b 300 --parallel 3'")
    c.add_argument("--tol", type=float, default=1e-4)
    c.add_argument("--timeout", type=int, default=900)
    c.add_argument("--name", default="")
    a = p.parse_args()
    setup(a) if a.cmd == "setup" else check(a)


if __name__ == "__main__":
    main()
