#!/usr/bin/python3
"""fake_ropepp.py: stands in for `ropepp score` to test compare_logits.py itself (not the engine).

    fake_ropepp.py score -m DIR --ids 1,2,3 --logits-out X.npy [--rope-mode M]

Writes the reference logits as float32, altered by FAKE_ROPEPP (env):
    exact (default) | noise:<rel> (per-row relative noise) | swap_argmax | short (one row less) |
    nan | crash (exit 3) | no_output | wrong_mode (computes with another mode's weights reading)
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
from reference_logits import parse_ids, reference_logits  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("cmd", choices=["score"])
p.add_argument("-m", required=True)
p.add_argument("--ids", required=True)
p.add_argument("--logits-out", required=True)
p.add_argument("--rope-mode", default="auto")
a = p.parse_args()
how = os.environ.get("FAKE_ROPEPP", "exact")
if how == "crash":
    print("error: simulated failure", file=sys.stderr)
    sys.exit(3)
if how == "no_output":
    sys.exit(0)
ids = parse_ids(a.ids)
x, _, _ = reference_logits(a.m, ids, mode=a.rope_mode)
if how.startswith("noise:"):
    rel = float(how.split(":")[1])
    noise = np.random.default_rng(0).standard_normal(x.shape)
    x = x + rel * noise * (np.linalg.norm(x, axis=1, keepdims=True) / np.linalg.norm(noise, axis=1, keepdims=True))
elif how == "swap_argmax":
    t = len(ids) // 2
    j, k = np.argsort(x[t])[-2:]
    x[t, j], x[t, k] = x[t, k], x[t, j]
elif how == "short":
    x = x[:-1]
elif how == "nan":
    x[-1, 0] = np.nan
elif how != "exact":
    sys.exit(f"unknown FAKE_ROPEPP={how}")
np.save(a.logits_out, x.astype(np.float32))
