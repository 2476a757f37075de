#!/usr/bin/python3
"""reference_logits.py: logits of a checkpoint from the independent PyTorch reference (float64, CPU).

    /usr/bin/python3 tools/reference_logits.py --model DIR --ids 1,2,3 --out logits.npy
    /usr/bin/python3 tools/reference_logits.py --model DIR --ids-file ids.txt --out logits.npy --mode ec
    /usr/bin/python3 tools/reference_logits.py --model DIR --random-ids 67 --seed 1 --out logits.npy

Writes float64 [T, vocab] .npy (row t: the logits after tokens ids[0..t]) and prints the mean NLL of
ids[1:] given their prefixes.
"""
import argparse
import json
import os
import re
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ropepp_ref.model import load_checkpoint  # noqa: E402


def parse_ids(text):
    ids = [int(x) for x in re.split(r"[\s,]+", text.strip()) if x]
    if not ids:
        raise ValueError("no token ids given")
    return ids


def random_ids(model_dir, n, seed=0):
    """n token ids uniform in [0, vocab) (reproducible), starting with bos_token_id when it has one."""
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    ids = np.random.default_rng(seed).integers(0, cfg["vocab_size"], n).tolist()
    bos = cfg.get("bos_token_id")
    if isinstance(bos, int) and 0 <= bos < cfg["vocab_size"]:
        ids[0] = bos
    return ids


def get_ids(a):
    """ids from --ids / --ids-file / --random-ids (+ --seed)."""
    if a.ids is not None:
        return parse_ids(a.ids)
    if a.ids_file is not None:
        with open(a.ids_file) as f:
            return parse_ids(f.read())
    return random_ids(a.model, a.random_ids, a.seed)


def add_ids_args(p):
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--ids", help="comma-separated token ids")
    g.add_argument("--ids-file", help="file with token ids (comma/whitespace separated)")
    g.add_argument("--random-ids", type=int, metavar="T", help="T random ids (bos first), see --seed")
    p.add_argument("--seed", type=int, default=0, help="seed of --random-ids")


def reference_logits(model_dir, ids, dtype=torch.float64, mode=None):
    """(logits float64 numpy [T, V], mean NLL of ids[1:] or nan, resolved mode)."""
    model = load_checkpoint(model_dir, dtype=dtype, mode=None if mode == "auto" else mode)
    V = model.config.vocab_size
    bad = [i for i in ids if not 0 <= i < V]
    if bad:
        raise ValueError(f"token ids out of range [0, {V}): {bad[:5]}")
    with torch.no_grad():
        logits = model(torch.tensor([ids], dtype=torch.long))[0].to(torch.float64)
    nll = float("nan")
    if len(ids) > 1:
        logp = torch.log_softmax(logits[:-1], dim=-1)
        nll = float(-logp.gather(1, torch.tensor(ids[1:])[:, None]).mean())
    return logits.numpy(), nll, model.mode


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint directory (config.json + safetensors)")
    add_ids_args(p)
    p.add_argument("--out", help="output .npy (float64 [T, vocab])")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--mode", choices=["auto", "rope", "eh", "ec"], default="auto")
    a = p.parse_args()
    ids = get_ids(a)
    t0 = time.time()
    logits, nll, mode = reference_logits(a.model, ids, getattr(torch, a.dtype), a.mode)
    if a.out:
        np.save(a.out, logits)
    print(f"reference: mode {mode}, {len(ids)} tokens, logits {list(logits.shape)}, mean NLL {nll:.6f}, "
          f"{time.time() - t0:.1f}s" + (f" -> {a.out}" if a.out else ""))


if __name__ == "__main__":
    main()
