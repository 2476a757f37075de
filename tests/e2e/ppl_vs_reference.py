#!/usr/bin/python3
"""ppl_vs_reference.py: `ropepp perplexity` of the default model vs the PyTorch reference on the same text.

    /usr/bin/python3 tests/e2e/ppl_vs_reference.py --ropepp build/ropepp --chunk 512
    /usr/bin/python3 tests/e2e/ppl_vs_reference.py --ropepp build/ropepp --window 1024 --stride 512
    /usr/bin/python3 tests/e2e/ppl_vs_reference.py --chunk 512 --reference-only

Text: --file (default tests/e2e/data/sotu_2007_excerpt.txt: the first 8,982 characters of the first
validation document of the default model, the 2007 State of the Union address, a public-domain work of
the US Government; 1,999 tokens + BOS). Ids = [BOS] + sentencepiece(whole file) (spm_text.py: Python
binding or Debian's spm_encode), as `ropepp perplexity -f` tokenizes it.

Reference (tools/ropepp_ref, float64, CPU), the recipes of src/perplexity.h:
  --chunk C               llama.cpp: floor(n/C) chunks [kC, (k+1)C), first token replaced by BOS, targets
                          C/2+1 .. C-1 of each chunk scored;
  --window W --stride S   Hugging Face's guide: windows [kS, min(kS+W, n)) until one reaches the end, each
                          scoring the targets the previous one did not (from its second token on).
Engine: `ropepp perplexity -m MODEL -f FILE (--chunk C | --window W --stride S) --json`.
Checks: token count, scored count, |mean NLL engine - reference| <= --tol (nats), and every window's NLL
sum within --tol * its scored tokens. Prints PASS/FAIL; exit 0 on PASS.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, HERE)
from ropepp_ref import load_checkpoint  # noqa: E402
import spm_text  # noqa: E402


def plan(n, chunk=None, window=None, stride=None):
    """[(begin, end, first_target, bos_first)] as in src/perplexity.h."""
    if chunk:
        return [(k * chunk, (k + 1) * chunk, k * chunk + chunk // 2 + 1, True) for k in range(n // chunk)]
    out, prev_end, k = [], 0, 0
    while True:
        b, e = k * stride, min(k * stride + window, n)
        out.append((b, e, max(prev_end, b + 1), False))
        if e >= n:
            return out
        prev_end, k = e, k + 1


@torch.no_grad()
def reference(model, ids, windows, bos):
    """[(begin, scored, nll_sum)] per window."""
    res = []
    for b, e, ft, bos_first in windows:
        x = list(ids[b:e])
        if bos_first and ids[0] == bos:
            x[0] = bos
        logits = model(torch.tensor([x[:-1]]))[0]                      # row r predicts x[r+1]
        tgt = torch.tensor(x[ft - b:])
        lp = F.log_softmax(logits[ft - b - 1:], dim=-1)
        nll = -lp.gather(1, tgt[:, None]).sum()
        res.append((b, e - ft, float(nll)))
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ropepp")
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "default"))
    ap.add_argument("--file", default=os.path.join(HERE, "data", "sotu_2007_excerpt.txt"))
    ap.add_argument("--chunk", type=int)
    ap.add_argument("--window", type=int)
    ap.add_argument("--stride", type=int)
    ap.add_argument("--tol", type=float, default=2e-4, help="nats per scored token")
    ap.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    ap.add_argument("--extra", default="", help="extra engine arguments, space separated")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--reference-only", action="store_true")
    a = ap.parse_args()
    if bool(a.chunk) == bool(a.window):
        ap.error("give --chunk C or --window W --stride S")
    if a.window and not a.stride:
        a.stride = a.window
    name = os.path.basename(os.path.normpath(a.model))
    recipe = f"chunk {a.chunk}" if a.chunk else f"window {a.window} stride {a.stride}"

    cfg = json.load(open(os.path.join(a.model, "config.json")))
    bos = int(cfg.get("bos_token_id", 1))
    with open(a.file, encoding="utf-8") as f:
        text = f.read()
    ids = [bos] + spm_text.encode(spm_text.model_path(a.model), text)
    windows = plan(len(ids), a.chunk, a.window, a.stride)
    t0 = time.time()
    model = load_checkpoint(a.model, dtype=getattr(torch, a.dtype))
    ref = reference(model, ids, windows, bos)
    scored = sum(r[1] for r in ref)
    nll = sum(r[2] for r in ref) / scored
    summary = {"model": name, "mode": model.mode, "recipe": recipe, "tokens": len(ids), "scored": scored,
               "nll": nll, "ppl": math.exp(nll), "windows": len(ref), "seconds": time.time() - t0,
               "per_window": [{"start": b, "scored": s, "nll_sum": v} for b, s, v in ref]}
    if a.reference_only or not a.ropepp:
        print(json.dumps(summary))
        return 0

    cmd = [a.ropepp, "perplexity", "-m", a.model, "-f", a.file, "--json"] + (
        ["--chunk", str(a.chunk)] if a.chunk else ["--window", str(a.window), "--stride", str(a.stride)]) + a.extra.split()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
    except subprocess.TimeoutExpired:
        print(f"FAIL ppl_vs_reference {name} {recipe}: `{' '.join(cmd)}` timed out")
        return 1
    lines = [l for l in r.stdout.splitlines() if l.strip().startswith("{")]
    if r.returncode != 0 or not lines:
        print(f"FAIL ppl_vs_reference {name} {recipe}: `{' '.join(cmd)}` exited {r.returncode}\n"
              f"stdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}")
        return 1
    eng = json.loads(lines[-1])
    fails = []
    if eng.get("tokens") != len(ids):
        fails.append(f"tokens {eng.get('tokens')} != reference {len(ids)} (tokenizer disagreement)")
    if eng.get("scored") != scored:
        fails.append(f"scored {eng.get('scored')} != reference {scored}")
    d = abs(float(eng["nll"]) - nll)
    if not d <= a.tol:
        fails.append(f"mean NLL {eng['nll']:.8f} vs reference {nll:.8f}: |diff| {d:.3g} > tol {a.tol}")
    ew = eng.get("per_window", [])
    if len(ew) != len(ref):
        fails.append(f"{len(ew)} windows != reference {len(ref)}")
    else:
        for w, (b, s, v) in zip(ew, ref):
            if w.get("start") != b or w.get("scored") != s or not abs(w.get("nll_sum", math.nan) - v) <= a.tol * s:
                fails.append(f"window at {b}: engine {w} vs reference start {b} scored {s} nll_sum {v:.6f}")
                break
    print(f"{name} ({model.mode}) {recipe}: {len(ids)} tokens, {scored} scored; nll engine {eng['nll']:.6f} "
          f"reference {nll:.6f} (ppl {math.exp(nll):.4f}); |diff| {d:.2e}; tokenizer via {spm_text.backend()}")
    if fails:
        print(f"FAIL ppl_vs_reference {name} {recipe}:\n" + "\n".join(fails))
        return 1
    print(f"PASS ppl_vs_reference {name} {recipe}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
