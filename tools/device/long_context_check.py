#!/usr/bin/env python3
"""long_context_check.py: a 65,536-token prompt on the GPU, checked against the PyTorch reference.

Generates (or reuses) a random 376M EC checkpoint with rope_theta 500000, runs
  ropepp score --device cuda -c 65536 --logits-last 4 --decode-last 2
(the whole prompt prefilled in chunks through the paged cache, the last two tokens decoded one at a time), and
compares the last 4 rows' logits with the reference model (tools/ropepp_ref, fp32 on the GPU, SDPA attention;
only the last rows go through lm_head so no [65536, vocab] tensor is made). Prints timings and the comparison;
exits non-zero when top-1 agreement or relative error is off.

usage: long_context_check.py ROPEPP_BINARY WORKDIR [--tokens 65536] [--mode ec] [--yarn-factor F]
"""
import argparse, json, os, subprocess, sys, time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from ropepp_ref.model import load_checkpoint  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("binary")
ap.add_argument("workdir")
ap.add_argument("--tokens", type=int, default=65536)
ap.add_argument("--mode", default="ec")
ap.add_argument("--yarn-factor", type=float, default=0)
args = ap.parse_args()

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
tag = f"{args.mode}-376m-t500k" + (f"-yarn{args.yarn_factor:g}" if args.yarn_factor else "")
ck = os.path.join(args.workdir, tag)
if not os.path.exists(os.path.join(ck, "config.json")):
    cmd = [sys.executable, os.path.join(root, "tools", "gen_checkpoint.py"), "--out", ck, "--preset", "376m",
           "--mode", args.mode, "--dtype", "bf16", "--theta", "500000", "--max-pos", "65536", "--seed", "3"]
    if args.yarn_factor:
        cmd += ["--yarn-factor", str(args.yarn_factor)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

T = args.tokens
rng = np.random.default_rng(5)
ids = rng.integers(0, 128256, size=T)
ids_file = os.path.join(args.workdir, f"ids_{T}.txt")
np.savetxt(ids_file, ids[None, :], fmt="%d", delimiter=" ")
out_npy = os.path.join(args.workdir, f"{tag}_last.npy")
t0 = time.time()
r = subprocess.run([args.binary, "score", "-m", ck, "--device", "cuda", "-c", str(T), "-b", "4096", "--ids-file", ids_file,
                    "--logits-last", "4", "--decode-last", "2", "--logits-out", out_npy, "--json"],
                   capture_output=True, text=True)
wall = time.time() - t0
if r.returncode != 0:
    print(r.stderr)
    print(f"FAIL: ropepp score exited {r.returncode}")
    sys.exit(1)
res = json.loads(r.stdout)
got = np.load(out_npy).astype(np.float64)

t0 = time.time()
with torch.no_grad():
    model = load_checkpoint(ck, dtype=torch.float32, device="cuda", attn_impl="sdpa")
    x = torch.tensor(ids, device="cuda")[None, :]
    h = model.model.embed_tokens(x)
    cos, sin = model.tables(0, T, h.device, h.dtype)
    for layer in model.model.layers:
        h = layer(h, cos, sin, "sdpa")
    last = torch.nn.functional.linear(model.model.norm(h[:, -4:]), model.output_weight())[0].double().cpu().numpy()
ref_s = time.time() - t0

rel = [float(np.linalg.norm(got[i] - last[i]) / np.linalg.norm(last[i])) for i in range(4)]
top1 = [int(got[i].argmax()) == int(last[i].argmax()) for i in range(4)]
print(f"{tag}: {T} tokens; ropepp score (load + prefill {T - 2} + decode 2, GPU) {wall:.2f} s wall; "
      f"mean NLL {res['mean_nll']:.4f}; reference (fp32 SDPA, GPU) {ref_s:.1f} s")
print(f"last 4 rows: rel. error {['%.2e' % e for e in rel]}, top-1 agree {top1} "
      f"(rows -2, -1 came through the decode kernel)")
ok = all(e < 5e-2 for e in rel) and sum(top1) >= 3
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
